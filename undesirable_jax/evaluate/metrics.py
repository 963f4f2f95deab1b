"""Our metric, after Kang et al. (METHOD.md §4): signed maps in, removal scores out.

The paper's own metric is not available to us; these are our definitions, to be reported as "our metric,
after Kang et al.". For an image x with target t (the true label) and competitor c (the most probable
class other than t: the wrong prediction when the model errs):

- :func:`rankings` orders every pixel of each method's signed map (exact ties broken at random by a
  key, so the order continues past U_t > 0), plus each competitor map and the rank-normalised union.
- :func:`score_rankings` removes pixels with a scoring perturbation drawn from keys the maps were not
  built with: p(t) undesirable-first (MoRF on U_t) and least-undesirable-first (LeRF), their gains in
  probability and in log2-odds (Laplace correction of :mod:`undesirable_jax.evidence`, so they read in
  the bits of the evidence maps), the area between the two curves, and for U_t, U_c and their union
  whether the top-1 class becomes the true label (correction) and the change of the margin
  log2 p(t) − log2 p(c) (suppression).
- :func:`score_own` scores U_t a second time under a method's own construction fills.

:class:`MethodMaps` is the three non-negative maps of one method (support, U_t, U_c), as the
baselines' :func:`~undesirable_jax.evaluate.baselines.signed_maps` and ``random_maps`` return them.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from ..classifiers import Classifier
from ..evidence import laplace, log_odds
from .ranking import pixel_ranks, rank_pixels
from .removal import mixture_probs, perturbed_probs, pixel_counts

DEFAULT_PERCENTS = (1.0, 5.0, 10.0, 20.0)


@struct.dataclass
class MethodMaps:
    """One method's maps for one image (or a stack: leading axes on every field), all ``[..., H, W]``.

    ``support``: positive evidence for the target. ``undesirable``: the method's U_t, evidence against
    the target. ``competitor``: its U_c, evidence for the competitor c.
    """

    support: jnp.ndarray
    undesirable: jnp.ndarray
    competitor: jnp.ndarray


# ------------------------------------------------------------------ independent scoring of signed maps


def rankings(maps: dict, key: jax.Array) -> dict[str, dict[str, jnp.ndarray]]:
    """Per method, each ranking's pixel places ``[H·W]`` (0 = removed first), ties broken by ``key``.

    ``maps``: method name → :class:`~.methods.SignedMaps`. Rankings: ``"ut"`` (descending ``against``),
    each competitor map by its label, and ``"union"``: the pixel-wise max of the rank-normalised
    ``against`` and ``"uc"`` maps (each pixel's rank turned into a percentile in [0, 1]).
    Method i uses ``fold_in(key, i)``; ranking r of it ``fold_in(·, r)``.
    """
    out = {}
    for i, (name, m) in enumerate(maps.items()):
        labels = list(m.competitors)
        places = _method_places(m.against, tuple(m.competitors[lab] for lab in labels), jax.random.fold_in(key, i))
        out[name] = dict(zip(["ut", *labels, "union"], places))
    return out


@jax.jit
def _method_places(against: jnp.ndarray, competitors: tuple, key: jax.Array) -> list[jnp.ndarray]:
    """Places of ``against``, each competitor map (``competitors[0]`` is U_c) and their union."""
    places = [pixel_ranks(rank_pixels(against, jax.random.fold_in(key, 0)))]
    places += [pixel_ranks(rank_pixels(c, jax.random.fold_in(key, r))) for r, c in enumerate(competitors, start=1)]
    size = places[0].shape[0]
    pct_t, pct_c = (1.0 - p.astype(jnp.float32) / max(size - 1, 1) for p in places[:2])
    union = jnp.maximum(pct_t, pct_c).reshape(against.shape)
    return places + [pixel_ranks(rank_pixels(union, jax.random.fold_in(key, len(competitors) + 1)))]


def _bits(p: jnp.ndarray, laplace_n: float, num_classes: int) -> np.ndarray:
    """log2 of Laplace-corrected probabilities (finite for p = 0)."""
    return np.log2(np.asarray(laplace(jnp.asarray(p), laplace_n, num_classes)))


def score_rankings(classifier: Classifier, image: jnp.ndarray, places: dict, target: int, competitor: int,
                   label: int, percents: Sequence[float], curve_steps: int, perturbation: Any,
                   keys: jax.Array, *, laplace_n: float, batch_size: int) -> dict[str, dict]:
    """Score every method's rankings under one perturbation with the draws ``keys [D]``.

    Per method, at the thresholds ``percents`` and the curve fractions f = 0, 1/curve_steps, …, 1:
    p(t) removing undesirable-first (MoRF on U_t) and least-undesirable-first (LeRF), their gains, the
    area between the two curves, and, for each ranking (``ut``, ``uc``…, ``union``), whether the top-1
    class becomes ``label`` and the change of the margin log2 p(t) − log2 p(c) in bits (positive: c
    suppressed against t). ``places``: from :func:`rankings`.
    """
    h, w, _ = image.shape
    p_all = h * w
    counts_q = np.asarray(pixel_counts(percents, p_all))
    fractions = np.linspace(0.0, 1.0, curve_steps + 1)
    counts_qf = jnp.asarray(np.concatenate([counts_q, np.asarray(pixel_counts(100.0 * fractions, p_all))]))
    names = list(places)
    orders = jnp.stack([x for n in names for x in (places[n]["ut"], p_all - 1 - places[n]["ut"])])
    probs_ut = np.asarray(perturbed_probs(classifier, image, orders, counts_qf, keys,
                                          perturbation=perturbation, batch_size=batch_size))
    labels = [(n, lab) for n in names for lab in places[n] if lab != "ut"]
    others = jnp.stack([places[n][lab] for n, lab in labels])
    probs_other = np.asarray(perturbed_probs(classifier, image, others, jnp.asarray(counts_q), keys,
                                             perturbation=perturbation, batch_size=batch_size))
    base = np.asarray(image_probs(classifier, image))
    k, q = base.shape[0], len(counts_q)
    margin0 = _bits(base[target], laplace_n, k) - _bits(base[competitor], laplace_n, k)

    def margin(p):
        return (_bits(p[:, target], laplace_n, k) - _bits(p[:, competitor], laplace_n, k) - margin0).tolist()

    lo = lambda p: np.asarray(log_odds(laplace(jnp.asarray(p), laplace_n, k)))  # noqa: E731
    out = {}
    for i, n in enumerate(names):
        morf, lerf = probs_ut[2 * i], probs_ut[2 * i + 1]
        curve_m, curve_l = morf[q:, target], lerf[q:, target]
        rec = {"morf_p": morf[:q, target].tolist(), "lerf_p": lerf[:q, target].tolist(),
               "removal_gain": (morf[:q, target] - base[target]).tolist(),
               "log_odds_gain": (lo(morf[:q, target]) - lo(base[target])).tolist(),
               "lerf_gain": (lerf[:q, target] - base[target]).tolist(),
               "curve_morf": curve_m.tolist(), "curve_lerf": curve_l.tolist(),
               "area_between": float(np.trapezoid(curve_m - curve_l, fractions)),
               "corrected": {"ut": (morf[:q].argmax(-1) == label).tolist()},
               "margin_gain": {"ut": margin(morf[:q])}}
        for j, (m_name, lab) in enumerate(labels):
            if m_name == n:
                rec["corrected"][lab] = (probs_other[j].argmax(-1) == label).tolist()
                rec["margin_gain"][lab] = margin(probs_other[j])
        out[n] = rec
    return out


def score_own(classifier: Classifier, image: jnp.ndarray, places_ut: jnp.ndarray, fills: jnp.ndarray,
              target: int, percents: Sequence[float], *, batch_size: int) -> np.ndarray:
    """Removal gain Δp(t) ``[Q]`` of one U_t ranking ``places_ut [H·W]`` under the fills ``[S, H, W, C]``.

    The "own construction perturbation" score: the top ``percents`` of U_t take the fill's pixels (a
    sampler's or a constant's, as the method was built), averaged over the S fills.
    """
    h, w, _ = image.shape
    fills = jnp.asarray(fills, jnp.float32)[None]
    keep = jnp.broadcast_to(image[None, None], fills.shape)
    counts = pixel_counts(percents, h * w)
    after = _mixture(classifier, keep, fills, places_ut[None, None], counts, batch_size=batch_size)[0, 0, :, target]
    return np.asarray(after - image_probs(classifier, image)[target])


@jax.jit
def image_probs(classifier: Classifier, image: jnp.ndarray) -> jnp.ndarray:
    """Class probabilities ``[K]`` of one image ``[H, W, C]`` (jitted: eager Flax calls are slow)."""
    return classifier.probs(image[None])[0]


@functools.partial(jax.jit, static_argnames=("batch_size",))
def _mixture(classifier, keep, put, places, counts, *, batch_size):
    return mixture_probs(classifier, keep, put, places, counts, batch_size)
