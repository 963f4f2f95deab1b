"""Weight of evidence (METHOD.md §1): the scoring half of PDA, separate from which pixels were removed.

All functions are pure ``jnp`` and broadcast, so they run inside or outside ``jit`` and over batches.
"""

from __future__ import annotations

import jax.numpy as jnp


def laplace(p: jnp.ndarray, n: float, num_classes: int) -> jnp.ndarray:
    """Laplace-corrected probability ``(p·N + 1) / (N + K)``: keeps log-odds finite at p ∈ {0, 1}."""
    return (p * n + 1.0) / (n + num_classes)


def log_odds(p: jnp.ndarray) -> jnp.ndarray:
    """``log2(p / (1 − p))`` in bits."""
    return jnp.log2(p) - jnp.log2(1.0 - p)


def weight_of_evidence(
    p_full: jnp.ndarray, p_removed: jnp.ndarray, n: float, num_classes: int
) -> jnp.ndarray:
    """WE in bits: log-odds of ``p(c|x)`` minus log-odds of ``p(c|x₋w)``, both Laplace-corrected.

    ``p_full`` must broadcast against ``p_removed`` (e.g. ``[K, 1, 1]`` against ``[K, nY, nX]``).
    Positive: the removed window supported the class; negative: it spoke against it.
    """
    return log_odds(laplace(p_full, n, num_classes)) - log_odds(laplace(p_removed, n, num_classes))


def non_target_distribution(p: jnp.ndarray, p_target: jnp.ndarray) -> jnp.ndarray:
    """``q(c) = p(c) / (1 − p(t))``: the distribution over the classes other than the target.

    Used to decouple competitors' evidence from the target's (METHOD.md §3). ``p_target`` must
    broadcast against ``p``; the tiny floor keeps a target with p = 1 finite (q is then undefined and
    the Laplace correction takes it to the uniform 1/(K−1)).
    """
    q = p / jnp.maximum(1.0 - p_target, jnp.finfo(jnp.float32).tiny)
    # p(c) <= 1 − p(t) holds exactly, but not after float32 rounding when p(t) ≈ 1: keep q a probability.
    return jnp.clip(q, 0.0, 1.0)


def weight_of_evidence_se(p_removed: jnp.ndarray, se_removed: jnp.ndarray, n: float,
                          num_classes: int) -> jnp.ndarray:
    """Standard error (bits) of the WE of a window, from the standard error of its mean ``p_removed``.

    Delta method: the WE depends on the sampled mean p̄ only through ``−log_odds(laplace(p̄))``,
    whose slope is ``N / (N + K) / (q (1 − q) ln 2)`` with ``q = laplace(p̄)``; ``p(c|x)`` is exact.
    First order in the standard error: trustworthy when S is large enough for the mean to be
    roughly normal and the slope to change little over ± one standard error. NaN stays NaN.
    """
    q = laplace(p_removed, n, num_classes)
    slope = (n / (n + num_classes)) / (q * (1.0 - q) * jnp.log(2.0))
    return slope * se_removed


def pixel_se(grid, window_se: jnp.ndarray) -> jnp.ndarray:
    """Standard error ``[..., H, W]`` of the per-pixel evidence from the windows' ``[..., nY, nX]``.

    A pixel's evidence is the mean of the ``c`` covering windows' WE, so its variance is
    ``Σ se_w² / c²``. This assumes the windows' estimates are independent, which holds for the
    engine's sampling noise: every (window, sample) pair has its own key, so two windows never share
    a draw (the untouched image's p(c|x) is exact and common to all). It is only the sampling error
    given the image and the sampler: interpolated windows (explain_adaptive) share their neighbours'
    draws, and their interpolation error is not included. A pixel covered by a window without a
    standard error (fewer than 2 samples; in any row, since the sample count is per window) gets NaN.
    ``grid`` is the :class:`~undesirable_jax.windows.WindowGrid`.
    """
    missing = jnp.isnan(window_se)
    var = grid.to_pixels(jnp.where(missing, 0.0, window_se) ** 2)   # Σ se² / c
    cover = jnp.asarray(grid.coverage(), var.dtype)
    any_row = jnp.any(missing.reshape((-1,) + missing.shape[-2:]), axis=0)
    touched = grid.to_pixels(any_row.astype(var.dtype)) > 0
    return jnp.where(touched, jnp.nan, jnp.sqrt(var / cover))


def pixel_evidence(grid, p: jnp.ndarray, p_removed: jnp.ndarray, n: float, num_classes: int,
                   se_removed: jnp.ndarray | None = None) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """Per-pixel evidence ``[..., H, W]`` from window probabilities ``[..., nY, nX]`` (and its standard
    error when ``se_removed`` is given, else None): each window's WE, averaged over the covering windows.

    The one path from windows to pixels: the engine's R_c and the factors' decoupled R_q (on
    q = p(c)/(1 − p(t)), with ``num_classes`` − 1 classes) both go through it.
    """
    evidence = grid.to_pixels(weight_of_evidence(p, p_removed, n, num_classes))
    if se_removed is None:
        return evidence, None
    return evidence, pixel_se(grid, weight_of_evidence_se(p_removed, se_removed, n, num_classes))
