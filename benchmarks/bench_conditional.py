"""Conditional Gaussian sampler cost (issue 3): fitting, filling alone, and the engine against the raw model.

For each case (image side, window) it reports:
- fit: seconds to fit ``conditional_gaussian`` on ``--num-patches`` patches (first call, compile
  included, and a warm second call with another key);
- fill/s: windows filled per second by the sampler alone (``jit(vmap(fill))`` over one chunk of
  (window, sample) pairs at random grid positions, border classes included);
- perturb img/s: ``engine.perturb`` alone (fills plus the perturbed batch), jitted;
- raw img/s: the classifier's own rate on batches of the chunk size (jitted, warm), run as many
  times as ``explain`` runs chunks;
- explain img/s and ratio: one whole ``explain`` call (``--stride``, S = ``--samples``, this chunk
  size) in perturbed images per second, and raw time ÷ explain time (target ≥ 0.8 on CPU), by wall
  and by process CPU time; "const ratio" is the same with a constant fill, to separate the sampler's
  cost from the engine's.

Raw and engine are timed in interleaved rounds and the best of each kept, so load from other
processes on a shared machine hits both alike. Before timing, explain's first windows are checked
against the raw classifier on the same perturbed batch. The classifier is a small Flax CNN
defined here (random weights: throughput does not depend on them).

    .venv/bin/python benchmarks/bench_conditional.py                  # cases 32:8 and 64:10
    .venv/bin/python benchmarks/bench_conditional.py --cases 32:8 --rounds 3 --no-append
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import importlib.metadata as md
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

import undesirable_jax as uj
from undesirable_jax import engine

HISTORY = Path(__file__).resolve().parent / "HISTORY.md"


def small_cnn(num_classes: int):
    """3×3 convs 16-32-64 (stride 1, 2, 2) with ReLU, global mean pool, dense: a CIFAR-sized toy."""
    import flax.linen as nn

    class SmallCNN(nn.Module):
        @nn.compact
        def __call__(self, x):
            for i, width in enumerate((16, 32, 64)):
                x = nn.relu(nn.Conv(width, (3, 3), strides=1 if i == 0 else 2, padding=1)(x))
            return nn.Dense(num_classes)(x.mean(axis=(1, 2)))

    return SmallCNN()


def natural_stack(size: int, count: int) -> np.ndarray:
    """``count`` random ``size × size`` crops of scikit-image's photographs, RGB in [0, 1]."""
    from skimage import data, transform

    rng = np.random.default_rng(0)
    photos = [getattr(data, n)().astype(np.float32) / 255 for n in ("astronaut", "coffee", "rocket", "chelsea")]
    photos = [transform.rescale(p, 0.25, channel_axis=-1, anti_aliasing=True) for p in photos]
    out = []
    for i in range(count):
        p = photos[i % len(photos)]
        y, x = rng.integers(0, p.shape[0] - size + 1), rng.integers(0, p.shape[1] - size + 1)
        out.append(p[y:y + size, x:x + size])
    return np.stack(out).astype(np.float32)


def block(x: Any) -> Any:
    return jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready") else a, x)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    block(fn())
    return time.perf_counter() - t0


def timed_cpu(fn: Callable[[], Any]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds (all threads) of one blocked call: CPU time is the
    steadier measure when other processes share the cores."""
    c0, t0 = time.process_time(), time.perf_counter()
    block(fn())
    return time.perf_counter() - t0, time.process_time() - c0


def run_case(size: int, window: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    key = jax.random.key(0)
    images = natural_stack(size, 16)
    fit = lambda k: uj.samplers.conditional_gaussian(  # noqa: E731
        images, window=window, padding=args.padding, num_patches=args.num_patches, key=jax.random.key(k),
        per_channel=not args.joint)
    fit_first = timed(lambda: fit(1).cond_chol)
    fit_warm = timed(lambda: fit(2).cond_chol)
    sampler = fit(3)

    module = small_cnn(args.classes)
    clf = uj.flax_linen(module, module.init(key, jnp.zeros((1, size, size, 3))))
    image = jnp.asarray(images[0])
    grid = uj.WindowGrid(size, size, window, args.stride)
    ys, xs = jnp.asarray(grid.ys), jnp.asarray(grid.xs)
    chunk, samples = args.chunk, args.samples
    total = grid.num_windows * samples
    rows = jnp.arange(args.classes, dtype=jnp.int32)

    # Sampler alone: one chunk of pairs at random grid positions.
    rng = np.random.default_rng(1)
    py = jnp.asarray(rng.choice(grid.ys, chunk), jnp.int32)
    px = jnp.asarray(rng.choice(grid.xs, chunk), jnp.int32)
    pkeys = jax.random.split(jax.random.key(2), chunk)
    state = sampler.prepare(image, window)
    fill_fn = jax.jit(lambda s, st, img, k, y, x: jax.vmap(
        lambda kk, yy, xx: s.fill(st, img, window, kk, yy, xx, jnp.int32(0)))(k, y, x))
    pairs = jnp.arange(chunk, dtype=jnp.int32) % total
    perturb = jax.jit(lambda s, st, img, k, p: engine.perturb(s, st, img, k, ys, xs, p, window=window,
                                                              num_samples=samples))
    batch = jnp.broadcast_to(image, (chunk,) + image.shape) + 0.0
    raw = jax.jit(lambda c, b: c.probs(b))
    constant = uj.samplers.constant(0.5)
    num_chunks = -(-total // chunk)

    def explain(smp):
        return uj.explain(clf, image, window=window, stride=args.stride, sampler=smp, num_samples=samples, key=key,
                          chunk_size=chunk).window_probs

    def raw_all():  # the raw model on as many batches of the chunk size as explain runs
        return [raw(clf, batch) for _ in range(num_chunks)]

    # Correctness before timing: explain's first windows equal the raw model on the same perturbed batch.
    first = chunk // samples
    pert = perturb(sampler, state, image, key, jnp.arange(first * samples, dtype=jnp.int32))
    want = np.asarray(raw(clf, pert)).reshape(first, samples, -1).mean(1).T
    got = np.asarray(explain(sampler)).reshape(args.classes, -1)[:, :first]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    fns = {"fill": lambda: fill_fn(sampler, state, image, pkeys, py, px),
           "perturb": lambda: perturb(sampler, state, image, key, pairs),
           "raw": raw_all, "explain": lambda: explain(sampler), "explain_const": lambda: explain(constant)}
    best = {name: float("inf") for name in fns}
    cpu = {name: float("inf") for name in fns}
    for fn in fns.values():
        block(fn())                                   # compile and warm
    for _ in range(args.rounds):
        for name, fn in fns.items():
            wall, c = timed_cpu(fn)
            best[name], cpu[name] = min(best[name], wall), min(cpu[name], c)
    raw_chunk = best["raw"] / num_chunks
    return [{
        "case": f"{size}²×3, k={window}, p={args.padding} (l={window + 2 * args.padding})",
        "fit s": f"{fit_first:.2f} / {fit_warm:.2f}",
        "fill/s": f"{chunk / best['fill']:,.0f}",
        "perturb img/s": f"{chunk / best['perturb']:,.0f}",
        "raw img/s": f"{chunk / raw_chunk:,.0f}",
        "explain img/s": f"{total / best['explain']:,.0f}",
        "ratio wall / cpu": f"{best['raw'] / best['explain']:.2f} / {cpu['raw'] / cpu['explain']:.2f}",
        "const ratio wall / cpu": f"{best['raw'] / best['explain_const']:.2f} / "
                                  f"{cpu['raw'] / cpu['explain_const']:.2f}",
        "explain s": f"{best['explain']:.2f} ({total} pairs)",
    }]


def table(rows: list[dict[str, Any]]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, device {jax.devices()[0].device_kind}"


def append_results(text: str) -> None:
    """Append one section to HISTORY.md (locked, so concurrent benchmark scripts do not interleave)."""
    with open(HISTORY, "a", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
        fcntl.flock(f, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="32:8,64:10", help="comma list of image_side:window (default 32:8,64:10)")
    p.add_argument("--padding", type=int, default=2)
    p.add_argument("--num-patches", type=int, default=20_000)
    p.add_argument("--joint", action="store_true", help="one Gaussian over all channels (default per channel)")
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--samples", type=int, default=10, help="S, samples per window")
    p.add_argument("--stride", type=int, default=2, help="explain's window stride (default 2)")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-append", action="store_true", help="print only; do not append to HISTORY.md")
    args = p.parse_args(argv)
    cases = [tuple(int(v) for v in c.split(":")) for c in args.cases.split(",")]
    load0 = os.getloadavg()[0]
    rows = [r for size, window in cases for r in run_case(size, window, args)]
    out = table(rows)
    print(out)
    note = (f"fit: seconds, first call (compile included) / warm, {args.num_patches} patches, "
            f"{'joint' if args.joint else 'per-channel'} Gaussian, class matrices included. fill/s: sampler "
            f"alone. ratio: raw classifier time ÷ explain time (stride {args.stride}, S={args.samples}) with the "
            f"conditional sampler, same number of chunks of {args.chunk} (target ≥ 0.8), by wall and by "
            f"process CPU time; const ratio: same with a constant fill. Best of {args.rounds} "
            f"interleaved rounds; load average {load0:.1f} → {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.")
    print(note)
    if not args.no_append:
        cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/bench_conditional.py"] + sys.argv[1:])
        versions = ", ".join(f"{n} {md.version(n)}" for n in ("jax", "jaxlib", "flax"))
        append_results(f"\n## bench_conditional: conditional Gaussian sampler ({dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC)\n\n"
                       f"Machine: {machine()}. Versions: {versions}.\n\nCommand: `{cmd}`\n\n{out}\n\n{note}\n")


if __name__ == "__main__":
    main()
