"""The conditional sampler's per-window affine map on CPU: class matrices gathered per window
(``affine_gathered``) against a loop reading them in place (``affine_looped``).

    .venv/bin/python benchmarks/bench_affine.py --windows 2 5 10 --append

One chunk of ``P`` windows, per-channel Gaussians (G = 3 groups), padding 2 (``l = window + 4``),
``(2·padding + 1)²`` position classes. Both forms are jitted and compiled before timing; best of
interleaved rounds. The two forms must agree (max |Δ| printed).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from _common import best_time, block, load_note, report, table
from undesirable_jax.conditional import affine_gathered, affine_looped


def case(window: int, chunk: int, rounds: int) -> list:
    padding, groups = 2, 3
    side = window + 2 * padding
    n_in, n_obs, n_cls = window * window, side * side - window * window, (2 * padding + 1) ** 2
    rng = np.random.default_rng(0)
    f32 = lambda *s: jnp.asarray(rng.normal(size=s).astype(np.float32))  # noqa: E731
    args = (f32(n_cls, groups, n_in), f32(n_cls, groups, n_in, n_obs), f32(n_cls, groups, n_in, n_in),
            jnp.asarray(rng.integers(0, n_cls, chunk), jnp.int32), f32(chunk, groups, n_obs), f32(chunk, groups, n_in))
    gathered, looped = jax.jit(affine_gathered), jax.jit(affine_looped)
    err = float(jnp.max(jnp.abs(block(gathered(*args)) - block(looped(*args)))))
    t_g = best_time(lambda: block(gathered(*args)), repeats=rounds)
    t_l = best_time(lambda: block(looped(*args)), repeats=rounds)
    return [f"{window}×{window}", chunk, n_cls, t_g * 1e3, t_l * 1e3, t_g / t_l, f"{err:.1e}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--chunk", type=int, default=256, help="windows per call (the engine's chunk)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--append", action="store_true", help="append the table to HISTORY.md")
    args = ap.parse_args()
    rows = [case(w, args.chunk, args.rounds) for w in args.windows]
    body = table(["window", "windows/call", "classes", "gathered ms", "looped ms", "gathered ÷ looped",
                  "max |Δ|"], rows)
    report("bench_affine: conditional sampler, gathered vs looped class matrices", body, append=args.append,
           notes=f"Best of {args.rounds} calls each, compile excluded. {load_note()}")


if __name__ == "__main__":
    main()
