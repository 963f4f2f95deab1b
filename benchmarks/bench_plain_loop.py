"""The engine against a plain loop written the way the original PDA code works (issue 8).

The plain loop: a Python loop over windows; for each window, S samples drawn by a numpy sampler are
written into copies of the image; batches of (windows × S) images go through the same jitted
classifier (host → device → host each batch); the per-window mean probabilities become weight of
evidence, accumulated into per-pixel sums and counts window by window. Same model, image, window,
stride, S and batch size (= the engine's chunk size) as the engine.

Samplers: ``constant`` (maps must agree to 1e-5), ``marginal`` with a fixed pool order (sample s uses
pool image s mod M in both, so again exact), and ``conditional``: the original's per-window numpy
conditional Gaussian sampling (per window and channel: conditional mean from cached regression
matrices, then ``np.random.multivariate_normal``, which factorises the covariance on every call, as
the original does; ``cond-chol`` is a faster loop that draws with a cached Cholesky factor). Random
samples differ, so the conditional check is (a) the numpy conditional mean equals the JAX sampler's
for several windows, and (b) the maps of loop and engine correlate as well as two engine runs with
different keys do (the Monte-Carlo noise floor).

    .venv/bin/python benchmarks/bench_plain_loop.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np

import undesirable_jax as uj

from _common import block, load_model, load_note, report, table, wall_cpu

TARGET_COND = 10.0      # engine ≥ 10× the loop with the conditional sampler
TARGET_RAW = 0.95       # constant / marginal: engine ≥ 0.95× the raw classifier


# ---------------------------------------------------------------- numpy samplers (the original's way)

def np_constant(value: float) -> Callable:
    def draw(image, y, x, k, s_count, rng):
        return np.full((s_count, k, k, image.shape[-1]), value, np.float32)
    return draw


def np_marginal(pool: np.ndarray) -> Callable:
    """Sample s takes pool image s mod M (the original: the first S images of its data folder)."""
    def draw(image, y, x, k, s_count, rng):
        idx = np.arange(s_count) % pool.shape[0]
        return pool[idx, y:y + k, x:x + k]
    return draw


def cond_cache(sampler) -> dict[str, np.ndarray]:
    """Per-position-class regression matrices, bias and conditional covariance, as numpy float64."""
    chol = np.asarray(sampler.cond_chol, np.float64)
    return {"obs_index": np.asarray(sampler.cond_obs_index), "weight": np.asarray(sampler.cond_weight, np.float64),
            "bias": np.asarray(sampler.cond_bias, np.float64), "chol": chol,
            "cov": np.einsum("cgij,cgkj->cgik", chol, chol),
            "lo": np.asarray(sampler.lo, np.float64), "hi": np.asarray(sampler.hi, np.float64)}


def np_cond_mean(cache: dict, image: np.ndarray, y: int, x: int, k: int, pad: int) -> tuple[np.ndarray, int]:
    """Conditional mean [C, k²] of the window at (y, x) given its surrounding patch (per channel)."""
    size = k + 2 * pad
    h, w, c = image.shape
    py, px = min(max(y - pad, 0), h - size), min(max(x - pad, 0), w - size)
    cls = (y - py) * (2 * pad + 1) + (x - px)
    patch = image[py:py + size, px:px + size].reshape(size * size, c)
    obs = patch[cache["obs_index"][cls]]                                    # [n_obs, C]
    means = np.stack([cache["bias"][cls, g] + cache["weight"][cls, g] @ obs[:, g] for g in range(c)])
    return means, cls


def np_conditional(cache: dict, pad: int, draw_with: str) -> Callable:
    """The original's per-window sampling: mean by matmul, then a multivariate normal draw per channel."""
    def draw(image, y, x, k, s_count, rng):
        means, cls = np_cond_mean(cache, image, y, x, k, pad)
        c = image.shape[-1]
        out = np.empty((s_count, k, k, c), np.float32)
        for g in range(c):
            if draw_with == "mvn":
                v = rng.multivariate_normal(means[g], cache["cov"][cls, g], s_count)
            else:
                v = means[g] + rng.standard_normal((s_count, k * k)) @ cache["chol"][cls, g].T
            out[..., g] = np.clip(v, cache["lo"][g], cache["hi"][g]).reshape(s_count, k, k)
        return out
    return draw


# ---------------------------------------------------------------- the plain loop

def plain_loop(f: Callable, clf, image: np.ndarray, window: int, stride: int, num_samples: int,
               draw: Callable, windows_per_batch: int, laplace_n: float = 100_000, seed: int = 0):
    """PDA as the original code runs it. Returns ``(evidence [K, H, W], window_probs [K, nY, nX])``."""
    h, w, c = image.shape
    grid = uj.WindowGrid(h, w, window, stride)
    ny, nx = grid.shape
    ys, xs = grid.ys, grid.xs
    rng = np.random.default_rng(seed)
    p_full = np.asarray(f(clf, image[None]))[0].astype(np.float64)
    k_cls = p_full.shape[0]
    lap = lambda p: (p * laplace_n + 1) / (laplace_n + k_cls)
    lo_full = np.log2(lap(p_full)) - np.log2(1 - lap(p_full))
    sums = np.zeros((k_cls, h, w))
    counts = np.zeros((h, w))
    window_probs = np.zeros((ny * nx, k_cls))
    bsz = windows_per_batch * num_samples
    for w0 in range(0, ny * nx, windows_per_batch):
        ids = range(w0, min(w0 + windows_per_batch, ny * nx))
        batch = np.repeat(image[None], bsz, axis=0)        # padded to the full batch: one compile
        for j, wid in enumerate(ids):
            y, x = int(ys[wid // nx]), int(xs[wid % nx])
            batch[j * num_samples:(j + 1) * num_samples, y:y + window, x:x + window] = \
                draw(image, y, x, window, num_samples, rng)
        probs = np.asarray(f(clf, batch))[:len(ids) * num_samples]
        means = probs.reshape(len(ids), num_samples, k_cls).mean(1).astype(np.float64)
        for j, wid in enumerate(ids):
            y, x = int(ys[wid // nx]), int(xs[wid % nx])
            pw = lap(means[j])
            we = lo_full - (np.log2(pw) - np.log2(1 - pw))
            sums[:, y:y + window, x:x + window] += we[:, None, None]
            counts[y:y + window, x:x + window] += 1
            window_probs[wid] = means[j]
    return sums / counts, window_probs.T.reshape(k_cls, ny, nx)


# ---------------------------------------------------------------- main

def smooth_images(key: jax.Array, n: int, size: int, channels: int) -> np.ndarray:
    """Blurred noise images (some spatial correlation, like natural images), float32 [n, H, W, C]."""
    noise = jax.random.normal(key, (n, size, size, channels))
    return np.asarray(jax.vmap(lambda im: uj.samplers.gaussian_blur(im, 1.5))(noise) * 3.0)


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two maps (1 when both are constant and equal, 0 when one is constant)."""
    a, b = np.ravel(a), np.ravel(b)
    if a.std() == 0 or b.std() == 0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float(np.corrcoef(a, b)[0, 1])


def main(argv: list[str] | None = None) -> list[list[Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn", help="cnn (defined in benchmarks/_common.py) or a models name")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--windows-per-batch", type=int, default=25,
                   help="windows per classifier batch; batch = chunk = this × samples")
    p.add_argument("--samplers", nargs="+", default=["constant", "marginal", "conditional", "cond-chol"],
                   help="constant marginal conditional (numpy multivariate_normal per window, as the "
                        "original) cond-chol (numpy loop with a cached Cholesky factor)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best kept)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)

    key = jax.random.key(args.seed)
    clf, desc, shape = load_model(args.model, args.size, args.channels, args.classes, key, args.dtype)
    args.size, args.channels = shape[0], shape[2]
    f = jax.jit(lambda c, b: c.probs(b))
    imgs = smooth_images(jax.random.fold_in(key, 1), 17, args.size, args.channels)
    image, pool = imgs[0], imgs[1:]
    grid = uj.WindowGrid(args.size, args.size, args.window, args.stride)
    pairs = grid.num_windows * args.samples
    chunk = args.windows_per_batch * args.samples
    batch = jnp.asarray(np.repeat(image[None], chunk, 0))

    rows = []
    for name in args.samplers:
        cond = None
        if name == "constant":
            sampler, draw = uj.samplers.constant(0.0), np_constant(0.0)
        elif name == "marginal":
            sampler, draw = uj.samplers.marginal(pool, shuffle=False), np_marginal(pool)
        elif name in ("conditional", "cond-chol"):
            if not hasattr(uj.samplers, "conditional_gaussian"):
                print(f"skipping {name}: undesirable_jax.samplers.conditional_gaussian is not available")
                continue
            sampler = uj.samplers.conditional_gaussian(pool, window=args.window, key=jax.random.fold_in(key, 2),
                                                       padding=2, num_patches=20_000)
            cond = cond_cache(sampler)
            draw = np_conditional(cond, 2, "mvn" if name == "conditional" else "chol")
        else:
            raise SystemExit(f"unknown sampler {name!r}")

        run_engine = lambda k=0: uj.explain(clf, image, window=args.window, stride=args.stride, sampler=sampler,
                                            num_samples=args.samples, key=jax.random.key(k), chunk_size=chunk)
        run_loop = lambda seed=0: plain_loop(f, clf, image, args.window, args.stride, args.samples, draw,
                                             args.windows_per_batch, seed=seed)
        ex = block(run_engine())
        loop_ev, loop_wp = run_loop()
        ev = np.asarray(ex.evidence)
        if cond is None:
            err = float(np.abs(ev - loop_ev).max())
            scale = 1.0 + float(np.abs(loop_ev).max())
            wp_err = float(np.abs(np.asarray(ex.window_probs) - loop_wp).max())
            check = (f"max Δ map {err:.1e} bits (max abs map {scale - 1:.2g}), "
                     f"max Δ window_probs {wp_err:.1e}")
            tol = 1e-5 if args.dtype == "float32" else 1e-2
            ok = err <= tol * scale and wp_err <= tol
        else:
            state = sampler.prepare(jnp.asarray(image), args.window)
            mean_err = 0.0
            for (y, x) in [(0, 0), (3, 7), (args.size - args.window, args.size // 2), (11, args.size - args.window)]:
                y, x = min(y, args.size - args.window), min(x, args.size - args.window)
                m_np, _ = np_cond_mean(cond, image.astype(np.float64), y, x, args.window, 2)
                m_jx, _ = sampler.moments(state, jnp.asarray(image), args.window, jnp.int32(y), jnp.int32(x))
                mean_err = max(mean_err, float(np.abs(m_np - np.asarray(m_jx)).max()))
            ex2 = uj.explain(clf, image, window=args.window, stride=args.stride, sampler=sampler,
                             num_samples=args.samples, key=jax.random.key(1), chunk_size=chunk)
            top = int(np.argmax(np.asarray(ex.probs)))
            c_loop, c_keys = corr(ev[top], loop_ev[top]), corr(ev[top], np.asarray(ex2.evidence)[top])
            check = (f"cond. mean Δ {mean_err:.1e}; map corr loop–engine {c_loop:.3f} vs "
                     f"engine key0–key1 {c_keys:.3f}")
            ok = mean_err <= 1e-4 and c_loop >= c_keys - 0.05
        f(clf, batch).block_until_ready()
        t_loop, t_eng, t_raw = (np.full(2, np.inf) for _ in range(3))
        n_batches = -(-pairs // chunk)
        for _ in range(args.rounds):
            t_loop = np.minimum(t_loop, wall_cpu(run_loop))
            t_eng = np.minimum(t_eng, wall_cpu(run_engine))
            t_raw = np.minimum(t_raw, wall_cpu(lambda: [f(clf, batch) for _ in range(n_batches)][-1]))
        loop_rate, eng_rate = pairs / t_loop, pairs / t_eng
        raw_rate = n_batches * chunk / t_raw
        speed = eng_rate / loop_rate
        if cond is None:
            vs_raw = eng_rate / raw_rate
            target = (f"engine ≥{TARGET_RAW}× raw: wall {'met' if vs_raw[0] >= TARGET_RAW else 'MISSED'} "
                      f"({vs_raw[0]:.2f}), CPU {'met' if vs_raw[1] >= TARGET_RAW else 'MISSED'} ({vs_raw[1]:.2f})")
        else:
            target = (f"≥{TARGET_COND:g}× loop: wall {'met' if speed[0] >= TARGET_COND else 'MISSED'}, "
                      f"CPU {'met' if speed[1] >= TARGET_COND else 'MISSED'}")
        rows.append([name, chunk, pairs, f"{check} {'ok' if ok else 'FAIL'}", raw_rate[0], loop_rate[0],
                     eng_rate[0], speed[0], speed[1], target])
    headers = ["sampler", "batch = chunk", "pairs", "same maps?", "raw img/s", "plain loop img/s",
               "engine img/s", "speed-up (wall)", "speed-up (CPU time)", "target"]
    title = (f"bench_plain_loop: engine vs original-style plain loop ({desc}, {args.dtype}, window "
             f"{args.window}, stride {args.stride}, S={args.samples})")
    notes = (f"Best of {args.rounds} interleaved rounds ({load_note()} at the end). Plain loop: numpy "
             "fills into copies of the image, batches through the same jitted classifier, per-window "
             "WE accumulated into per-pixel sums (as the original PDA code). Maps agree when |Δ| ≤ 1e-5·(1 + max|map|) bits and window "
             "probabilities to 1e-5 (the loop computes WE in float64, the engine in float32). "
             "`conditional` draws with "
             "np.random.multivariate_normal per window and channel (the original's way); `cond-chol` "
             "is a faster plain loop with cached Cholesky factors.")
    report(title, table(headers, rows), append=not args.no_append, notes=notes)
    return rows


if __name__ == "__main__":
    main()
