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

Everything is one jitted call, vectorised over images, methods and thresholds.
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
from .removal import mixture_probs, pixel_counts, ranks

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
