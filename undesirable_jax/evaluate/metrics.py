"""Our metric, after Kang et al. (METHOD.md §4): signed maps in, removal scores out.

The paper's own metric is not available to us; these are our definitions, to be reported as "our metric,
after Kang et al.". For an image x with target t (the true label) and competitor c (the most probable
class other than t: the wrong prediction when the model errs):

- :func:`rankings` orders every pixel of each method's signed map (ties broken at random by key, values
  within the tolerance of 0 counted as 0: :mod:`.ranking`), each competitor map and their
  rank-normalised union.
- :func:`score_rankings` removes pixels with a scoring perturbation drawn from keys the maps were not
  built with, scoring two things apart: **U_t on its own support** (its first |U_t| pixels, the curve
  over fractions of |U_t|; at q % beyond |U_t|, all of U_t) and **−R_t, the full signed order**
  (undesirable-first and least-undesirable-first over the whole image, the area between them); gains
  in probability and in log2-odds (Laplace correction of :mod:`undesirable_jax.evidence`, so they read
  in the bits of the evidence maps); plus correction and margin suppression (log2 p(t) − log2 p(c))
  for U_t, the full order, U_c and their rank-normalised union.
- :func:`score_own` scores the full order under a method's own construction fills.

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


def support_places(places_ut: Any, positive: int, curve_steps: int) -> np.ndarray:
    """Places ``[H·W]`` that remove U_t's own support step by step: at curve step k (k = 0..curve_steps)
    exactly the first ``round(k / curve_steps · positive)`` pixels of the U_t order ``places_ut``.

    Pixel i is removed at step k iff ``out[i] < k + 1`` (so :func:`.removal.perturbed_probs` with counts
    ``1..curve_steps + 1`` gives the whole curve for every method at once, whatever each one's
    ``positive``): ``out[i]`` is the first k whose count exceeds ``places_ut[i]`` (``curve_steps + 1``
    for pixels outside the support). Counts are rounded half to even, as :func:`.removal.pixel_counts`.
    """
    thresholds = np.round(np.arange(curve_steps + 1) * positive / curve_steps)
    return np.searchsorted(thresholds, np.asarray(places_ut), side="right").astype(np.int32)


def score_rankings(classifier: Classifier, image: jnp.ndarray, places: dict, target: int, competitor: int,
                   label: int, percents: Sequence[float], curve_steps: int, perturbation: Any,
                   keys: jax.Array, *, positives: dict[str, int], laplace_n: float,
                   batch_size: int) -> dict[str, dict]:
    """Score every method's rankings under one perturbation with the draws ``keys [D]``.

    Two things are scored per method, and kept apart (see :func:`_method_record` for the fields):

    - **−R_t, the full signed order** (``places[m]["ut"]`` continues past U_t through the zero level
      into the supporting pixels): p(t) removing undesirable-first (MoRF) and least-undesirable-first
      (LeRF) at ``percents`` and at the curve fractions f = 0, 1/curve_steps, …, 1 of the image, their
      gains, the area between the two curves.
    - **U_t on its own support** (its first ``positives[m]`` pixels, :func:`.ranking.positive_count`):
      p(t) after removing the top q % of the image *within* U_t — where q % exceeds U_t, all of U_t
      (the gain at the positive-set size; ``ut_within`` says where) — and the curve over fractions
      f of U_t's own size. Correction and margin suppression of the ``ut`` ranking use the same capped
      removal; the full order's are under ``signed``; the other rankings (``uc``…, ``union``) remove
      the top q % of the whole image. ``places``: from :func:`rankings`.
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
    support = jnp.asarray(np.stack([support_places(places[n]["ut"], int(positives[n]), curve_steps) for n in names]))
    probs_sup = np.asarray(perturbed_probs(classifier, image, support, jnp.arange(1, curve_steps + 2, dtype=jnp.int32),
                                           keys, perturbation=perturbation, batch_size=batch_size))
    labels = [(n, lab) for n in names for lab in places[n] if lab != "ut"]
    others = jnp.stack([places[n][lab] for n, lab in labels])
    probs_other = np.asarray(perturbed_probs(classifier, image, others, jnp.asarray(counts_q), keys,
                                             perturbation=perturbation, batch_size=batch_size))
    base = np.asarray(image_probs(classifier, image))
    scorer = _Scorer(base, target, competitor, label, laplace_n, fractions)
    out = {}
    for i, n in enumerate(names):
        within = counts_q <= int(positives[n])
        rec = _method_record(scorer, probs_ut[2 * i], probs_ut[2 * i + 1], probs_sup[i], within, int(positives[n]))
        for j, (m_name, lab) in enumerate(labels):
            if m_name == n:
                rec["corrected"][lab] = scorer.corrected(probs_other[j])
                rec["margin_gain"][lab] = scorer.margin(probs_other[j])
        out[n] = rec
    return out


class _Scorer:
    """Turns probability rows ``[..., K]`` of one image into its scores (target, competitor, label fixed)."""

    def __init__(self, base: np.ndarray, target: int, competitor: int, label: int, laplace_n: float,
                 fractions: np.ndarray):
        self.base, self.t, self.c, self.label, self.n, self.fractions = base, target, competitor, label, laplace_n, fractions
        self.k = base.shape[0]
        self.margin0 = self.bits(base[target]) - self.bits(base[competitor])

    def bits(self, p: Any) -> np.ndarray:
        return _bits(p, self.n, self.k)

    def log_odds(self, p: Any) -> np.ndarray:
        return np.asarray(log_odds(laplace(jnp.asarray(p), self.n, self.k)))

    def gains(self, p: np.ndarray) -> tuple[list, list]:
        """Δp(t) and Δlog2-odds(t) of rows ``p [Q, K]`` against the untouched image."""
        return ((p[:, self.t] - self.base[self.t]).tolist(),
                (self.log_odds(p[:, self.t]) - self.log_odds(self.base[self.t])).tolist())

    def corrected(self, p: np.ndarray) -> list:
        return (p.argmax(-1) == self.label).tolist()

    def margin(self, p: np.ndarray) -> list:
        return (self.bits(p[:, self.t]) - self.bits(p[:, self.c]) - self.margin0).tolist()


def _method_record(sc: _Scorer, morf: np.ndarray, lerf: np.ndarray, sup: np.ndarray, within: np.ndarray,
                   positive: int) -> dict:
    """One method's scores from its full-order MoRF/LeRF rows ``[Q + F, K]`` and U_t-curve rows ``[F, K]``.

    Full signed order: ``morf_p``, ``lerf_p``, ``removal_gain``, ``log_odds_gain``, ``lerf_gain``
    ``[Q]``; ``curve_morf``, ``curve_lerf`` ``[F]`` (fractions of the image); ``area_between``.
    U_t own support: ``positive`` (its size in pixels); ``ut_within`` ``[Q]`` (q % of the image fits
    in U_t); ``ut_gain``, ``ut_log_odds_gain`` ``[Q]`` (the top q % within U_t, all of U_t beyond);
    ``ut_curve`` ``[F]``: p(t) after removing the fraction f of U_t; ``ut_area``: the trapezoid mean of
    its gain over f (0 for an empty U_t). ``corrected``/``margin_gain``: ``ut`` (capped like
    ``ut_gain``) and ``signed`` (the full order).
    """
    q, t = within.shape[0], sc.t
    ut_rows = np.where(within[:, None], morf[:q], sup[-1][None])      # the same pixels where q fits in U_t
    curve_m, curve_l = morf[q:, t], lerf[q:, t]
    gain, lo_gain = sc.gains(morf[:q])
    ut_gain, ut_lo_gain = sc.gains(ut_rows)
    return {"morf_p": morf[:q, t].tolist(), "lerf_p": lerf[:q, t].tolist(),
            "removal_gain": gain, "log_odds_gain": lo_gain, "lerf_gain": (lerf[:q, t] - sc.base[t]).tolist(),
            "curve_morf": curve_m.tolist(), "curve_lerf": curve_l.tolist(),
            "area_between": float(np.trapezoid(curve_m - curve_l, sc.fractions)),
            "positive": int(positive), "ut_within": within.tolist(), "ut_gain": ut_gain,
            "ut_log_odds_gain": ut_lo_gain, "ut_curve": sup[:, t].tolist(),
            "ut_area": float(np.trapezoid(sup[:, t] - sc.base[t], sc.fractions)),
            "corrected": {"ut": sc.corrected(ut_rows), "signed": sc.corrected(morf[:q])},
            "margin_gain": {"ut": sc.margin(ut_rows), "signed": sc.margin(morf[:q])}}


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
