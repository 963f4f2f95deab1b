"""Our metric, after Kang et al. (METHOD.md §4), plus deletion/insertion curves: maps in, numbers out.

The paper's own metric is not available to us; these are our definitions, to be reported as "our metric,
after Kang et al.". For an image x with target t (the true label), competitor c (the most probable
class other than t: the wrong prediction when the model errs) and, per method, three maps
(:class:`MethodMaps`):

- removal gain: remove (fill) the top q % pixels of the method's U_t and report
  ``p(t|x₋) − p(t|x)`` and the change of log-odds ``log2 odds(p'(t|x₋)) − log2 odds(p'(t|x))`` with the
  Laplace correction of :mod:`undesirable_jax.evidence` (so it reads in the bits of the evidence maps).
- correction: remove the top q % of ``max(U_t, U_c)`` (the pixel-wise union of the two maps, so the
  removed area stays q %) and record whether the top-1 class becomes the true label. The summary
  reports its rate on the misclassified images.
- non-target suppression: ``p(c|x) − p(c|x₋)`` after removing the top q % of U_c.
- deletion / insertion: the positive evidence for t, ranked; p(t) after removing the top fraction f
  (deletion, from the image) or after putting the top fraction f back onto the fill (insertion, from
  the fully filled image), f = 0, 1/steps, …, 1, and the areas under these curves (trapezoid in f).

Everything is one jitted call, vectorised over images, methods and thresholds (:func:`evaluate_maps`,
for maps and fills given by the caller).

The runner scores with the second half of this module instead: :func:`rankings` orders every pixel of
each method's signed map (ties broken at random by key, values within the tolerance of 0 counted as 0:
:mod:`.ranking`), and :func:`score_rankings` removes pixels with a scoring perturbation drawn from
keys the maps were not built with, scoring two things apart: **U_t on its own support** (its first
|U_t| pixels, the curve over fractions of |U_t|; at q % beyond |U_t|, all of U_t) and **−R_t, the full
signed order** (undesirable-first and least-undesirable-first over the whole image, the area between
them); plus correction and margin suppression for U_t, the full order, U_c and their rank-normalised
union. :func:`score_own` scores the full order under a method's own fills.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from .. import checks
from ..classifiers import Classifier, as_classifier
from ..evidence import laplace, log_odds
from .ranking import pixel_ranks, rank_pixels
from .removal import mixture_probs, perturbed_probs, pixel_counts, ranks

DEFAULT_PERCENTS = (1.0, 5.0, 10.0, 20.0)


@struct.dataclass
class MethodMaps:
    """One method's maps for one image (or a stack: leading axes on every field), all ``[..., H, W]``.

    ``support``: positive evidence for the target (deletion/insertion ranking). ``undesirable``: the
    method's U_t (removal gain). ``competitor``: its U_c for the competitor c (suppression); the
    correction metric uses ``max(undesirable, competitor)``.
    """

    support: jnp.ndarray
    undesirable: jnp.ndarray
    competitor: jnp.ndarray


@struct.dataclass
class MapMetrics:
    """Results of :func:`evaluate_maps` for N images, M methods, Q thresholds, F curve points.

    ``p_target``, ``p_competitor`` [N]: on the untouched image; ``prediction`` [N]: its top-1 class.
    ``removal_p`` [N, M, Q]: p(t) after removal; ``removal_gain`` and ``log_odds_gain`` [N, M, Q].
    ``suppression`` [N, M, Q]. ``corrected`` [N, M, Q] bool. ``fractions`` [F];
    ``deletion``, ``insertion`` [N, M, F]: p(t) along the curves; ``deletion_auc``, ``insertion_auc`` [N, M].
    """

    p_target: jnp.ndarray
    p_competitor: jnp.ndarray
    prediction: jnp.ndarray
    removal_p: jnp.ndarray
    removal_gain: jnp.ndarray
    log_odds_gain: jnp.ndarray
    suppression: jnp.ndarray
    corrected: jnp.ndarray
    fractions: jnp.ndarray
    deletion: jnp.ndarray
    insertion: jnp.ndarray
    deletion_auc: jnp.ndarray
    insertion_auc: jnp.ndarray


def evaluate_maps(
    classifier: Any,
    images: Any,
    maps: MethodMaps,
    targets: Any,
    competitors: Any,
    labels: Any,
    fills: Any,
    *,
    percents: Sequence[float] = DEFAULT_PERCENTS,
    curve_steps: int = 10,
    laplace_n: float = 100_000,
    batch_size: int = 64,
) -> MapMetrics:
    """All metrics of the module docstring for a batch of images and methods.

    Args:
      classifier: a callable ``images -> logits`` or a :class:`~undesirable_jax.Classifier`.
      images: ``[N, H, W, C]`` model inputs.
      maps: :class:`MethodMaps` with fields ``[N, M, H, W]`` (M methods), finite.
      targets, competitors, labels: int ``[N]``: t, c and the true label of each image.
      fills: ``[N, S, H, W, C]``: S fill images per image (e.g. from ``removal.fill_image``); every
        probability after removal is the mean over the S fills.
      percents: the thresholds q in percent of the image's pixels, each in (0, 100].
      curve_steps: deletion/insertion points besides f = 0.
      laplace_n: N of the Laplace correction used for the log-odds (as in the evidence maps).
      batch_size: images per classifier call.
    """
    clf = as_classifier(classifier)
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"images: expected [N, H, W, C], got shape {images.shape}")
    n, h, w, _ = images.shape
    if not isinstance(maps, MethodMaps):
        raise TypeError(f"maps: expected MethodMaps with fields [N, M, H, W], got {type(maps).__name__}")
    for name in ("support", "undesirable", "competitor"):
        arr = getattr(maps, name)
        if arr.ndim != 4 or arr.shape[0] != n or arr.shape[2:] != (h, w):
            raise ValueError(f"maps.{name}: expected [N={n}, M, {h}, {w}], got shape {arr.shape}")
        if not bool(jnp.all(jnp.isfinite(arr))):
            raise ValueError(f"maps.{name}: contains NaN or inf; every map must be finite to be ranked")
    if not (maps.support.shape == maps.undesirable.shape == maps.competitor.shape):
        raise ValueError("maps: support, undesirable and competitor must have the same shape [N, M, H, W]")
    fills = jnp.asarray(fills, jnp.float32)
    if fills.ndim != 5 or fills.shape[0] != n or fills.shape[2:] != images.shape[1:]:
        raise ValueError(f"fills: expected [N={n}, S, {h}, {w}, {images.shape[-1]}], got shape {fills.shape}")
    pct = np.asarray(percents, dtype=np.float64)
    if pct.ndim != 1 or pct.size == 0 or np.any(~np.isfinite(pct)) or np.any(pct <= 0) or np.any(pct > 100):
        raise ValueError(f"percents: expected a non-empty list of percentages in (0, 100], got {percents!r}")
    checks.positive_int("curve_steps", curve_steps)
    ids = [jnp.asarray(a, jnp.int32).reshape(-1) for a in (targets, competitors, labels)]
    for name, a in zip(("targets", "competitors", "labels"), ids):
        if a.shape != (n,):
            raise ValueError(f"{name}: expected one class id per image [{n}], got shape {a.shape}")
    return _evaluate(clf, images, maps, *ids, fills, jnp.asarray(pct, jnp.float32),
                     curve_steps=int(curve_steps), laplace_n=float(laplace_n), batch_size=int(batch_size))


@functools.partial(jax.jit, static_argnames=("curve_steps", "laplace_n", "batch_size"))
def _evaluate(clf: Classifier, images, maps, targets, competitors, labels, fills, percents, *,
              curve_steps: int, laplace_n: float, batch_size: int) -> MapMetrics:
    n, h, w, _ = images.shape
    m = maps.undesirable.shape[1]
    rows = jnp.arange(n)
    base = clf.probs(images)
    num_classes = base.shape[-1]
    p_t, p_c = base[rows, targets], base[rows, competitors]
    image_s = jnp.broadcast_to(images[:, None], fills.shape)

    # Removal at the q thresholds: U_t, U_c and their union in one pass of the classifier.
    union = jnp.maximum(maps.undesirable, maps.competitor)
    r = ranks(jnp.concatenate([maps.undesirable, maps.competitor, union], axis=1))
    after = mixture_probs(clf, image_s, fills, r, pixel_counts(percents, h * w), batch_size)  # [N, 3M, Q, K]
    after_t = after[:, :m][rows, :, :, targets]        # [N, M, Q]: p(t) after removing U_t
    after_c = after[:, m:2 * m][rows, :, :, competitors]
    corrected = jnp.argmax(after[:, 2 * m:], axis=-1) == labels[:, None, None]

    def lo(p):
        return log_odds(laplace(p, laplace_n, num_classes))

    # Deletion and insertion curves over the support map.
    fractions = jnp.linspace(0.0, 1.0, curve_steps + 1)
    counts = pixel_counts(100.0 * fractions, h * w)
    rs = ranks(maps.support)
    deletion = mixture_probs(clf, image_s, fills, rs, counts, batch_size)[rows, :, :, targets]
    insertion = mixture_probs(clf, fills, image_s, rs, counts, batch_size)[rows, :, :, targets]

    return MapMetrics(
        p_target=p_t,
        p_competitor=p_c,
        prediction=jnp.argmax(base, axis=-1).astype(jnp.int32),
        removal_p=after_t,
        removal_gain=after_t - p_t[:, None, None],
        log_odds_gain=lo(after_t) - lo(p_t)[:, None, None],
        suppression=p_c[:, None, None] - after_c,
        corrected=corrected,
        fractions=fractions,
        deletion=deletion,
        insertion=insertion,
        deletion_auc=jnp.trapezoid(deletion, fractions, axis=-1),
        insertion_auc=jnp.trapezoid(insertion, fractions, axis=-1),
    )


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
