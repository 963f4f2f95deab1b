"""Paired statistics over images: bootstrap intervals, Wilcoxon signed-rank p, Holm correction, tables.

Every comparison is *paired*: two methods are scored on the same images, and the statistic is the
per-image difference ``d_i = score_a(i) − score_b(i)``. Scores may carry a seed axis
(``[seeds, n_images]``): each method's score is first averaged over its seeds per image, and the
paired test then runs across images on those per-image means (images are the independent units;
seeds only reduce the noise of each image's score). Pairs where either side is not finite are
dropped, and each row reports the ``n`` it used.

- :func:`paired_bootstrap_ci`: percentile bootstrap interval of the mean difference (images resampled
  with replacement).
- :func:`wilcoxon_p`: two-sided Wilcoxon signed-rank p (``scipy.stats.wilcoxon``; zero differences
  dropped, "wilcox" rule); all differences zero gives p = 1 (no evidence of a difference).
- :func:`holm`: Holm–Bonferroni adjusted p-values (step-down; controls the family-wise error).
- :func:`paired_table`: every method against every other and against the nulls, Holm over the table.
- :func:`confidence_bins`: images split by the model's p(t) (< 0.9, 0.9–0.999, ≥ 0.999).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Mapping, Sequence

import jax
import numpy as np
import scipy.stats

from .. import checks

CONFIDENCE_EDGES = (0.9, 0.999)


@dataclasses.dataclass(frozen=True)
class PairedRow:
    """One comparison: ``mean`` of ``a − b`` over ``n`` images, its interval, raw and Holm p."""

    a: str
    b: str
    mean: float
    ci_low: float
    ci_high: float
    p: float
    p_holm: float
    n: int


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
        raise ValueError(f"diffs: expected a non-empty 1-D array of per-image differences, got shape {d.shape}")
    if not np.all(np.isfinite(d)):
        raise ValueError("diffs: contains NaN or inf; drop those images first (paired_table does)")
    return d


def paired_bootstrap_ci(diffs: Any, key_or_seed: Any, n_boot: int = 10_000,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval ``(low, high)`` of the mean of ``diffs`` ``[n]``.

    ``n_boot`` resamples of the n images with replacement, drawn from ``key_or_seed`` (an int, a tuple
    of ints or a ``jax.random.key``; the same seed gives the same interval); the interval is the
    ``(1 − level)/2`` and ``(1 + level)/2`` quantiles of the resampled means.
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


def paired_row(a: str, b: str, sa: np.ndarray, sb: np.ndarray, key_or_seed: Any, *,
               n_boot: int = 10_000, level: float = 0.95) -> PairedRow:
    """One uncorrected row (``p_holm`` = ``p``) for per-image scores ``sa``, ``sb`` of equal length."""
    if sa.shape != sb.shape:
        raise ValueError(f"scores of {a!r} and {b!r}: expected one image axis, got {sa.shape} and {sb.shape}")
    d = sa - sb
    d = d[np.isfinite(d)]
    if d.size == 0:
        nan = float("nan")
        return PairedRow(a, b, nan, nan, nan, nan, nan, 0)
    lo, hi = paired_bootstrap_ci(d, key_or_seed, n_boot, level)
    p = wilcoxon_p(d)
    return PairedRow(a, b, float(d.mean()), lo, hi, p, p, int(d.size))


def paired_table(scores: Mapping[str, Any], *, nulls: Mapping[str, Any] | None = None, seed: int = 0,
                 n_boot: int = 10_000, level: float = 0.95) -> list[PairedRow]:
    """Every method against every other (``a`` before ``b`` in ``scores``' order) and against each null.

    ``scores``: method name → ``[n_images]`` or ``[seeds, n_images]`` (see the module docstring).
    ``nulls``: name → the same; a ``"zero"`` null (all-zero scores) is always added, so a method's row
    against it tests its mean score against 0; pass the random method here as ``{"random": ...}``.
    Row ``i``'s bootstrap is seeded by ``(seed, i)``. Holm runs over all rows with a p-value.
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
    rows = [paired_row(a, b, both[a], both[b], (seed, i), n_boot=n_boot, level=level)
            for i, (a, b) in enumerate(pairs)]
    tested = [i for i, r in enumerate(rows) if r.n > 0]
    adjusted = holm([rows[i].p for i in tested]) if tested else []
    for i, q in zip(tested, adjusted):
        rows[i] = dataclasses.replace(rows[i], p_holm=float(q))
    return rows


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
    """A markdown table of paired rows (``a − b``, mean, interval, p, Holm p, n)."""
    head = ("| a | b | mean (a − b) | bootstrap CI | p (Wilcoxon) | p (Holm) | n |\n"
            "|---|---|---|---|---|---|---|")
    f = f"{{:.{digits}g}}"
    lines = [f"| {r.a} | {r.b} | {f.format(r.mean)} | [{f.format(r.ci_low)}, {f.format(r.ci_high)}] | "
             f"{r.p:.3g} | {r.p_holm:.3g} | {r.n} |" for r in rows]
    return "\n".join([head, *lines])
