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
