"""Peak memory against the number of windows, at a fixed chunk size: should be flat (issues 2 and 8).

One image, one chunk size; only the stride changes the number of windows (234², window 10: stride 7
gives 1 089 windows, stride 1 gives 50 625). Each configuration runs ``explain`` in a fresh Python
process, which reports its peak resident set size (``resource.getrusage``, ru_maxrss: the whole
process, JAX runtime and compiles included) and its RSS just before ``explain`` (after importing JAX
and building the model), so the table shows the total peak and the engine's own increment over that
baseline. Target: peak at 50 000 windows within 10% of the peak at 1 000.

The classifier is a tiny CNN (one 4×4 stride-4 conv, 8 channels, mean pool, dense), so 50 000
perturbed images take seconds; memory per chunk is dominated by the chunk of perturbed images
(chunk × H × W × C float32), which does not depend on the number of windows.

    .venv/bin/python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

TARGET = 0.10


def current_rss_mb() -> float:
    """Resident set size now, in MiB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def child(args) -> None:
    """Run one explain and print a JSON line with its memory figures."""
    import jax
    import jax.numpy as jnp
    import flax.linen as nn
    import numpy as np

    import undesirable_jax as uj
    from _common import load_model

    key = jax.random.key(0)
    if args.model == "tiny":
        class Tiny(nn.Module):
            @nn.compact
            def __call__(self, x):
                x = nn.relu(nn.Conv(8, (4, 4), strides=(4, 4), padding="VALID")(x))
                return nn.Dense(10)(x.mean(axis=(1, 2)))

        module = Tiny()
        clf = uj.flax_linen(module, module.init(key, jnp.zeros((1, args.size, args.size, 3))))
    else:
        clf, _, _ = load_model(args.model, args.size, 3, 10, key, args.dtype)
    image = jax.random.normal(jax.random.fold_in(key, 1), (args.size, args.size, 3))
    grid = uj.WindowGrid(args.size, args.size, args.window, args.stride)
    jax.block_until_ready(clf.probs(image[None]))
    base = current_rss_mb()
    t0 = time.perf_counter()
    ex = uj.explain(clf, image, window=args.window, stride=args.stride, sampler=uj.samplers.constant(0.0),
                    num_samples=args.samples, key=jax.random.key(0), chunk_size=args.chunk)
    ev = np.asarray(ex.evidence)
    secs = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    stats = jax.devices()[0].memory_stats() or {}
    print(json.dumps({"windows": grid.num_windows, "stride": args.stride, "peak_rss_mb": peak,
                      "base_rss_mb": base, "seconds": secs, "finite": bool(np.isfinite(ev).all()),
                      "device_peak_mb": stats.get("peak_bytes_in_use", 0) / 2**20}))


def run_child(args, stride: int) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--stride", str(stride),
           "--size", str(args.size), "--window", str(args.window), "--samples", str(args.samples),
           "--chunk", str(args.chunk), "--model", args.model, "--dtype", args.dtype]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"child failed ({' '.join(cmd)}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[list[Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=234)
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--strides", type=int, nargs="+", default=[7, 3, 1],
                   help="strides to run (the first is the reference, ~1 000 windows at the defaults)")
    p.add_argument("--stride", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--model", default="tiny", help="tiny (defined here), cnn, or a models name")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16 (for models that take it)")
    p.add_argument("--repeats", type=int, default=1, help="fresh processes per configuration (max kept)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return []

    from _common import report, table

    results = []
    for stride in args.strides:
        runs = [run_child(args, stride) for _ in range(args.repeats)]
        results.append({k: max(r[k] for r in runs) if isinstance(runs[0][k], float) else runs[0][k]
                        for k in runs[0]})
    ref = results[0]
    rows = []
    for r in results:
        growth = r["peak_rss_mb"] / ref["peak_rss_mb"] - 1
        inc, ref_inc = r["peak_rss_mb"] - r["base_rss_mb"], ref["peak_rss_mb"] - ref["base_rss_mb"]
        rows.append([r["windows"], r["stride"], args.chunk, r["base_rss_mb"], r["peak_rss_mb"], inc,
                     f"{growth:+.1%}", f"{inc / ref_inc - 1:+.1%}", r["seconds"],
                     f"{'met' if abs(growth) <= TARGET else 'MISSED'} (±{TARGET:.0%})"])
        if ref["device_peak_mb"] > 0:  # accelerators report their own peak
            dev = r["device_peak_mb"] / ref["device_peak_mb"] - 1
            rows[-1][-1] += (f"; device peak {r['device_peak_mb']:.0f} MiB ({dev:+.1%}): "
                             f"{'met' if abs(dev) <= TARGET else 'MISSED'}")
    headers = ["windows", "stride", "chunk", "RSS before explain MiB", "peak RSS MiB",
               "peak − before MiB", "peak vs first", "increment vs first", "explain s", "target"]
    title = (f"bench_memory: peak memory vs number of windows ({args.size}²×3, window {args.window}, "
             f"S={args.samples}, chunk {args.chunk}, model {args.model} {args.dtype}, constant fill)")
    notes = ("One fresh process per row; peak = ru_maxrss of the whole process (JAX runtime and compiles "
             "included); 'before' = RSS after importing JAX and building the model. The chunk of "
             f"perturbed images alone is {args.chunk * args.size ** 2 * 3 * 4 / 2**20:.0f} MiB float32.")
    report(title, table(headers, rows), append=not args.no_append, notes=notes)
    return rows


if __name__ == "__main__":
    main()
