"""Summary of a finished run: means with 95 % confidence intervals, as markdown, CSV and a plot.

Means use the t interval ``mean ± t₀.₉₇₅,ₙ₋₁ · sd / √n``; the correction rate (a proportion, over the
misclassified images only) uses the Wilson score interval. Files are written atomically; the plot is
drawn with matplotlib's Agg canvas directly (no pyplot state).
"""

from __future__ import annotations

import csv
import io as _io
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import io

PER_Q = (("removal_gain", "Removal gain Δp(t), undesirable-first (MoRF on U_t), common scoring perturbation"),
         ("log_odds_gain", "Removal gain in log2-odds of p(t) (bits), undesirable-first, common perturbation"),
         ("lerf_gain", "Δp(t) removing least-undesirable-first (LeRF: the most supporting pixels first)"),
         ("own_gain", "Removal gain Δp(t), undesirable-first, under each method's OWN construction perturbation"),
         ("margin_gain:uc", "Suppression: change of log2 p(t) − log2 p(c) (bits) after removing the top q% of U_c"),
         ("margin_gain:uc_plain", "Suppression with PDA's plain U_c = max(0, R_c) (baselines: their R_c)"),
         ("margin_gain:union", "Suppression after removing the top q% of the union of rank-normalised U_t and U_c"),
         ("correction_rate:ut", "Correction rate on misclassified images, top q% of U_t removed"),
         ("correction_rate:uc", "Correction rate on misclassified images, top q% of U_c removed"),
         ("correction_rate:uc_plain", "Correction rate, top q% of PDA's plain U_c (baselines: their R_c)"),
         ("correction_rate:union", "Correction rate, top q% of the union of rank-normalised U_t and U_c"))
PER_METHOD = (("area_between", "Area between the MoRF and LeRF curves of p(t) over f = 0..1 (higher: better order)"),
              ("positive", "Positive-set size: pixels with evidence against the target > 0"))


def per_image(result: dict, method: str, metric: str) -> np.ndarray | None:
    """One image's value of ``metric`` for ``method``, averaged over its seeds (None when absent).

    ``metric``: a field of the per-seed record, ``correction_rate:<ranking>`` or ``margin_gain:<ranking>``.
    """
    field, _, sub = metric.partition(":")
    field = "corrected" if field == "correction_rate" else field
    vals = []
    for seed in result["seeds"]:
        rec = seed.get(method)
        v = None if rec is None else rec.get(field)
        v = v.get(sub) if isinstance(v, dict) else v
        if v is None:
            return None
        vals.append(np.asarray(v, dtype=np.float64))
    return np.mean(vals, axis=0)


def mean_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and 95 % t interval; NaN bounds for fewer than two values."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - half, m + half


def wilson_ci(successes: int, n: int) -> tuple[float, float, float]:
    """Rate and 95 % Wilson score interval; NaN for n = 0."""
    if n == 0:
        return math.nan, math.nan, math.nan
    z = 1.959963984540054
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return p, centre - half, centre + half


def summary_rows(results: Sequence[dict], config: dict) -> list[dict]:
    """Long-format rows: ``metric, method, q, n, mean, ci_low, ci_high`` (q empty for per-method metrics).

    Per image every value is first averaged over the run's seeds; correction rates use the
    misclassified images only. Metrics a method does not have (e.g. the plain U_c of a baseline that
    only has one) are left out.
    """
    rows = []
    wrong = [r for r in results if r["prediction"] != r["label"]]
    for method in config["methods"]:
        for metric, _ in PER_Q:
            pool = wrong if metric.startswith("correction_rate") else results
            vals = [per_image(r, method, metric) for r in pool]
            if any(v is None for v in vals) or not pool:
                continue
            for qi, q in enumerate(config["percents"]):
                m, lo, hi = mean_ci([v[qi] for v in vals])
                rows.append(dict(metric=metric, method=method, q=q, n=len(pool), mean=m, ci_low=lo, ci_high=hi))
        for metric, _ in PER_METHOD:
            vals = [per_image(r, method, metric) for r in results]
            if any(v is None for v in vals):
                continue
            m, lo, hi = mean_ci([float(v) for v in vals])
            rows.append(dict(metric=metric, method=method, q="", n=len(results), mean=m, ci_low=lo, ci_high=hi))
        rows += bin_rows(results, method, config["percents"])
    return rows


def bin_rows(results: Sequence[dict], method: str, percents: Sequence[float]) -> list[dict]:
    """Removal gain (common perturbation) of ``method`` split by p(t) on the untouched image
    (:func:`undesirable_jax.evaluate.stats.confidence_bins`: < 0.9, 0.9–0.999, ≥ 0.999)."""
    from . import stats

    rows = []
    if not results:
        return rows
    for label, mask in stats.confidence_bins([r["p_target"] for r in results]).items():
        vals = [per_image(r, method, "removal_gain") for r, m in zip(results, mask) if m]
        if not vals or any(v is None for v in vals):
            continue
        for qi, q in enumerate(percents):
            m, lo, hi = mean_ci([v[qi] for v in vals])
            rows.append(dict(metric=f"removal_gain[{label}]", method=method, q=q, n=len(vals), mean=m,
                             ci_low=lo, ci_high=hi))
    return rows


def _cell(row: dict) -> str:
    if math.isnan(row["mean"]):
        return "n/a"
    if math.isnan(row["ci_low"]):
        return f"{row['mean']:+.4f}"
    return f"{row['mean']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"


def to_markdown(rows: Sequence[dict], config: dict, num_images: int, num_wrong: int,
                skipped: dict[str, str] | None = None) -> str:
    """Tables: one per q-metric (methods × q), the per-method metrics, the p(t) bins."""
    percents = config["percents"]
    out = [f"Our metric, after Kang et al. (docs/METHOD.md §4). {num_images} images ({num_wrong} misclassified) of "
           f"`{config.get('dataset') or 'unnamed data set'}`; model `{config['model']}`, "
           f"sampler `{config['sampler']}`, window {config['window']}, stride {config['stride']}, "
           f"{config['num_samples']} samples; scoring perturbation `{config.get('scoring', '?')}` "
           f"({config.get('scoring_draws', '?')} draws, keys disjoint from every method's own); "
           f"{config.get('num_seeds', 1)} seeds (root {config['seed']}) averaged per image. Mean [95% CI].", ""]
    for name, reason in (skipped or {}).items():
        out += [f"*{reason}.*", ""]
    index = {(r["metric"], r["method"], r["q"]): r for r in rows}
    titles = dict(PER_Q)
    metrics = [m for m, _ in PER_Q] + list(dict.fromkeys(r["metric"] for r in rows
                                                         if r["metric"].startswith("removal_gain[")))
    for metric in metrics:
        methods = [m for m in config["methods"] if (metric, m, percents[0]) in index]
        if not methods:
            continue
        n = index[(metric, methods[0], percents[0])]["n"]
        title = titles.get(metric, f"Removal gain Δp(t), images with {metric[len('removal_gain['):-1]}")
        out += [f"**{title}** (n = {n})", "", "| method | " + " | ".join(f"q = {q:g}%" for q in percents) + " |",
                "|---" * (len(percents) + 1) + "|"]
        out += [f"| {m} | " + " | ".join(_cell(index[(metric, m, q)]) for q in percents) + " |" for m in methods]
        out.append("")
    out += ["**" + " · ".join(t for _, t in PER_METHOD) + "**", "",
            "| method | " + " | ".join(m for m, _ in PER_METHOD) + " |", "|---" * (len(PER_METHOD) + 1) + "|"]
    for m in config["methods"]:
        if all((k, m, "") in index for k, _ in PER_METHOD):
            out.append(f"| {m} | " + " | ".join(_cell(index[(k, m, "")]) for k, _ in PER_METHOD) + " |")
    return "\n".join(out) + "\n"


def to_csv(rows: Sequence[dict]) -> str:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["metric", "method", "q", "n", "mean", "ci_low", "ci_high"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot_removal_gain(rows: Sequence[dict], config: dict) -> bytes:
    """PNG bytes: mean removal gain against q per method (Δp and Δlog-odds), 95 % intervals as error bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    for ax, metric, label in ((axes[0], "removal_gain", "Δ p(t), undesirable first (MoRF on U_t)"),
                              (axes[1], "lerf_gain", "Δ p(t), least undesirable first (LeRF)")):
        for m in config["methods"]:
            pts = [r for r in rows if r["metric"] == metric and r["method"] == m]
            q = np.array([r["q"] for r in pts], dtype=float)
            mean = np.array([r["mean"] for r in pts])
            err = np.nan_to_num(np.array([[r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]] for r in pts]).T)
            ax.errorbar(q, mean, yerr=err, marker="o", capsize=3, label=m)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks([float(q) for q in config["percents"]])
        ax.set_xlabel("q (% of pixels removed, ranked by evidence against t)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Removal gain (our metric, after Kang et al.) — {config['model']}, scored with "
                 f"{config.get('scoring', '?')}")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_summary(out_dir: str | Path, results: Sequence[dict], config: dict) -> dict[str, Path]:
    """Write the summary files atomically into ``out_dir``.

    ``summary.md``/``summary.csv`` (means and intervals), ``removal_gain.png``, ``comparisons.md``/``.csv``
    (paired per-image differences of every method against every other and the nulls) and
    ``sanity.md``/``.csv`` (the sanity checks of the images that ran them).
    """
    out_dir = Path(out_dir)
    rows = summary_rows(results, config)
    num_wrong = sum(r["prediction"] != r["label"] for r in results)
    skipped = {k: v for r in results for k, v in r.get("skipped", {}).items()}
    comp = comparison_rows(results, config)
    sanity_rows = sanity_table(results)
    return {
        "markdown": io.write_text(out_dir / "summary.md",
                                  to_markdown(rows, config, len(results), num_wrong, skipped)),
        "csv": io.write_text(out_dir / "summary.csv", to_csv(rows)),
        "plot": io.write_bytes(out_dir / "removal_gain.png", plot_removal_gain(rows, config)),
        "comparisons": io.write_text(out_dir / "comparisons.md", comparisons_markdown(comp, config)),
        "comparisons_csv": io.write_text(out_dir / "comparisons.csv", rows_csv(comp)),
        "sanity": io.write_text(out_dir / "sanity.md", sanity_markdown(sanity_rows)),
        "sanity_csv": io.write_text(out_dir / "sanity.csv", rows_csv(sanity_rows)),
    }


COMPARED = (("removal_gain", "Δp(t), undesirable-first"), ("log_odds_gain", "Δlog2-odds of p(t), undesirable-first"),
            ("area_between", "area between MoRF and LeRF"), ("margin_gain:uc", "suppression (margin, bits), U_c"),
            ("correction_rate:ut", "correction by U_t (misclassified only)"))
"""The metrics of the paired-comparison table (each at every q where it has one)."""


def comparison_rows(results: Sequence[dict], config: dict) -> list[dict]:
    """Paired per-image differences of every method against every other and the nulls, per metric and q.

    Each image's value is its mean over seeds; the statistics (bootstrap 95 % interval of the mean
    difference, Wilcoxon signed-rank p, Holm-corrected within each metric and q) come from
    :func:`undesirable_jax.evaluate.stats.paired_table`; ``random`` is the random null, ``zero`` tests
    the metric itself against 0.
    """
    from . import stats

    rows = []
    wrong = [r for r in results if r["prediction"] != r["label"]]
    for metric, _ in COMPARED:
        pool = wrong if metric.startswith("correction_rate") else results
        values = {m: [per_image(r, m, metric) for r in pool] for m in config["methods"]}
        values = {m: np.asarray(v, dtype=np.float64) for m, v in values.items() if v and all(x is not None for x in v)}
        if not values:
            continue
        order = sorted(values, key=lambda m: m == "random")      # random last: every method is paired with it
        qs = [""] if next(iter(values.values())).ndim == 1 else config["percents"]
        for qi, q in enumerate(qs):
            cols = {m: (values[m] if q == "" else values[m][:, qi]) for m in order}
            for row in stats.paired_table(cols, seed=int(config["seed"]), family="all"):
                rows.append(dict(metric=metric, q=q, method=row.a, versus=row.b, n=row.n_images, mean=row.mean,
                                 ci_low=row.ci_low, ci_high=row.ci_high, p=row.p, p_holm=row.p_holm))
    return rows


def rows_csv(rows: Sequence[dict]) -> str:
    """Rows of dicts as CSV (the union of their keys, in first-seen order; empty text for no rows)."""
    if not rows:
        return ""
    fields = list(dict.fromkeys(k for r in rows for k in r))
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def comparisons_markdown(rows: Sequence[dict], config: dict, only: str | None = None) -> str:
    """The paired-comparison table as markdown: one table per metric, rows ``method − versus`` per q.

    ``only``: keep the rows that involve this method (e.g. ``"pda"``); None keeps all.
    """
    rows = [r for r in rows if only is None or only in (r["method"], r["versus"])]
    out = [f"Paired per-image differences (method − versus; each image averaged over {config.get('num_seeds', 1)} "
           f"seeds), scored with `{config.get('scoring', '?')}`. Mean [bootstrap 95% CI], Wilcoxon signed-rank "
           "p, Holm-corrected within each metric and q. `zero`: the metric itself against 0.", ""]
    for metric, title in COMPARED:
        sel = [r for r in rows if r["metric"] == metric]
        if not sel:
            continue
        out += [f"**{title}** (`{metric}`)", "", "| q | method | versus | n | mean difference | p | p (Holm) |",
                "|---|---|---|---|---|---|---|"]
        for r in sel:
            q = "" if r["q"] == "" else f"{r['q']:g}%"
            out.append(f"| {q} | {r['method']} | {r['versus']} | {r['n']} | {r['mean']:+.4f} "
                       f"[{r['ci_low']:+.4f}, {r['ci_high']:+.4f}] | {r['p']:.2g} | {r['p_holm']:.2g} |")
        out.append("")
    return "\n".join(out) + "\n"


def sanity_table(results: Sequence[dict]) -> list[dict]:
    """Mean Spearman ρ per method and check over the images that ran the sanity checks (with 95 % CI)."""
    found: dict[tuple[str, str], list[float]] = {}
    for r in results:
        for method, checks in (r.get("sanity") or {}).items():
            for check, rho in checks.items():
                found.setdefault((method, check), []).append(float(rho))
    rows = []
    for (method, check), vals in found.items():
        m, lo, hi = mean_ci([v for v in vals if math.isfinite(v)])
        rows.append(dict(method=method, check=check, n=len(vals), mean_rho=m, ci_low=lo, ci_high=hi))
    return rows


def sanity_markdown(rows: Sequence[dict]) -> str:
    """The sanity-check table: Spearman ρ of each method's map against the trained model's own map."""
    out = ["Sanity checks (Adebayo et al. 2018). `randomise:<layer>`: Spearman ρ between the map of the trained "
           "model and of the model whose parameters from the top layer down to <layer> are re-drawn (cascading); "
           "a map that explains the model should decorrelate (ρ → 0). `random_logit`: ρ between U_c for the "
           "competitor and for a random other class; a class-specific map gives low ρ.", ""]
    if not rows:
        return "\n".join(out + ["No image ran the sanity checks (sanity_images = 0, or no parameter pytree)."]) + "\n"
    out += ["| method | check | n | mean ρ [95% CI] |", "|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['method']} | {r['check']} | {r['n']} | {_cell(dict(r, mean=r['mean_rho']))} |")
    return "\n".join(out) + "\n"
