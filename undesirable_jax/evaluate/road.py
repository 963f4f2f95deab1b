"""ROAD's noisy linear imputation (Rong et al., ICML 2022): removal without a fill that leaks the class.

A removed pixel ``i`` takes the weighted mean of its in-image 8-neighbours ``j``,
``x_i = Σ_j w_ij x_j / Σ_j w_ij`` (``w = 1/6`` for the 4 edge neighbours, ``1/12`` for the 4 diagonal
ones), where the kept pixels are fixed and the removed ones are unknowns; each channel is solved on its
own. Multiplying by the degree ``d_i = Σ_j w_ij`` gives ``(D − W)_RR x_R = W_RK x_K``: the graph
Laplacian restricted to the removed pixels ``R``. Every 8-connected region of removed pixels touches a
kept pixel unless it is the whole image: its in-image 8-neighbours outside it cannot be removed (the
region would include them), so they are kept, and a region with no outside neighbour is the whole
image (tests/test_evaluate_road.py checks this on random masks).
So while any pixel is kept, every block of the matrix is irreducibly diagonally dominant, hence
symmetric positive definite, and conjugate gradient (matrix-free, a few shifted adds per step, Jacobi
preconditioner ``1/d_i``, started from ``W_RK x_K / d``) solves it; no region needs finding. Kept pixels
are identity rows of the operator with right-hand side 0 and get their own values back afterwards.
When every pixel is removed there is no boundary value (the right-hand side is 0 and CG returns 0 at
once) and each channel takes the mean of the original image instead.

Last, Gaussian noise of standard deviation ``noise`` is added to the removed pixels only; kept pixels
are returned bitwise unchanged. The key drives the noise alone.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import checks


ROAD_TOL = 1e-6
"""CG's relative residual at which an imputation stops (the evaluation's scoring uses it)."""


def road_impute(image: Any, removed: Any, key: jax.Array, *, noise: float = 0.01, tol: float = ROAD_TOL,
                maxiter: int | None = None) -> jnp.ndarray:
    """Impute the ``removed`` pixels of ``image`` ``[H, W, C]`` as ROAD does; returns ``[H, W, C]`` float32.

    ``removed``: bool ``[H, W]``. ``key``: drives the noise only. ``noise``: standard deviation of the
    Gaussian noise added to removed pixels (0: deterministic). ``tol``: CG stops when the residual norm
    falls below ``tol`` times the right-hand side's; ``maxiter`` (default ``H·W``, the exact-arithmetic
    bound) caps the steps. Batched use: ``jax.vmap(functools.partial(road_impute, noise=...))`` or
    ``jax.lax.map``; on CPU vmap pays off for small images only (benchmarks/bench_road.py: faster per
    mask at 8²–28², slower at 112²–224², where ``lax.map`` or one call per mask is faster).
    """
    image = jnp.asarray(image)
    removed = jnp.asarray(removed)
    if image.ndim != 3:
        raise ValueError(f"image: expected [H, W, C], got shape {image.shape}")
    if removed.shape != image.shape[:2]:
        raise ValueError(f"removed: expected a bool mask of shape {image.shape[:2]}, got {removed.shape}")
    if removed.dtype != jnp.bool_:
        raise TypeError(f"removed: expected dtype bool, got {removed.dtype}; pass mask.astype(bool)")
    checks.nonnegative_number("noise", noise)
    if not 0 < checks.real("tol", tol) < 1:
        raise ValueError(f"tol: expected a float in (0, 1), got {tol!r}")
    h, w = removed.shape
    maxiter = h * w if maxiter is None else maxiter
    checks.positive_int("maxiter", maxiter, maximum=None)
    return _road_impute(image.astype(jnp.float32), removed, key, jnp.float32(noise), tol=float(tol),
                        maxiter=int(maxiter))


@functools.partial(jax.jit, static_argnames=("tol", "maxiter"))
def _road_impute(image, removed, key, noise, *, tol, maxiter):
    return add_noise(image, removed, linear_impute(image, removed, tol=tol, maxiter=maxiter), key, noise)


def add_noise(image: jnp.ndarray, removed: jnp.ndarray, imputed: jnp.ndarray, key: jax.Array,
              noise: float | jnp.ndarray) -> jnp.ndarray:
    """ROAD's last step: Gaussian noise (standard deviation ``noise``, from ``key``) on the removed pixels of
    ``imputed``; kept pixels are ``image``'s, bitwise. One imputation serves every noise draw."""
    eps = jax.random.normal(key, image.shape, jnp.float32)
    return jnp.where(removed[..., None], imputed + noise * eps, image)


def neighbour_sum(x: jnp.ndarray) -> jnp.ndarray:
    """``Σ_j w_ij x_j`` over the in-image 8-neighbours of every pixel of ``x`` ``[H, W, ...]``.

    The weights are ``([1, 2, 1]ᵀ[1, 2, 1] − 4·δ) / 12``: two 3-tap passes (zero padding drops the
    out-of-image neighbours) minus the centre, instead of eight shifted slices.
    """
    h, w = x.shape[:2]
    rest = [(0, 0)] * (x.ndim - 2)
    p = jnp.pad(x, [(1, 1), (0, 0)] + rest)
    col = p[:h] + 2.0 * p[1:h + 1] + p[2:]
    p = jnp.pad(col, [(0, 0), (1, 1)] + rest)
    box = p[:, :w] + 2.0 * p[:, 1:w + 1] + p[:, 2:]
    return (box - 4.0 * x) * (1.0 / 12.0)


def linear_impute(image: jnp.ndarray, removed: jnp.ndarray, *, tol: float = 1e-6,
                  maxiter: int = 10_000) -> jnp.ndarray:
    """The noise-free imputation ``[H, W, C]`` (module docstring); kept pixels pass through unchanged."""
    kept = ~removed
    rm = removed[..., None]
    degree = neighbour_sum(jnp.ones(removed.shape, jnp.float32))[..., None]

    def matvec(x):                                  # (D − W) on the removed pixels, identity elsewhere
        return jnp.where(rm, degree * x - neighbour_sum(jnp.where(rm, x, 0.0)), x)

    # All removed: rhs = 0 and the start is 0, so CG returns at once and the image mean below takes over.
    rhs = jnp.where(rm, neighbour_sum(jnp.where(kept[..., None], image, 0.0)), 0.0)
    x0 = jnp.where(rm, pyramid_fill(image, kept), 0.0)
    x, _ = jax.scipy.sparse.linalg.cg(matvec, rhs, x0=x0, tol=tol, maxiter=maxiter, M=lambda r: r / degree)
    x = jnp.where(jnp.any(kept), x, jnp.mean(image, axis=(0, 1)))
    return jnp.where(kept[..., None], image, x)


def pyramid_fill(image: jnp.ndarray, kept: jnp.ndarray) -> jnp.ndarray:
    """A smooth guess ``[H, W, C]`` of the removed pixels from the kept ones: CG's starting point.

    Push-pull: the kept values and the kept mask are summed over 2×2 blocks level by level; each level's
    estimate is the mean of its kept values where it has any, else the next coarser estimate (0 where
    nothing is kept at all). Its smooth part is close to the harmonic solution, which leaves CG mostly
    high-frequency error to remove: far fewer steps to the same tolerance, the same solution.
    """
    values, weights = [jnp.where(kept[..., None], image, 0.0)], [kept.astype(jnp.float32)[..., None]]
    while values[-1].shape[0] > 1 or values[-1].shape[1] > 1:
        values.append(_sum_pool(values[-1]))
        weights.append(_sum_pool(weights[-1]))
    est = jnp.zeros_like(values[-1])
    for v, m in zip(reversed(values), reversed(weights)):
        coarse = jnp.repeat(jnp.repeat(est, 2, axis=0), 2, axis=1)[:v.shape[0], :v.shape[1]]
        est = jnp.where(m > 0, v / jnp.maximum(m, 1e-30), coarse)
    return est


def _sum_pool(x: jnp.ndarray) -> jnp.ndarray:
    """Sums over 2×2 blocks of ``x [H, W, C]`` (odd sides padded with zeros): ``[⌈H/2⌉, ⌈W/2⌉, C]``."""
    h, w = x.shape[:2]
    x = jnp.pad(x, [(0, h % 2), (0, w % 2), (0, 0)])
    return x.reshape(x.shape[0] // 2, 2, x.shape[1] // 2, 2, -1).sum(axis=(1, 3))
