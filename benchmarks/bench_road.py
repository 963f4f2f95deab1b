"""ROAD imputation cost (``undesirable_jax.evaluate.road_impute``): one mask and a batch of masks.

For each image side (3 channels) and mask kind it reports the first call (compile included), the warm
time for one mask, and the warm time per mask when ``--batch`` masks of one image are imputed in one
call, vmapped or through ``jax.lax.map`` (the evaluation imputes many masks per image). Mask kinds:
``random`` (each pixel removed with probability 0.5: many small regions, fast CG) and ``disc`` (a
centred disc of 30 % of the pixels: one large region, the slow case for CG, whose steps grow with the
region's diameter), and ``ranking`` (the scoring's step: the top q % of one smooth map, q spread over
1–90 % across the batch, so the masks' CG steps differ widely: vmap iterates all of them in lockstep
until the slowest converges, ``lax.map`` each only as long as it needs).

    .venv/bin/python benchmarks/bench_road.py                       # sides 8, 28, 112, 224
    .venv/bin/python benchmarks/bench_road.py --sides 112 224 --kinds disc ranking
    .venv/bin/python benchmarks/bench_road.py --sides 8 28 --no-append
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from _common import best_time, block, load_note, report, table
from undesirable_jax.evaluate import road_impute


def masks(kind: str, side: int, batch: int, seed: int) -> np.ndarray:
    """``[batch, side, side]`` bool masks of ``kind`` (disc masks shifted a little per batch item)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.random((batch, side, side)) < 0.5
    if kind == "ranking":   # the scoring's step: one smooth map's top q %, q spread over 1–90 %
        smooth = jax.image.resize(jnp.asarray(rng.normal(size=(7, 7)), jnp.float32), (side, side), "linear")
        order = np.argsort(-np.asarray(smooth).ravel(), kind="stable")
        out = np.zeros((batch, side * side), bool)
        for b, q in enumerate(np.linspace(0.01, 0.9, batch)):
            out[b, order[:int(round(q * side * side))]] = True
        return out.reshape(batch, side, side)
    yy, xx = np.mgrid[:side, :side]
    r = side * np.sqrt(0.3 / np.pi)
    c = side / 2 + rng.uniform(-0.1, 0.1, (batch, 2)) * side
    return (yy - c[:, :1, None]) ** 2 + (xx - c[:, 1:, None]) ** 2 < r ** 2


def row(side: int, kind: str, batch: int, repeats: int) -> list:
    image = jnp.asarray(np.random.default_rng(side).random((side, side, 3)), jnp.float32)
    m = jnp.asarray(masks(kind, side, batch, side))
    keys = jax.random.split(jax.random.key(0), batch)
    one = functools.partial(road_impute, image, m[0], keys[0])
    t0 = time.perf_counter()
    block(one())
    first = time.perf_counter() - t0
    warm = best_time(one, repeats=repeats)
    many = jax.vmap(functools.partial(road_impute, image))
    batched = best_time(lambda: many(m, keys), repeats=repeats)
    seq = jax.jit(lambda mm, kk: jax.lax.map(lambda a: road_impute(image, a[0], a[1]), (mm, kk)))
    mapped = best_time(lambda: seq(m, keys), repeats=repeats)
    return [f"{side}²×3", kind, f"{m.mean():.2f}", first, warm * 1e3, batch, batched / batch * 1e3,
            mapped / batch * 1e3]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sides", type=int, nargs="+", default=[8, 28, 112, 224])
    ap.add_argument("--kinds", nargs="+", default=["random", "disc", "ranking"], choices=["random", "disc", "ranking"])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    rows = [row(s, k, args.batch, args.repeats) for s in args.sides for k in args.kinds]
    body = table(["image", "mask", "removed", "first call s (compile)", "warm ms / mask",
                  "batch", "vmap ms / mask", "lax.map ms / mask"], rows)
    notes = (f"noise 0.01, CG tol 1e-6 (relative residual), Jacobi preconditioner, push-pull start; warm = best of "
             f"{args.repeats}; {load_note()} at the end.")
    report("bench_road: ROAD noisy linear imputation on CPU", body, append=not args.no_append, notes=notes)


if __name__ == "__main__":
    main()
