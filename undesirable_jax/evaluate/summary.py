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

PER_Q = (("removal_gain", "Removal gain Δp(t) after removing the top q% of U_t"),
         ("log_odds_gain", "Removal gain in log2-odds of p(t) (bits)"),
         ("suppression", "Non-target suppression: drop of p(c) after removing the top q% of U_c"),
         ("correction_rate", "Correction rate on misclassified images (top q% of max(U_t, U_c) removed)"))
PER_METHOD = (("deletion_auc", "Deletion AUC of p(t), support map (lower is better)"),
              ("insertion_auc", "Insertion AUC of p(t), support map (higher is better)"))


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
    """Long-format rows: ``metric, method, q, n, mean, ci_low, ci_high`` (q empty for per-method metrics)."""
    rows = []
    wrong = [r for r in results if r["prediction"] != r["label"]]
    for method in config["methods"]:
        for qi, q in enumerate(config["percents"]):
            for metric, _ in PER_Q:
                if metric == "correction_rate":
                    hits = sum(bool(r["methods"][method]["corrected"][qi]) for r in wrong)
                    m, lo, hi = wilson_ci(hits, len(wrong))
                    n = len(wrong)
                else:
                    m, lo, hi = mean_ci([r["methods"][method][metric][qi] for r in results])
                    n = len(results)
                rows.append(dict(metric=metric, method=method, q=q, n=n, mean=m, ci_low=lo, ci_high=hi))
        for metric, _ in PER_METHOD:
            m, lo, hi = mean_ci([r["methods"][method][metric] for r in results])
            rows.append(dict(metric=metric, method=method, q="", n=len(results), mean=m, ci_low=lo, ci_high=hi))
    return rows


def _cell(row: dict) -> str:
    if math.isnan(row["mean"]):
        return "n/a"
    if math.isnan(row["ci_low"]):
        return f"{row['mean']:+.4f}"
    return f"{row['mean']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"


def to_markdown(rows: Sequence[dict], config: dict, num_images: int, num_wrong: int) -> str:
    """Tables: one per q-metric (methods × q) and one for the curve areas."""
    methods, percents = config["methods"], config["percents"]
    out = [f"Our metric, after Kang et al. (docs/METHOD.md §4). {num_images} images ({num_wrong} misclassified) of "
           f"`{config.get('dataset') or 'unnamed data set'}`; model `{config['model']}`, "
           f"sampler `{config['sampler']}`, window {config['window']}, "
           f"stride {config['stride']}, {config['num_samples']} samples, seed {config['seed']}. "
           "Mean [95% CI].", ""]
    index = {(r["metric"], r["method"], r["q"]): r for r in rows}
    for metric, title in PER_Q:
        n = num_wrong if metric == "correction_rate" else num_images
        out += [f"**{title}** (n = {n})", "", "| method | " + " | ".join(f"q = {q:g}%" for q in percents) + " |",
                "|---" * (len(percents) + 1) + "|"]
        for m in methods:
            out.append(f"| {m} | " + " | ".join(_cell(index[(metric, m, q)]) for q in percents) + " |")
        out.append("")
    out += ["**Deletion / insertion AUC of p(t)** (support map max(0, R_t))", "",
            "| method | deletion AUC (lower better) | insertion AUC (higher better) |", "|---|---|---|"]
    for m in methods:
        out.append(f"| {m} | {_cell(index[('deletion_auc', m, '')])} | {_cell(index[('insertion_auc', m, '')])} |")
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
    for ax, metric, label in ((axes[0], "removal_gain", "Δ p(t)"), (axes[1], "log_odds_gain", "Δ log2-odds of p(t) (bits)")):
        for m in config["methods"]:
            pts = [r for r in rows if r["metric"] == metric and r["method"] == m]
            q = np.array([r["q"] for r in pts], dtype=float)
            mean = np.array([r["mean"] for r in pts])
            err = np.nan_to_num(np.array([[r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]] for r in pts]).T)
            ax.errorbar(q, mean, yerr=err, marker="o", capsize=3, label=m)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks([float(q) for q in config["percents"]])
        ax.set_xlabel("q (% of pixels removed: top of each method's U_t)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Removal gain (our metric, after Kang et al.) — {config['model']}")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_summary(out_dir: str | Path, results: Sequence[dict], config: dict) -> dict[str, Path]:
    """Write ``summary.md``, ``summary.csv`` and ``removal_gain.png`` atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    rows = summary_rows(results, config)
    num_wrong = sum(r["prediction"] != r["label"] for r in results)
    return {
        "markdown": io.write_text(out_dir / "summary.md", to_markdown(rows, config, len(results), num_wrong)),
        "csv": io.write_text(out_dir / "summary.csv", to_csv(rows)),
        "plot": io.write_bytes(out_dir / "removal_gain.png", plot_removal_gain(rows, config)),
    }
