"""Paired statistics over source images (clusters): bootstrap intervals, Wilcoxon p, d_z, Holm, tables.

Every comparison is *paired*: two methods are scored on the same images, and the statistic is the
per-image difference ``d_i = score_a(i) − score_b(i)``. Scores may carry a seed axis
(``[seeds, n_images]``): each method's score is first averaged over its seeds per image (seeds only
reduce the noise of each image's score).

**The unit is the cluster** (the source image: a digit and its corrupted copies, a photograph and
its pasted variants). Copies of one source are not independent, so the per-image differences are
first averaged within each cluster, and every statistic runs over the cluster means
(:func:`paired`): the mean of the cluster means, a cluster bootstrap interval (clusters resampled with
replacement), Wilcoxon signed-rank p on the cluster means, and the effect size
``d_z = mean / SD (ddof = 1)`` of the cluster means. Without clusters every image is its own cluster.
Pairs where either side is not finite are dropped before clustering, and each row reports both n
(images, clusters) it used.

- :func:`paired`: one comparison → :class:`Paired` (``mean, ci_low, ci_high, p, d_z, n_images, n_clusters``).
- :func:`cluster_means`: per-cluster means of per-image values (clusters in sorted id order).
- :func:`paired_bootstrap_ci`: percentile bootstrap interval of the mean of independent units.
- :func:`wilcoxon_p`: two-sided Wilcoxon signed-rank p (``scipy.stats.wilcoxon``; zero differences
  dropped, "wilcox" rule); all differences zero gives p = 1 (no evidence of a difference).
- :func:`effect_size_dz`: ``d_z`` of unit differences (NaN when SD = 0 or fewer than two units).
- :func:`holm`: Holm–Bonferroni adjusted p-values (step-down; controls the family-wise error).
- :func:`paired_table`: every method against every other and against the nulls; Holm over a declared
  family of rows only, the other rows keep their raw p and are marked as outside the family.
- :func:`confidence_bins`: images split by the model's p(t) (< 0.9, 0.9–0.999, ≥ 0.999).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Collection, Mapping, Sequence

import jax
import numpy as np
import scipy.stats

from .. import checks

CONFIDENCE_EDGES = (0.9, 0.999)


@dataclasses.dataclass(frozen=True)
class Paired:
    """One paired comparison over clusters (see the module docstring).

    ``mean``: mean over clusters of the cluster-mean differences ``a − b``; ``ci_low``, ``ci_high``: its
    cluster bootstrap percentile interval; ``p``: two-sided Wilcoxon signed-rank p on the cluster
    means; ``d_z``: ``mean`` ÷ the SD (ddof = 1) of the cluster means (NaN when that SD is 0 or there
    are fewer than two clusters); ``n_images``, ``n_clusters``: the finite pairs and their clusters.
    """

    mean: float
    ci_low: float
    ci_high: float
    p: float
    d_z: float
    n_images: int
    n_clusters: int


@dataclasses.dataclass(frozen=True)
class PairedRow:
    """One table row: :class:`Paired` of ``a − b`` plus the Holm p within the declared family.

    ``in_family``: whether the row belongs to the Holm family; outside it ``p_holm`` is NaN and only
    the raw ``p`` is reported.
    """

    a: str
    b: str
    mean: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float
    d_z: float
    n_images: int
    n_clusters: int
    in_family: bool


def _rng(key_or_seed: Any) -> np.random.Generator:
    if isinstance(key_or_seed, (int, np.integer)) and not isinstance(key_or_seed, bool):
        return np.random.default_rng(int(key_or_seed))
    if isinstance(key_or_seed, (list, tuple)) and all(isinstance(v, (int, np.integer)) for v in key_or_seed):
        return np.random.default_rng([int(v) for v in key_or_seed])
    if isinstance(key_or_seed, jax.Array) and jax.dtypes.issubdtype(key_or_seed.dtype, jax.dtypes.prng_key):
        return np.random.default_rng(np.asarray(jax.random.key_data(key_or_seed)).ravel().tolist())
    raise TypeError(f"key_or_seed: expected an int seed, a tuple of ints or a jax.random.key, "
                    f"got {type(key_or_seed).__name__}")


def _diffs(diffs: Any) -> np.ndarray:
    d = np.asarray(diffs, np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"diffs: expected a non-empty 1-D array of per-unit differences, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("diffs: contains NaN or inf; drop those images first (paired_table does)")
    return d


def paired_bootstrap_ci(diffs: Any, key_or_seed: Any, n_boot: int = 10_000,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the mean of ``diffs`` ``[n]`` (independent units).

    ``n_boot`` resamples of the n units with replacement (:func:`paired` passes cluster means, so this
    is the cluster bootstrap), drawn from ``key_or_seed`` (an int, a tuple of ints or a
    ``jax.random.key``; the same seed gives the same interval) as
    ``np.random.default_rng(seed).integers(0, n, (block, n))`` in blocks of ``max(1, 2_000_000 // n)``
    resamples; the interval is ``np.quantile`` (linear) at ``(1 − level)/2`` and ``(1 + level)/2`` of
    the resampled means.
    """
    d = _diffs(diffs)
    checks.positive_int("n_boot", n_boot, maximum=None)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level: expected a probability in (0, 1), got {level!r}")
    rng = _rng(key_or_seed)
    means = np.empty(n_boot)
    step = max(1, 2_000_000 // d.size)                   # bound the index block's memory
    for s in range(0, n_boot, step):
        idx = rng.integers(0, d.size, (min(step, n_boot - s), d.size))
        means[s:s + idx.shape[0]] = d[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return float(lo), float(hi)


def wilcoxon_p(diffs: Any) -> float:
    """Two-sided Wilcoxon signed-rank p of ``diffs`` ``[n]``; 1.0 when every difference is zero."""
    d = _diffs(diffs)
    if not np.any(d != 0.0):
        return 1.0
    return float(scipy.stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, in the input's order.

    Sorted ascending, ``p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j))`` (1-based ``j``); rejecting
    where ``p̃ ≤ α`` controls the family-wise error at ``α``.
    """
    p = np.asarray(pvalues, np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues: expected a 1-D sequence, got shape {p.shape}")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("pvalues: expected values in [0, 1]")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def seed_mean(scores: Any, name: str = "scores") -> np.ndarray:
    """Per-image scores ``[n]`` from ``[n]`` or ``[seeds, n]`` (mean over the seed axis)."""
    s = np.asarray(scores, np.float64)
    if s.ndim == 2:
        return s.mean(axis=0)
    if s.ndim != 1:
        raise ValueError(f"{name}: expected [n_images] or [seeds, n_images], got shape {s.shape}")
    return s


def cluster_ids(clusters: Any, n: int) -> np.ndarray:
    """Cluster ids ``[n]`` as a 1-D array; None → every image its own cluster (``0..n-1``)."""
    if clusters is None:
        return np.arange(n)
    c = np.asarray(clusters)
    if c.shape != (n,):
        raise ValueError(f"clusters: expected one cluster id per image [{n}], got shape {c.shape}")
    return c


def cluster_means(values: Any, clusters: Any = None) -> np.ndarray:
    """Mean of ``values`` ``[n]`` within each cluster, clusters in sorted id order (``np.unique``)."""
    v = np.asarray(values, np.float64)
    c = cluster_ids(clusters, v.shape[0] if v.ndim == 1 else -1)
    _, inverse = np.unique(c, return_inverse=True)
    inverse = inverse.reshape(-1)
    return np.bincount(inverse, weights=v) / np.bincount(inverse)


def effect_size_dz(diffs: Any) -> float:
    """``mean / SD`` (ddof = 1) of unit differences ``[n]``; NaN when SD = 0 or n < 2 (undefined)."""
    d = _diffs(diffs)
    if d.size < 2:
        return float("nan")
    sd = float(d.std(ddof=1))
    return float(d.mean()) / sd if sd > 0 else float("nan")


def paired(a: Any, b: Any, *, clusters: Any = None, key: Any, n_boot: int = 10_000,
           level: float = 0.95) -> Paired:
    """Paired comparison of per-image scores ``a``, ``b`` (``[n]`` or ``[seeds, n]``) over clusters.

    Seeds are averaged per image; pairs where either side is not finite are dropped; the remaining
    differences are averaged within each cluster (``clusters`` ``[n]``: any hashable-sortable ids; None:
    each image is its own cluster); then the mean, :func:`paired_bootstrap_ci` (``key``: an int, a
    tuple of ints or a ``jax.random.key``), :func:`wilcoxon_p` and :func:`effect_size_dz` run on the
    cluster means. No finite pair: every statistic NaN and both n 0.
    """
    sa, sb = seed_mean(a, "a"), seed_mean(b, "b")
    if sa.shape != sb.shape:
        raise ValueError(f"a, b: expected the same images, got {sa.shape} and {sb.shape} after averaging seeds")
    c = cluster_ids(clusters, sa.shape[0])
    d = sa - sb
    ok = np.isfinite(d)
    if not ok.any():
        nan = float("nan")
        return Paired(nan, nan, nan, nan, nan, 0, 0)
    means = cluster_means(d[ok], c[ok])
    lo, hi = paired_bootstrap_ci(means, key, n_boot, level)
    return Paired(float(means.mean()), lo, hi, wilcoxon_p(means), effect_size_dz(means), int(ok.sum()),
                  int(means.size))


def paired_row(a: str, b: str, sa: Any, sb: Any, key_or_seed: Any, *, clusters: Any = None,
               n_boot: int = 10_000, level: float = 0.95) -> PairedRow:
    """One row outside any Holm family (``p_holm`` NaN) for the scores ``sa``, ``sb`` (see :func:`paired`)."""
    r = paired(sa, sb, clusters=clusters, key=key_or_seed, n_boot=n_boot, level=level)
    return PairedRow(a, b, r.mean, r.ci_low, r.ci_high, r.p, float("nan"), r.d_z, r.n_images, r.n_clusters, False)


def with_holm(rows: Sequence[PairedRow], family: Collection[tuple[str, str]] | str) -> list[PairedRow]:
    """``rows`` with Holm p over the family: ``"all"`` (every row) or a collection of ``(a, b)`` pairs.

    Rows in the family with a p get ``p_holm`` and ``in_family = True``; the others keep their raw p,
    ``p_holm`` NaN and ``in_family = False``. A pair of the family that matches no row is refused (a
    misspelt family would silently shrink the correction).
    """
    if isinstance(family, str):
        if family != "all":
            raise ValueError(f"family: expected 'all' or a collection of (a, b) pairs, got {family!r}")
        members = {(r.a, r.b) for r in rows}
    else:
        members = {tuple(f) for f in family}
        unknown = members - {(r.a, r.b) for r in rows}
        if unknown:
            raise ValueError(f"family: {sorted(unknown)} match no row of the table; name rows as (a, b)")
    inside = [i for i, r in enumerate(rows) if (r.a, r.b) in members and np.isfinite(r.p)]
    out = [dataclasses.replace(r, p_holm=float("nan"), in_family=False) for r in rows]
    for i, q in zip(inside, holm([rows[i].p for i in inside]) if inside else []):
        out[i] = dataclasses.replace(rows[i], p_holm=float(q), in_family=True)
    return out


def paired_table(scores: Mapping[str, Any], *, family: Collection[tuple[str, str]] | str,
                 nulls: Mapping[str, Any] | None = None, clusters: Any = None, seed: int = 0,
                 n_boot: int = 10_000, level: float = 0.95) -> list[PairedRow]:
    """Every method against every other (``a`` before ``b`` in ``scores``' order) and against each null.

    ``scores``: method name → ``[n_images]`` or ``[seeds, n_images]`` (see the module docstring).
    ``nulls``: name → the same; a ``"zero"`` null (all-zero scores) is always added, so a method's row
    against it tests its mean score against 0; pass the random method here as ``{"random": ...}``.
    ``clusters``: ``[n_images]`` cluster ids shared by every column (None: each image its own).
    ``family``: the comparisons Holm corrects over (:func:`with_holm`; ``"all"`` or ``(a, b)`` pairs).
    Row ``i``'s bootstrap is seeded by ``(seed, i)``.
    """
    if not scores:
        raise ValueError("scores: expected at least one method")
    per = {name: seed_mean(s, name) for name, s in scores.items()}
    n = next(iter(per.values())).shape
    refs = {"zero": np.zeros(n)}
    refs.update({name: seed_mean(s, name) for name, s in (nulls or {}).items()})
    pairs = list(itertools.combinations(per, 2))
    pairs += [(m, r) for m in per for r in refs if r != m]
    both = {**refs, **per}
    rows = [paired_row(a, b, both[a], both[b], (seed, i), clusters=clusters, n_boot=n_boot, level=level)
            for i, (a, b) in enumerate(pairs)]
    return with_holm(rows, family)


def confidence_bins(p_target: Any, edges: Sequence[float] = CONFIDENCE_EDGES) -> dict[str, np.ndarray]:
    """Bool image masks by the model's p(t): ``p < 0.9``, ``0.9 ≤ p < 0.999``, ``p ≥ 0.999`` by default."""
    p = np.asarray(p_target, np.float64)
    e = [float(x) for x in edges]
    if p.ndim != 1 or np.any(~np.isfinite(p)):
        raise ValueError(f"p_target: expected a finite 1-D array, got shape {p.shape}")
    if any(not 0 < x < 1 for x in e) or any(x >= y for x, y in zip(e, e[1:])):
        raise ValueError(f"edges: expected increasing values in (0, 1), got {edges!r}")
    out = {f"p(t) < {e[0]:g}": p < e[0]}
    for lo, hi in zip(e, e[1:]):
        out[f"{lo:g} ≤ p(t) < {hi:g}"] = (p >= lo) & (p < hi)
    out[f"p(t) ≥ {e[-1]:g}"] = p >= e[-1]
    return out


def table_markdown(rows: Sequence[PairedRow], digits: int = 4) -> str:
    """A markdown table of paired rows: ``a − b`` over cluster means, interval, p, Holm p, d_z, both n.

    Rows outside the Holm family show "not in family" in the Holm column.
    """
    head = ("| a | b | mean (a − b) over clusters | cluster bootstrap CI | p (Wilcoxon) | p (Holm) | d_z | "
            "n clusters | n images |\n|---|---|---|---|---|---|---|---|---|")
    f = f"{{:.{digits}g}}"
    lines = [f"| {r.a} | {r.b} | {f.format(r.mean)} | [{f.format(r.ci_low)}, {f.format(r.ci_high)}] | "
             f"{r.p:.3g} | {f'{r.p_holm:.3g}' if r.in_family else 'not in family'} | {r.d_z:.3g} | "
             f"{r.n_clusters} | {r.n_images} |" for r in rows]
    return "\n".join([head, *lines])
