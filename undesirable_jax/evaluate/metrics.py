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
each method's signed map (ties broken at random by key, so the order continues past U_t > 0),
:func:`score_rankings` removes pixels with a scoring perturbation drawn from keys the maps were not
built with (undesirable-first and least-undesirable-first, correction and margin suppression for U_t,
U_c and their rank-normalised union), and :func:`score_own` scores U_t under a method's own fills.
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
