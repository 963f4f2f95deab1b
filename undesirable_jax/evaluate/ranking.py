"""Pixel orders for removal curves: descending by score, exact ties broken uniformly at random by a key.

A deterministic tie-break (row-major) turns every plateau of a map (a clamped map's zeros, a flat
region) into a top-left-first removal; a random one costs nothing and makes a plateau carry no order.

:func:`rank_pixels` first shuffles the pixels by a uniform random permutation drawn from ``key``, then
sorts the shuffled scores with a *stable* comparison sort. Distinct scores are ordered exactly (the
sort compares the values themselves, so scores one ulp apart keep their order); equal scores keep the
shuffled order among themselves, which is uniform over their permutations. ``-0.0`` and ``0.0`` tie.

**Zero is a level, not a sign.** A float map's values within :data:`ZERO_TOLERANCE` · max|map| of 0
count as exactly 0 (:func:`snap_zero`), before ranking and when counting the positive set
(:func:`positive_count`, the size of U_t = the pixels with evidence against the target > 0). Values
that are float noise around 0 (an occlusion window that changes nothing, computed in two different
batch layouts) would otherwise take their sign and their order from rounding, so the positive set and
the order would change between identical runs. This module is the one place of that rule; the runner's
positive count and every ranking use it. Distinct values away from 0 are still ordered exactly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

ZERO_TOLERANCE = 1e-6
"""Relative tolerance of zero: ``|v| ≤ ZERO_TOLERANCE · max|map|`` counts as 0 (float maps only)."""


def snap_zero(score: Any) -> jnp.ndarray:
    """``score`` with the values within :data:`ZERO_TOLERANCE` · max|score| of 0 set to exactly ``+0.0``.

    Float maps only (integer maps are exact and returned as they are); an all-zero map stays zero.
    Jittable; NaN values are left as they are (NaN compares false).
    """
    s = jnp.asarray(score)
    if not jnp.issubdtype(s.dtype, jnp.floating):
        return s
    scale = jnp.max(jnp.abs(s))
    return jnp.where(jnp.abs(s) <= ZERO_TOLERANCE * scale, jnp.zeros_like(s), s)


def positive_count(score: Any) -> jnp.ndarray:
    """Number of values of ``score`` that are > 0 after :func:`snap_zero` (the positive set's size)."""
    return jnp.sum(snap_zero(score) > 0)


def rank_pixels(score: Any, key: jax.Array) -> jnp.ndarray:
    """Flat pixel indices ``[H·W]`` (int32) of ``score`` ``[H, W]``, highest score first, ties at random.

    Values within the tolerance of 0 rank as exact zeros (:func:`snap_zero`), so the first
    :func:`positive_count` pixels of the order are exactly the positive set.

    Jittable and vmappable (``jax.vmap(rank_pixels)(scores, keys)``). A concrete ``score`` holding NaN
    is refused with ``ValueError``; under ``jit``/``vmap`` the values cannot be checked, and NaN scores
    then rank last for floating dtypes, so check finiteness before tracing.
    """
    score = jnp.asarray(score)
    if score.ndim != 2:
        raise ValueError(f"score: expected a map [H, W], got shape {score.shape}")
    if not (jnp.issubdtype(score.dtype, jnp.floating) or jnp.issubdtype(score.dtype, jnp.integer)):
        raise TypeError(f"score: expected a float or int map, got dtype {score.dtype}")
    if not isinstance(score, jax.core.Tracer) and bool(jnp.any(jnp.isnan(score))):
        raise ValueError(f"score: {int(jnp.isnan(score).sum())} NaN value(s); rank finite maps only "
                         "(replace NaN explicitly, e.g. jnp.nan_to_num, if that is what you mean)")
    return _rank(score.reshape(-1), key)


@jax.jit
def _rank(flat: jnp.ndarray, key: jax.Array) -> jnp.ndarray:
    perm = jax.random.permutation(key, flat.shape[0]).astype(jnp.int32)
    shuffled = snap_zero(flat)[perm]
    if jnp.issubdtype(flat.dtype, jnp.floating):
        order = jnp.argsort(-shuffled, stable=True)       # exact negation; NaN sorts last
    else:
        order = jnp.argsort(shuffled, descending=True, stable=True)
    return perm[order]


def pixel_ranks(order: jnp.ndarray) -> jnp.ndarray:
    """The inverse of an order ``[..., N]``: ``ranks[order[r]] = r`` (0 = removed first), int32."""
    n = order.shape[-1]
    r = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), order.shape)
    flat_order = order.reshape(-1, n)
    out = jax.vmap(lambda o, rr: jnp.zeros(n, jnp.int32).at[o].set(rr))(flat_order, r.reshape(-1, n))
    return out.reshape(order.shape)


def top_mask(order: jnp.ndarray, count: Any, shape: tuple[int, int]) -> jnp.ndarray:
    """Bool ``shape`` mask of the first ``count`` pixels of ``order`` (e.g. the top-q % to remove)."""
    ranks = pixel_ranks(order)
    return (ranks < jnp.asarray(count, jnp.int32)).reshape(shape)


__all__ = ["ZERO_TOLERANCE", "pixel_ranks", "positive_count", "rank_pixels", "snap_zero", "top_mask"]
