"""Summary of a finished run: cluster means with 95 % t intervals, splits, paired tests, a plot.

**The unit is the cluster** (the source image: a digit and its corrupted copies; an image of a plain
set is its own cluster). Every cell is the mean over clusters of the per-cluster means of the
per-image values (each image first averaged over the run's seeds), with the t interval
``mean ± t₀.₉₇₅,ₖ₋₁ · sd / √k`` over the k cluster means; rates (correction) are means of per-image
0/1 outcomes and get the same t interval (no Wilson interval is used). Every row states both n
(clusters and images). Paired comparisons (:mod:`.stats`) run on cluster means as well.

What is scored, kept apart in ``summary.md`` (see :func:`undesirable_jax.evaluate.metrics.score_rankings`):

- **U_t on its own support** (rows named by the method, e.g. ``pda``): the method's positive part
  U_t, removed undesirable-first up to its own size; at q % beyond it, all of U_t is removed.
- **−R_t, the full signed order** (rows ``<method> −R_t (full signed order)``): every pixel, from the
  most undesirable through the zero level to the most supporting; MoRF/LeRF and the area between.
- **Suppression and correction where they can matter**: correction on the misclassified images,
  suppression on the images whose competitor has p(c) ≥ :data:`COMPETITOR_FLOOR`.
- **Splits**: by group (corruption type), by class, by p(t) bin, correct vs misclassified.
- **Margin over the best model-free control** (:data:`~.methods.CONTROLS`; omitted when the run has none).
- **Holm family**: Holm runs over one declared family of comparisons (:func:`findings_family` unless
  the caller passes one), listed in ``summary.md`` and ``comparisons.md``; other rows show their raw p.

Files are written atomically; the plot is drawn with matplotlib's Agg canvas directly (no pyplot state).
"""

from __future__ import annotations

import csv
import io as _io
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import io
from .passes import passes_markdown

COMPETITOR_FLOOR = 0.01
"""Suppression is reported on the images whose competitor has p(c) ≥ this (elsewhere it cannot matter)."""
BEST_CONTROL = "best control"
"""The ``versus`` name of a comparison against the best model-free control of its metric and q."""
SIGNED = " −R_t (full signed order)"
"""Suffix of a method's row name in the tables of its full signed order."""

UT_Q = (("ut_gain", "U_t on its own support: removal gain Δp(t), top q % of the image within U_t (all of U_t beyond)"),
        ("ut_log_odds_gain", "U_t on its own support: removal gain in log2-odds of p(t) (bits)"),
        ("ut_within", "Share of images whose U_t holds at least q % of the image (q within U_t's own support)"))
SIGNED_Q = (("removal_gain", "−R_t, full signed order: Δp(t) removing the top q % undesirable-first (MoRF)"),
            ("log_odds_gain", "−R_t, full signed order: Δlog2-odds of p(t), undesirable-first"),
            ("lerf_gain", "−R_t, full signed order: Δp(t) removing least-undesirable-first (LeRF: most supporting first)"),
            ("own_gain", "−R_t, full signed order: Δp(t) under each method's OWN construction perturbation"))
CORRECTION_Q = (("correction_rate:ut", "Correction rate, top q % within U_t removed (own support)"),
                ("correction_rate:signed", "Correction rate, top q % of the full signed order −R_t removed"),
                ("correction_rate:uc", "Correction rate, top q % of U_c removed"),
                ("correction_rate:uc_plain", "Correction rate, top q % of PDA's plain U_c (baselines: their R_c)"),
                ("correction_rate:union", "Correction rate, top q % of the union of rank-normalised U_t and U_c"))
SUPPRESSION_Q = (("margin_gain:uc", "Suppression: change of log2 p(t) − log2 p(c) (bits), top q % of U_c removed"),
                 ("margin_gain:uc_plain", "Suppression with PDA's plain U_c = max(0, R_c) (baselines: their R_c)"),
                 ("margin_gain:union", "Suppression, top q % of the union of rank-normalised U_t and U_c removed"))
PER_Q = UT_Q + SIGNED_Q + CORRECTION_Q + SUPPRESSION_Q
PER_METHOD = (("positive", "|U_t|: pixels with evidence against the target > 0 (ranking.positive_count)"),
              ("ut_area", "U_t on its own support: mean Δp(t) along its curve over fractions 0..1 of U_t"),
              ("area_between", "−R_t, full signed order: area between the MoRF and LeRF curves of p(t), f = 0..1"))
SPLIT_METRICS = ("ut_gain", "area_between")
"""The metrics the split tables of ``summary.md`` show (``summary.csv`` has the same rows)."""


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
    """Mean and 95 % t interval of independent values; NaN bounds for fewer than two values."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if x.size < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return m, m - half, m + half


def cluster_mean_ci(values: Sequence[float], clusters: Sequence[str]) -> tuple[float, float, float, int]:
    """Mean over clusters of the per-cluster means, its 95 % t interval over clusters, and the cluster count."""
    from . import stats

    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan, 0
    means = stats.cluster_means(x, np.asarray(clusters))
    return (*mean_ci(means), int(means.size))


def clusters_of(results: Sequence[dict]) -> list[str]:
    """Each result's cluster (the runner writes it; a result without one is refused, naming its id)."""
    missing = [r["id"] for r in results if "cluster" not in r or "group" not in r]
    if missing:
        raise ValueError(f"results: {len(missing)} lack cluster/group (e.g. {missing[0]!r}): written by an older "
                         "version; rerun the evaluation into a new folder")
    return [str(r["cluster"]) for r in results]


def pool_of(metric: str) -> Callable[[dict], bool]:
    """Which images ``metric`` is averaged over: correction rates on the misclassified images, suppression
    (``margin_gain``) where the competitor has p(c) ≥ :data:`COMPETITOR_FLOOR`, every other metric on all."""
    kind = metric.partition(":")[0]
    if kind == "correction_rate":
        return lambda r: r["prediction"] != r["label"]
    if kind == "margin_gain":
        return lambda r: r["p_competitor"] >= COMPETITOR_FLOOR
    return lambda r: True


def splits(results: Sequence[dict]) -> dict[str, list[bool]]:
    """The split masks: ``""`` (all), ``group=<g>``, ``class=<label>``, the p(t) bins, correct/misclassified."""
    from . import stats

    out = {"": [True] * len(results)}
    for g in sorted({str(r["group"]) for r in results}):
        out[f"group={g}"] = [str(r["group"]) == g for r in results]
    for c in sorted({int(r["label"]) for r in results}):
        out[f"class={c}"] = [int(r["label"]) == c for r in results]
    if results:
        out.update({k: list(v) for k, v in stats.confidence_bins([r["p_target"] for r in results]).items()})
    out["correct"] = [r["prediction"] == r["label"] for r in results]
    out["misclassified"] = [r["prediction"] != r["label"] for r in results]
    return out


def _cell_rows(metric: str, method: str, vals: list, clusters: list, percents: Sequence[float], split: str) -> list:
    """Rows of one metric × method × split: one per q (or one with q empty for a per-image scalar)."""
    arr = np.asarray(vals, dtype=np.float64)
    cols = [("", arr)] if arr.ndim == 1 else [(q, arr[:, i]) for i, q in enumerate(percents)]
    rows = []
    for q, col in cols:
        m, lo, hi, k = cluster_mean_ci(col, clusters)
        rows.append(dict(metric=metric, method=method, q=q, split=split, n=len(col), n_clusters=k, mean=m,
                         ci_low=lo, ci_high=hi))
    return rows


def summary_rows(results: Sequence[dict], config: dict) -> list[dict]:
    """Long-format rows: ``metric, method, q, split, n, n_clusters, mean, ci_low, ci_high``.

    ``q`` empty for per-image scalars; ``split`` empty for the metric's whole pool (:func:`pool_of`), else
    a split of :func:`splits` (only for :data:`SPLIT_METRICS` and the correction by U_t), intersected
    with the pool. Metrics a method does not have (e.g. the plain U_c of a baseline) are left out.
    """
    clusters = clusters_of(results)
    masks = splits(results)
    rows = []
    for method in config["methods"]:
        for metric in [m for m, _ in PER_Q] + [m for m, _ in PER_METHOD]:
            keep = pool_of(metric)
            split_names = list(masks) if metric in SPLIT_METRICS + ("correction_rate:ut",) else [""]
            for split in split_names:
                idx = [i for i, r in enumerate(results) if keep(r) and masks[split][i]]
                vals = [per_image(results[i], method, metric) for i in idx]
                if not idx or any(v is None for v in vals):
                    continue
                rows += _cell_rows(metric, method, vals, [clusters[i] for i in idx], config["percents"], split)
    return rows


def _cell(row: dict) -> str:
    if math.isnan(row["mean"]):
        return "n/a"
    if math.isnan(row["ci_low"]):
        return f"{row['mean']:+.4f}"
    return f"{row['mean']:+.4f} [{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]"


def _n(row: dict) -> str:
    return f"{row['n_clusters']} clusters / {row['n']} images"


def _header(config: dict, results: Sequence[dict]) -> list[str]:
    clusters = clusters_of(results)
    wrong = sum(r["prediction"] != r["label"] for r in results)
    comp = sum(r["p_competitor"] >= COMPETITOR_FLOOR for r in results)
    return [f"Our metric, after Kang et al. (docs/METHOD.md §4). {len(results)} images in {len(set(clusters))} "
            f"clusters (source images) of `{config.get('dataset') or 'unnamed data set'}`; model `{config['model']}`, "
            f"sampler `{config['sampler']}`, window {config['window']}, stride {config['stride']}, "
            f"{config['num_samples']} samples; scoring perturbation `{config.get('scoring', '?')}` "
            f"({config.get('scoring_draws', '?')} draws, keys disjoint from every method's own); "
            f"{config.get('num_seeds', 1)} seeds (root {config['seed']}) averaged per image.", "",
            "**Unit: the cluster.** Each cell is the mean over clusters of per-cluster means, with the 95 % t "
            "interval over clusters (correction rates likewise: means of 0/1 outcomes, t interval, no Wilson). "
            f"Correction is reported on the {wrong} misclassified images only; suppression on the {comp} images "
            f"whose competitor has p(c) ≥ {COMPETITOR_FLOOR:g} (elsewhere no competitor can matter).", "",
            "**Which is which.** Rows named by the method (e.g. `pda`) score **U_t on its own support**: its "
            "positive part, removed undesirable-first up to |U_t| (beyond, all of U_t). Rows "
            f"`<method>{SIGNED}` score the **full signed order −R_t** (all pixels, through the zero level into "
            "the supporting ones). Baselines alike: their positive part vs their full signed order.", ""]


def _q_table(index: dict, metric: str, title: str, methods: Sequence[str], percents: Sequence[float],
             split: str = "", suffix: str = "") -> list[str]:
    present = [m for m in methods if (metric, m, percents[0], split) in index]
    if not present:
        return []
    first = index[(metric, present[0], percents[0], split)]
    out = [f"**{title}** ({_n(first)}{', ' + split if split else ''})", "",
           "| method | " + " | ".join(f"q = {q:g}%" for q in percents) + " |", "|---" * (len(percents) + 1) + "|"]
    out += [f"| {m}{suffix} | " + " | ".join(_cell(index[(metric, m, q, split)]) for q in percents) + " |"
            for m in present]
    return out + [""]


def _split_kind(split: str) -> str:
    """The kind of a split name of :func:`splits`: group, class, p(t) or correct/misclassified."""
    if split in ("correct", "misclassified"):
        return "correct/misclassified"
    return "p(t)" if "p(t)" in split else split.partition("=")[0]


def _split_table(index: dict, metric: str, methods: Sequence[str], percents: Sequence[float],
                 split_names: Sequence[str], kind: str) -> list[str]:
    qs = [""] if any((metric, m, "", "") in index for m in methods) else list(percents)
    sel = [(s, m) for s in split_names if _split_kind(s) == kind for m in methods if (metric, m, qs[0], s) in index]
    if not sel:
        return []
    title = dict(PER_Q + PER_METHOD).get(metric, metric)
    out = [f"**By {kind}: {title}**", "", "| split | n | method | " + " | ".join(
        "value" if q == "" else f"q = {q:g}%" for q in qs) + " |", "|---" * (len(qs) + 3) + "|"]
    for s, m in sel:
        first = index[(metric, m, qs[0], s)]
        out.append(f"| {s} | {_n(first)} | {m} | " + " | ".join(_cell(index[(metric, m, q, s)]) for q in qs) + " |")
    return out + [""]


def to_markdown(rows: Sequence[dict], config: dict, results: Sequence[dict], skipped: dict[str, str] | None = None,
                controls: Sequence[dict] = (), family: Sequence[str] = ()) -> str:
    """``summary.md``: U_t own support, the full signed order, correction/suppression, per-method
    metrics, classifier passes per image by method, margins over the best control, the splits, and the
    Holm family."""
    percents, methods = config["percents"], config["methods"]
    out = _header(config, results) + [f"*{reason}.*\n" for reason in (skipped or {}).values()]
    index = {(r["metric"], r["method"], r["q"], r["split"]): r for r in rows}
    out += ["## U_t on its own support", ""]
    for metric, title in UT_Q:
        out += _q_table(index, metric, title, methods, percents)
    out += ["## −R_t: the full signed order", ""]
    for metric, title in SIGNED_Q:
        out += _q_table(index, metric, title, methods, percents, suffix=SIGNED)
    out += ["## Correction (misclassified images) and suppression (p(c) ≥ "
            f"{COMPETITOR_FLOOR:g})", ""]
    for metric, title in CORRECTION_Q + SUPPRESSION_Q:
        out += _q_table(index, metric, title, methods, percents)
    out += ["## Per method", "", "| method | n | " + " | ".join(t for _, t in PER_METHOD) + " |",
            "|---" * (len(PER_METHOD) + 2) + "|"]
    for m in methods:
        if all((k, m, "", "") in index for k, _ in PER_METHOD):
            out.append(f"| {m} | {_n(index[('positive', m, '', '')])} | "
                       + " | ".join(_cell(index[(k, m, "", "")]) for k, _ in PER_METHOD) + " |")
    out += [""] + passes_markdown(list(results), list(methods)) + control_markdown(controls) + family_markdown(family)
    out += ["## Splits", ""]
    split_names = list(dict.fromkeys(r["split"] for r in rows if r["split"]))
    for kind in ("group", "class", "p(t)", "correct/misclassified"):
        for metric in SPLIT_METRICS + ("correction_rate:ut",):
            out += _split_table(index, metric, methods, percents, split_names, kind)
    return "\n".join(out) + "\n"


def to_csv(rows: Sequence[dict]) -> str:
    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["metric", "method", "q", "split", "n", "n_clusters", "mean",
                                             "ci_low", "ci_high"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def plot_removal_gain(rows: Sequence[dict], config: dict) -> bytes:
    """PNG bytes: mean gain against q per method: U_t on its own support, and the full order's MoRF and LeRF."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 3.8), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, metric, label in ((axes[0], "ut_gain", "Δ p(t), U_t on its own support"),
                              (axes[1], "removal_gain", "Δ p(t), −R_t undesirable first (MoRF)"),
                              (axes[2], "lerf_gain", "Δ p(t), −R_t least undesirable first (LeRF)")):
        for m in config["methods"]:
            pts = [r for r in rows if r["metric"] == metric and r["method"] == m and r["split"] == ""]
            q = np.array([r["q"] for r in pts], dtype=float)
            mean = np.array([r["mean"] for r in pts])
            err = np.nan_to_num(np.array([[r["mean"] - r["ci_low"], r["ci_high"] - r["mean"]] for r in pts]).T)
            ax.errorbar(q, mean, yerr=err if len(pts) else None, marker="o", capsize=3, label=m)
        ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xticks([float(q) for q in config["percents"]])
        ax.set_xlabel("q (% of the image's pixels removed)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Removal gain (our metric, after Kang et al.) — {config['model']}, scored with "
                 f"{config.get('scoring', '?')}; 95 % t intervals over clusters")
    fig.tight_layout()
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_summary(out_dir: str | Path, results: Sequence[dict], config: dict, *,
                  family: Sequence[tuple] | None = None) -> dict[str, Path]:
    """Write the summary files atomically into ``out_dir``.

    ``summary.md``/``summary.csv`` (cluster means and intervals, splits, margins over the best control),
    ``removal_gain.png``, ``comparisons.md``/``.csv`` (cluster-paired differences of every method
    against every other, the nulls and the best control; Holm over ``family``, default
    :func:`findings_family`) and ``sanity.md``/``.csv`` (the sanity checks of the images that ran them).
    """
    out_dir = Path(out_dir)
    rows = summary_rows(results, config)
    skipped = {k: v for r in results for k, v in r.get("skipped", {}).items()}
    family = findings_family(config) if family is None else family
    comp = comparison_rows(results, config, family=family)
    sanity_rows = sanity_table(results)
    controls = [r for r in comp if r["versus"] == BEST_CONTROL]
    listed = family_lines(comp, family)
    return {
        "markdown": io.write_text(out_dir / "summary.md",
                                  to_markdown(rows, config, results, skipped, controls, listed)),
        "csv": io.write_text(out_dir / "summary.csv", to_csv(rows)),
        "plot": io.write_bytes(out_dir / "removal_gain.png", plot_removal_gain(rows, config)),
        "comparisons": io.write_text(out_dir / "comparisons.md", comparisons_markdown(comp, config, family=listed)),
        "comparisons_csv": io.write_text(out_dir / "comparisons.csv", rows_csv(comp)),
        "sanity": io.write_text(out_dir / "sanity.md", sanity_markdown(sanity_rows)),
        "sanity_csv": io.write_text(out_dir / "sanity.csv", rows_csv(sanity_rows)),
    }


COMPARED = (("ut_gain", "U_t on its own support: Δp(t)"),
            ("ut_area", "U_t on its own support: mean Δp(t) along U_t"),
            ("area_between", "−R_t, full signed order: area between MoRF and LeRF"),
            ("removal_gain", "−R_t, full signed order: Δp(t), undesirable-first"),
            ("margin_gain:uc", f"suppression (margin, bits), U_c, images with p(c) ≥ {COMPETITOR_FLOOR:g}"),
            ("correction_rate:ut", "correction by U_t on its own support (misclassified only)"))
"""The metrics of the paired-comparison table (each at every q where it has one), over their pools."""
FAMILY_METRICS = ("ut_area", "area_between")
"""The metrics of :func:`findings_family`: U_t on its own support and the full signed order, one number each."""


def findings_family(config: dict) -> list[tuple[str, Any, str, str]]:
    """The default Holm family: the comparisons stated as findings, ``(metric, q, method, versus)``.

    For each of :data:`FAMILY_METRICS`: PDA against every other method that is not a model-free
    control, and every method that is not a control against the best control of that metric
    (``versus`` = :data:`BEST_CONTROL`; only when the run has controls). ``q`` is ``""`` (per-image scalars).
    """
    from .methods import CONTROLS

    methods = list(config["methods"])
    controls = [m for m in methods if m in CONTROLS]
    rest = [m for m in methods if m not in controls]
    family = []
    for metric in FAMILY_METRICS:
        if "pda" in rest:
            family += [(metric, "", "pda", m) for m in rest if m != "pda"]
        if controls:
            family += [(metric, "", m, BEST_CONTROL) for m in rest]
    return family


def _same_q(a: Any, b: Any) -> bool:
    return (a == "" and b == "") or (a != "" and b != "" and float(a) == float(b))


def _matches(row: dict, entry: Sequence) -> bool:
    metric, q, a, b = entry
    return row["metric"] == metric and _same_q(row["q"], q) and {row["method"], row["versus"]} == {a, b}


def apply_family(rows: list[dict], family: Sequence[Sequence]) -> list[dict]:
    """Holm over the rows that match ``family`` (``(metric, q, a, b)``, a and b in either order); the
    others get ``p_holm`` NaN and ``in_family`` False."""
    from . import stats

    inside = [i for i, r in enumerate(rows) if any(_matches(r, e) for e in family) and math.isfinite(r["p"])]
    adjusted = stats.holm([rows[i]["p"] for i in inside]) if inside else []
    out = [dict(r, p_holm=math.nan, in_family=False) for r in rows]
    for i, q in zip(inside, adjusted):
        out[i].update(p_holm=float(q), in_family=True)
    return out


def family_lines(rows: Sequence[dict], family: Sequence[Sequence]) -> list[str]:
    """One line per family entry: the comparison, its control where it is the best control, or why it has no row."""
    lines = []
    for entry in family:
        metric, q, a, b = entry
        hit = next((r for r in rows if _matches(r, entry) and r["in_family"]), None)
        what = f"`{metric}`" + ("" if q == "" else f" at q = {float(q):g}%") + f": {a} − {b}"
        if hit is None:
            lines.append(what + " (no row: a method was skipped or the metric is absent; not tested)")
        else:
            lines.append(what + (f" ({hit['control']})" if hit.get("control") else ""))
    return lines


def _control_rows(cols: dict, clusters: list, metric: str, q: Any, seed: int, salt: int) -> list[dict]:
    """Every non-control method against the best model-free control (highest cluster mean) of this column."""
    from . import stats
    from .methods import CONTROLS

    controls = [m for m in cols if m in CONTROLS]
    if not controls:
        return []
    cl = np.asarray(clusters)
    means = {m: float(stats.cluster_means(cols[m][np.isfinite(cols[m])], cl[np.isfinite(cols[m])]).mean())
             if np.isfinite(cols[m]).any() else -math.inf for m in controls}
    best = max(controls, key=lambda m: (means[m], -controls.index(m)))
    rows = []
    for k, m in enumerate(m for m in cols if m not in controls):
        r = stats.paired(cols[m], cols[best], clusters=clusters, key=(seed, 1_000_003, salt, k))
        rows.append(dict(metric=metric, q=q, method=m, versus=BEST_CONTROL, control=best, n=r.n_images,
                         n_clusters=r.n_clusters, mean=r.mean, ci_low=r.ci_low, ci_high=r.ci_high, p=r.p, d_z=r.d_z))
    return rows


def comparison_rows(results: Sequence[dict], config: dict, *,
                    family: Sequence[Sequence] | None = None) -> list[dict]:
    """Cluster-paired differences of every method against every other, the nulls and the best control.

    Per metric of :data:`COMPARED` (over its pool, :func:`pools`) and q: each image's value is its
    mean over seeds; :func:`undesirable_jax.evaluate.stats.paired_table` pairs the methods on cluster
    means (``random`` is the random null, ``zero`` tests the metric itself against 0), and
    :func:`_control_rows` adds each method's margin over the best model-free control. Holm runs over
    ``family`` only (default :func:`findings_family`); every other row keeps its raw p.
    """
    from . import stats

    clusters = clusters_of(results)
    rows = []
    for mi, (metric, _) in enumerate(COMPARED):
        idx = [i for i, r in enumerate(results) if pool_of(metric)(r)]
        values = {m: [per_image(results[i], m, metric) for i in idx] for m in config["methods"]}
        values = {m: np.asarray(v, dtype=np.float64) for m, v in values.items() if v and all(x is not None for x in v)}
        if not values:
            continue
        order = sorted(values, key=lambda m: m == "random")      # random last: every method is paired with it
        cl = [clusters[i] for i in idx]
        qs = [""] if next(iter(values.values())).ndim == 1 else config["percents"]
        for qi, q in enumerate(qs):
            cols = {m: (values[m] if q == "" else values[m][:, qi]) for m in order}
            for row in stats.paired_table(cols, clusters=cl, seed=int(config["seed"]), family=()):
                rows.append(dict(metric=metric, q=q, method=row.a, versus=row.b, control="", n=row.n_images,
                                 n_clusters=row.n_clusters, mean=row.mean, ci_low=row.ci_low, ci_high=row.ci_high,
                                 p=row.p, d_z=row.d_z))
            rows += _control_rows(cols, cl, metric, q, int(config["seed"]), mi * 1000 + qi)
    return apply_family(rows, findings_family(config) if family is None else family)


def _p_holm(r: dict) -> str:
    return f"{r['p_holm']:.2g}" if r["in_family"] else "not in family"


def beats_control(r: dict) -> bool:
    """A margin over the best control counts when it is positive with its interval above 0 and p ≤ 0.05
    (the Holm p inside the family, the raw p outside it)."""
    p = r["p_holm"] if r["in_family"] else r["p"]
    return bool(r["mean"] > 0 and r["ci_low"] > 0 and p <= 0.05)


def control_markdown(rows: Sequence[dict]) -> list[str]:
    """The margin of every method over the best model-free control, with its verdict."""
    out = ["## Margin over the best model-free control", ""]
    if not rows:
        return out + ["No model-free control in this run (none of `methods.CONTROLS` among its methods): no margin "
                      "is reported.", ""]
    out += ["Cluster-paired difference method − best control (the control with the highest cluster mean on "
            "that metric and q). A method that does not beat the best control says so.", "",
            "| metric | q | method | best control | margin [95% CI] | p | p (Holm) | d_z | n | verdict |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = "" if r["q"] == "" else f"{r['q']:g}%"
        verdict = "beats the best control" if beats_control(r) else "**does not beat the best control**"
        out.append(f"| `{r['metric']}` | {q} | {r['method']} | {r['control']} | {_cell(r)} | {r['p']:.2g} | "
                   f"{_p_holm(r)} | {r['d_z']:.2f} | {_n(r)} | {verdict} |")
    return out + [""]


def family_markdown(lines: Sequence[str]) -> list[str]:
    """The "Holm family" section: which comparisons the Holm correction runs over."""
    return (["## Holm family", "", f"Holm family (m = {sum('(no row' not in x for x in lines)}): the comparisons "
             "stated as findings; Holm p is computed over these only. Every other comparison (comparisons.md) shows "
             "its raw p and is marked \"not in family\".", ""] + [f"- {x}" for x in lines] + [""])


def comparisons_markdown(rows: Sequence[dict], config: dict, only: str | None = None,
                         family: Sequence[str] = ()) -> str:
    """The paired-comparison table as markdown: one table per metric, rows ``method − versus`` per q.

    ``only``: keep the rows that involve this method (e.g. ``"pda"``); None keeps all. ``family``: the
    lines of :func:`family_lines`, listed at the end.
    """
    rows = [r for r in rows if only is None or only in (r["method"], r["versus"])]
    out = [f"Cluster-paired differences (method − versus): each image averaged over {config.get('num_seeds', 1)} "
           f"seeds, differences averaged per cluster (source image); scored with `{config.get('scoring', '?')}`. "
           "Mean over clusters [cluster bootstrap 95% CI], Wilcoxon signed-rank p on cluster means, d_z = mean / SD "
           "of the cluster means, Holm p over the declared family only (\"not in family\" elsewhere). `zero`: the "
           f"metric itself against 0; `{BEST_CONTROL}`: the best model-free control of that metric and q.", ""]
    for metric, title in COMPARED:
        sel = [r for r in rows if r["metric"] == metric]
        if not sel:
            continue
        out += [f"**{title}** (`{metric}`)", "", "| q | method | versus | n | mean difference | p | p (Holm) | d_z |",
                "|---|---|---|---|---|---|---|---|"]
        for r in sel:
            q = "" if r["q"] == "" else f"{r['q']:g}%"
            versus = r["versus"] + (f" ({r['control']})" if r.get("control") else "")
            out.append(f"| {q} | {r['method']} | {versus} | {_n(r)} | {_cell(r)} | {r['p']:.2g} | {_p_holm(r)} | "
                       f"{r['d_z']:.2f} |")
        out.append("")
    return "\n".join(out + family_markdown(family)) + "\n"


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


SANITY_MEASURES = ("rho", "abs_rho", "ssim", "rho_image", "abs_rho_image")


def sanity_table(results: Sequence[dict]) -> list[dict]:
    """Mean of each sanity measure per method × check, over the images that ran the checks, for all of
    them and split into correctly classified and misclassified images (``group``).

    ``fails`` (on the rows of each method's last ``randomise:`` stage, group ``all``): ``"yes"`` when
    :func:`.sanity.fails` says the fully randomised maps stay close, else ``"no"``; empty elsewhere.
    A stored float (results written before |ρ| and SSIM) counts as ``rho`` alone.
    """
    from . import sanity

    found: dict[tuple[str, str, str], list[dict]] = {}
    last: dict[str, str] = {}
    for r in results:
        group = "correct" if r.get("prediction") == r.get("label") else "misclassified"
        for method, checks in (r.get("sanity") or {}).items():
            for check, v in checks.items():
                v = v if isinstance(v, dict) else {"rho": v}
                for g in ("all", group):
                    found.setdefault((method, check, g), []).append(v)
                if check.startswith("randomise:"):
                    last[method] = check
    rows = []
    for (method, check, group), vals in found.items():
        row = dict(method=method, check=check, group=group, n=len(vals))
        for m in SANITY_MEASURES:
            xs = [float(v[m]) for v in vals if m in v and v[m] is not None and math.isfinite(float(v[m]))]
            row[m] = float(np.mean(xs)) if xs else float("nan")
        verdict = sanity.fails(row["abs_rho"], row["ssim"], row["abs_rho_image"])
        row["fails"] = ("yes" if verdict else "no") if group == "all" and last.get(method) == check else ""
        rows.append(row)
    order = {"all": 0, "correct": 1, "misclassified": 2}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    rows.sort(key=lambda r: (methods.index(r["method"]), order[r["group"]]))   # stable: checks keep their order
    return rows


def sanity_markdown(rows: Sequence[dict]) -> str:
    """The sanity-check table (:func:`sanity_table`) with what each column means and which methods fail."""
    from .sanity import FAIL_AT

    out = ["Sanity checks (Adebayo et al. 2018), means over the images that ran them. `trained`: the trained "
           "model's map against itself and the image. `randomise:<layer>`: the map of the model whose parameters "
           "from the top layer down to <layer> are re-drawn (cascading) against the trained model's map: signed "
           "Spearman ρ, ρ of absolute values |ρ|, SSIM of the maps normalised to [0, 1] by max |value| "
           "(Gaussian window σ 1.5 px, C1 = 0.01², C2 = 0.03²); ρ(img) and |ρ|(img): the same map against the "
           "image's grey intensity (the edge-detector test). A map that explains the model decorrelates (→ 0). "
           "`random_logit`: U_c for the competitor against U_c for a random other class; a class-specific map "
           f"gives low values. **fails**: with every layer random, mean |ρ|, SSIM or |ρ|(img) ≥ {FAIL_AT:g}.", ""]
    if not rows:
        return "\n".join(out + ["No image ran the sanity checks (sanity_images = 0, or no parameter pytree)."]) + "\n"
    out += ["| method | check | images | n | ρ | abs ρ | SSIM | ρ(img) | abs ρ(img) | fails |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = " | ".join("" if not math.isfinite(r[m]) else f"{r[m]:+.3f}" for m in SANITY_MEASURES)
        out.append(f"| {r['method']} | {r['check']} | {r['group']} | {r['n']} | {cells} | {r['fails']} |")
    failing = sorted({r["method"] for r in rows if r["fails"] == "yes"})
    out += ["", f"Methods that fail: {', '.join(failing) if failing else 'none'}."]
    return "\n".join(out) + "\n"
