"""Undesirable factors (METHOD.md §3): what stands in the way of the target, and what looks like others.

From one :class:`~undesirable_jax.engine.Explanation` (no new forward pass):

- ``U_t = max(0, −R_t)``: pixels whose removal raises p(t|x), i.e. evidence against the target.
- ``U_c`` for the ``top_k`` competitors c ≠ t by p(c|x): pixels that make the image look like c.
  With ``decouple=True`` (default) the competitors' evidence is computed on the distribution over
  the non-target classes, ``q(c|·) = p(c|·) / (1 − p(t|·))``, for the untouched image (``probs``) and
  for every window (``window_probs``), Laplace-corrected with K − 1 classes; then
  ``U_c = max(0, R^q_c)``. Under a softmax a region that only acts on t moves every p(c) but leaves
  every q(c) unchanged, so it no longer echoes in each competitor's map. ``decouple=False`` gives the
  plain ``U_c = max(0, R_c)`` from the explanation's evidence. When the explanation keeps every
  class, ``1 − p(t|·)`` is taken as the sum of the other classes' probabilities: equal in exact
  arithmetic, but it stays meaningful in float32 where a confident p(t) rounds to 1.
- ``combined``: the competitors' U_c weighted by p(c|x), normalised by the sum of those weights (equal
  weights in the one case where that sum is 0: every listed competitor underflowed to p = 0).
- ``alpha``: keep only pixels whose evidence is significant at that (two-sided) level, with
  ``z = Φ⁻¹(1 − alpha/2)``: U_t where ``−R_t > z · SE(R_t)``, plain U_c where ``R_c > z · SE(R_c)``,
  decoupled U_c where ``R^q_c > z · SE(R^q_c)``; the other pixels become 0. SE(R) is the explanation's
  ``evidence_se``. For the decoupled evidence, SE(q̄_c) is bounded per window by
  ``(SE(p̄_c) + q̄_c · SE(p̄_t)) / (1 − p̄_t)`` (the delta method with the unknown covariance of p_c
  and p_t at its Cauchy–Schwarz worst case), so that test is conservative. A pixel without a standard
  error (NaN: a window with S = 1) is never significant.

Ranking, with ties broken deterministically: a higher p(c|x) first; among equal probabilities the
lower class id first. The same rule picks the top-1 class when no target is given.

One code path: :func:`_factors_one` handles one explanation; a stack of explanations (a leading batch
axis on every array) goes through ``jax.vmap`` of the same function.
"""

from __future__ import annotations

import functools
import statistics
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from . import checks
from .classifiers import rank_classes
from .engine import Explanation
from .evidence import non_target_distribution, pixel_evidence
from .windows import WindowGrid

_TINY = float(np.finfo(np.float32).tiny)


@struct.dataclass
class Factors:
    """Undesirable factors of one explanation (or a stack of them: a leading batch axis everywhere).

    ``target_class`` int []: the class t the factors refer to (−1 when a traced target was not among
    the explanation's classes; the maps are then NaN). ``target_prob`` []: p(t|x).
    ``target`` [H, W] ≥ 0: U_t = max(0, −R_t).
    ``non_target_classes`` int [k]: the competitors, ranked. ``non_target_probs`` [k]: their p(c|x).
    ``non_target`` [k, H, W] ≥ 0: U_c for each competitor. ``combined`` [H, W] ≥ 0: the U_c weighted
    by p(c|x) and normalised by the sum of those weights. ``decoupled``: how U_c was computed.
    ``alpha``: the significance level the maps were masked at (None: every pixel kept).
    """

    target_class: jnp.ndarray
    target_prob: jnp.ndarray
    target: jnp.ndarray
    non_target_classes: jnp.ndarray
    non_target_probs: jnp.ndarray
    non_target: jnp.ndarray
    combined: jnp.ndarray
    decoupled: bool = struct.field(pytree_node=False, default=True)
    alpha: float | None = struct.field(pytree_node=False, default=None)


def factors(explanation: Explanation, target: Any = None, top_k: int = 3, decouple: bool = True,
            alpha: float | None = None) -> Factors:
    """Undesirable factors of ``explanation`` for ``target`` and its ``top_k`` strongest competitors.

    Args:
      explanation: from :func:`undesirable_jax.explain`, or a stack of them
        (``jax.tree.map(lambda *a: jnp.stack(a), *explanations)``).
      target: None (the top-1 class of ``explanation.probs``), a class id, or for a stack an int array
        ``[B]`` (one id per explanation). It must be among ``explanation.classes``.
      top_k: how many competitors to report, 1 ≤ top_k ≤ (kept classes − 1). Static under ``jit``.
      decouple: compute the competitors' evidence on q(c) = p(c) / (1 − p(t)) (see module docstring).
      alpha: None (keep every pixel) or a level in (1e-12, 0.5] such as 0.05: keep only the pixels whose
        evidence is significant (module docstring). Needs an explanation with ``evidence_se``.

    Works under ``jax.jit`` (``top_k`` and ``decouple`` static). When ``target`` or the explanation is
    traced, membership of ``target`` cannot be checked eagerly: a missing class then gives
    ``target_class = −1`` and NaN maps instead of an error.
    """
    if not isinstance(explanation, Explanation):
        raise TypeError(f"explanation: expected an undesirable_jax.Explanation (from explain), got "
                        f"{type(explanation).__name__}")
    if not isinstance(decouple, (bool, np.bool_)):
        raise TypeError(f"decouple: expected True or False, got {type(decouple).__name__} {decouple!r}")
    ndim = explanation.evidence.ndim
    if ndim not in (3, 4):
        raise ValueError(f"explanation: evidence must be [K, H, W] (one) or [B, K, H, W] (a stack), "
                         f"got shape {explanation.evidence.shape}")
    batched = ndim == 4
    kept = int(explanation.classes.shape[-1])
    top_k = _check_top_k(top_k, kept, explanation.num_classes)
    target_ids = _check_target(target, explanation.classes, batched)
    z = _check_alpha(alpha, explanation)
    se = None if z is None else (explanation.evidence_se, explanation.window_probs_se)

    out = _factors_jit(explanation.evidence, explanation.probs, explanation.classes,
                       explanation.window_probs, target_ids, se, top_k=top_k, decouple=bool(decouple),
                       grid=explanation.grid, num_classes=explanation.num_classes,
                       laplace_n=explanation.laplace_n, batched=batched, z=z)
    return Factors(*out, decoupled=bool(decouple), alpha=None if z is None else float(alpha))


@functools.partial(jax.jit, static_argnames=("top_k", "decouple", "grid", "num_classes", "laplace_n", "batched",
                                             "z"))
def _factors_jit(evidence, probs, classes, window_probs, target, se, *, top_k, decouple, grid, num_classes,
                 laplace_n, batched, z):
    """One compiled call (fast eagerly too); a stack goes through ``vmap`` of :func:`_factors_one`."""
    one = functools.partial(_factors_one, top_k=top_k, decouple=decouple, grid=grid,
                            num_classes=num_classes, laplace_n=laplace_n, z=z)
    if not batched:
        return one(evidence, probs, classes, window_probs, target, se)
    if target is None:
        return jax.vmap(lambda e, p, c, w, s: one(e, p, c, w, None, s))(evidence, probs, classes, window_probs, se)
    return jax.vmap(one)(evidence, probs, classes, window_probs, target, se)


def _factors_one(evidence, probs, classes, window_probs, target, se, *, top_k: int, decouple: bool,
                 grid: WindowGrid, num_classes: int, laplace_n: float, z: float | None):
    """The factors of one explanation: plain arrays in, the fields of :class:`Factors` out."""
    if target is None:
        t_row = rank_classes(probs, classes)[0]
        found = jnp.bool_(True)
    else:
        hits = classes == target
        t_row = jnp.argmax(hits)
        found = jnp.any(hits)
    is_t = jnp.arange(probs.shape[0]) == t_row
    rank_p = jnp.where(is_t, -jnp.inf, probs)
    rows = rank_classes(rank_p, classes)[:top_k]

    p_t = probs[t_row]
    p_c = probs[rows]
    u_t = jnp.maximum(0.0, -evidence[t_row])
    if z is not None:
        u_t = jnp.where(-evidence[t_row] > z * se[0][t_row], u_t, 0.0)
    if decouple:
        if probs.shape[0] == num_classes:
            # Every class kept: 1 − p(t) as the sum of the others' probabilities, which stays exact
            # where the float32 difference 1 − p(t) cancels (a confident p(t) ≈ 1).
            rest_full = jnp.sum(jnp.where(is_t, 0.0, probs))
            rest_win = jnp.sum(jnp.where(is_t[:, None, None], 0.0, window_probs), axis=0)
            q_full = p_c / jnp.maximum(rest_full, _TINY)
            q_win = window_probs[rows] / jnp.maximum(rest_win, _TINY)
        else:
            q_full = non_target_distribution(p_c, p_t)
            q_win = non_target_distribution(window_probs[rows], window_probs[t_row][None])
        q_full = q_full[:, None, None]
        se_q = None if z is None else ((se[1][rows] + q_win * se[1][t_row][None])
                                       / jnp.maximum(1.0 - window_probs[t_row], _TINY)[None])
        r_q, se_r = pixel_evidence(grid, q_full, q_win, laplace_n, num_classes - 1, se_q)
        u_c = jnp.maximum(0.0, r_q)
        if z is not None:
            u_c = jnp.where(r_q > z * se_r, u_c, 0.0)
    else:
        u_c = jnp.maximum(0.0, evidence[rows])
        if z is not None:
            u_c = jnp.where(evidence[rows] > z * se[0][rows], u_c, 0.0)
    total = jnp.sum(p_c)
    # All listed competitors at p = 0 (float underflow): the weighted mean is 0/0; use equal weights.
    weights = jnp.where(total > 0, p_c / jnp.where(total > 0, total, 1.0), 1.0 / top_k)
    combined = jnp.tensordot(weights, u_c, axes=1)

    nan = jnp.float32(jnp.nan)
    t_class = jnp.where(found, classes[t_row], -1).astype(jnp.int32)
    u_t, u_c, combined = (jnp.where(found, a, nan) for a in (u_t, u_c, combined))
    return (t_class, jnp.where(found, p_t, nan), u_t, classes[rows].astype(jnp.int32), p_c, u_c, combined)


def _check_alpha(alpha: Any, explanation: Explanation) -> float | None:
    """``z = Φ⁻¹(1 − alpha/2)`` for a level ``alpha`` in (1e-12, 0.5] (:func:`checks.significance`), or None
    for ``alpha=None``; an explanation without standard errors (none stored, or S = 1) is refused."""
    if alpha is None:
        return None
    alpha = checks.significance("alpha", alpha)
    if explanation.evidence_se is None or explanation.window_probs_se is None:
        raise ValueError("alpha: this explanation has no evidence_se (it was not made by explain or "
                         "explain_adaptive); pass alpha=None")
    if explanation.num_samples < 2:
        raise ValueError(f"alpha: needs a standard error, and S = num_samples = {explanation.num_samples} sample "
                         "per window gives none (every pixel would be masked); explain with num_samples >= 2 and "
                         "a random sampler (marginal, conditional), or pass alpha=None")
    return float(statistics.NormalDist().inv_cdf(1.0 - float(alpha) / 2.0))


def _check_top_k(top_k: Any, kept: int, num_classes: int) -> int:
    if isinstance(top_k, (bool, np.bool_)) or not isinstance(top_k, (int, np.integer)):
        raise TypeError(f"top_k: expected an int >= 1, got {type(top_k).__name__} {top_k!r}")
    limit = min(kept, num_classes) - 1
    if top_k < 1 or top_k > limit:
        raise ValueError(
            f"top_k: must lie in [1, {limit}] (the explanation keeps {kept} of {num_classes} classes, "
            f"and the target is not its own competitor), got {top_k}; pick a top_k in that range, or "
            "run explain with more classes kept")
    return int(top_k)


def _is_traced(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def _check_target(target: Any, classes: jnp.ndarray, batched: bool) -> jnp.ndarray | None:
    """``target`` as an int32 array ([] or [B]); checked against ``classes`` when both are concrete."""
    if target is None:
        return None
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"target: expected a class id (int), got bool {target!r}")
    arr = target if _is_traced(target) else np.asarray(target)
    if not jnp.issubdtype(arr.dtype, jnp.integer):
        raise TypeError(f"target: expected an integer class id, got dtype {arr.dtype} ({target!r}); "
                        "pass an int such as 281")
    if batched:
        batch = classes.shape[0]
        if arr.ndim not in (0, 1) or (arr.ndim == 1 and arr.shape[0] != batch):
            raise ValueError(f"target: for a stack of {batch} explanations expected None, an int or an "
                             f"int array [{batch}], got shape {arr.shape}")
    elif arr.ndim != 0:
        raise ValueError(f"target: expected one class id for one explanation, got shape {arr.shape}; "
                         "for several targets, stack the explanations")
    if not (_is_traced(arr) or _is_traced(classes)):
        cls = np.asarray(classes).reshape(-1, classes.shape[-1])
        ids = np.broadcast_to(np.asarray(arr).reshape(-1), (cls.shape[0],))
        for i, (row, t) in enumerate(zip(cls, ids)):
            if t not in row:
                where = f" (explanation {i} of the stack)" if batched else ""
                raise ValueError(
                    f"target: class {int(t)} is not among the explanation's classes{where}: "
                    f"{row.tolist()}; pass one of them, or run explain with classes=None or including it")
    arr = jnp.asarray(arr, jnp.int32)
    return jnp.broadcast_to(arr, classes.shape[:1]) if batched else arr
