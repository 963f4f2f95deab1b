"""The summary on synthetic result files: cluster units, pools, splits, margins over the best control, Holm family."""

import csv

import numpy as np
import pytest

from undesirable_jax.evaluate import methods, summary

PERCENTS = [5.0, 25.0]
CONFIG = dict(methods=["pda", "good", "edge", "centre"], percents=PERCENTS, seed=0, model="m", sampler="s",
              window=2, stride=1, num_samples=2, dataset="synthetic", scoring="road(noise=0.01)", num_seeds=1)


def fake_results(n_clusters=20):
    """Two images (clean, noise) per source; area: centre (a control) 0.5, pda 0.3, good 0.8, edge 0.1."""
    rng = np.random.default_rng(0)
    level = {"pda": 0.3, "good": 0.8, "edge": 0.1, "centre": 0.5}
    out = []
    for c in range(n_clusters):
        shift = rng.normal(0, 0.05)
        for g, group in enumerate(("clean", "noise")):
            wrong = c % 4 == 0 and group == "noise"
            rec = {}
            for m, v in level.items():
                a = v + shift + rng.normal(0, 0.02)
                rec[m] = {"area_between": a, "ut_area": a / 2, "positive": 10, "ut_gain": [a / 10, a / 5],
                          "removal_gain": [a / 10, a / 6], "corrected": {"ut": [False, wrong and m == "good"]},
                          "margin_gain": {"uc": [a, a]}}
            out.append({"id": f"{c}/{group}", "cluster": f"src{c}", "group": group, "label": c % 3,
                        "prediction": (c + 1) % 3 if wrong else c % 3, "p_target": 0.5 if wrong else 0.9995,
                        "p_competitor": 0.4 if wrong else 0.0001, "skipped": {}, "seeds": [rec],
                        "passes": {**{m: {"build": 10 + c, "gradient": 0, "score": 100} for m in level},
                                   "shared": {"build": 2, "gradient": 0, "score": 1}}})
    return out


def test_the_summary_reports_passes_per_image_by_method(tmp_path):
    res = fake_results(n_clusters=4)                      # builds 10..13 per image: mean 11.5
    res[0]["passes"]["good"]["gradient"] = 80             # one image of 8: mean 10
    md = summary.write_summary(tmp_path, res, CONFIG)["markdown"].read_text()
    table = md.split("## Classifier passes per image")[1].split("\n## ")[0]
    assert "| pda | 12 | 0 | 100 | 112 |" in table        # 11.5 rounds to even: 12
    assert "| good | 12 | 10 | 100 | 112 |" in table
    assert "| shared | 2 | 0 | 1 | 3 |" in table
    assert "| **all** | 48 | 10 | 401 | 449 |" in table   # 4 × 11.5 + 2; 4 × 100 + 1


def test_summary_without_controls_omits_the_margin_and_lists_the_holm_family(tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "CONTROLS", ())
    res = fake_results()
    paths = summary.write_summary(tmp_path, res, CONFIG)
    md = paths["markdown"].read_text()
    assert "No model-free control in this run" in md and "| verdict |" not in md
    assert "Holm family (m = 6)" in md and "- `ut_area`: pda − good" in md and "- `area_between`: pda − centre" in md
    rows = list(csv.DictReader(paths["comparisons_csv"].open()))
    fam = [r for r in rows if r["in_family"] == "True"]
    assert len(fam) == 6 and all(r["metric"] in ("ut_area", "area_between") and r["q"] == "" for r in fam)
    assert all(r["p_holm"] == "nan" for r in rows if r["in_family"] == "False")
    assert "not in family" in paths["comparisons"].read_text()
    # the unit: 20 clusters of 2 images; correction on the 5 misclassified images (5 clusters)
    summ = list(csv.DictReader(paths["csv"].open()))
    area = next(r for r in summ if r["metric"] == "area_between" and r["method"] == "pda" and r["split"] == "")
    assert (area["n"], area["n_clusters"]) == ("40", "20")
    corr = next(r for r in summ if r["metric"] == "correction_rate:ut" and r["method"] == "good" and r["q"] == "25.0"
                and r["split"] == "")
    assert (corr["n"], corr["n_clusters"], float(corr["mean"])) == ("5", "5", 1.0)
    supp = next(r for r in summ if r["metric"] == "margin_gain:uc" and r["method"] == "pda" and r["split"] == "")
    assert supp["n"] == "5"                                    # p(c) >= 0.01 only on the misclassified copies
    assert "the 5 misclassified images only; suppression on the 5 images" in md
    for split in ("| group=clean |", "| group=noise |", "| class=2 |", "| p(t) ≥ 0.999 |", "| misclassified |",
                  "| correct |"):
        assert split in md, split


def test_margin_over_the_best_control_and_methods_that_do_not_beat_it(tmp_path, monkeypatch):
    monkeypatch.setattr(methods, "CONTROLS", ("edge", "centre"))
    paths = summary.write_summary(tmp_path, fake_results(), CONFIG)
    rows = list(csv.DictReader(paths["comparisons_csv"].open()))
    margin = {r["method"]: r for r in rows if r["metric"] == "area_between" and r["versus"] == summary.BEST_CONTROL}
    assert set(margin) == {"pda", "good"} and {r["control"] for r in margin.values()} == {"centre"}   # best: centre
    assert float(margin["pda"]["mean"]) == pytest.approx(-0.2, abs=0.02) and margin["pda"]["n_clusters"] == "20"
    assert float(margin["good"]["mean"]) == pytest.approx(0.3, abs=0.02)
    assert margin["pda"]["in_family"] == margin["good"]["in_family"] == "True"
    md = paths["markdown"].read_text()
    line = next(x for x in md.splitlines() if x.startswith("| `area_between` |  | pda | centre |"))
    assert "**does not beat the best control**" in line
    line = next(x for x in md.splitlines() if x.startswith("| `area_between` |  | good | centre |"))
    assert "| beats the best control |" in line
    # family: pda vs good (the only non-control other), and pda, good vs the best control, per metric
    assert "Holm family (m = 6)" in md and "- `area_between`: good − best control (centre)" in md


def test_results_without_cluster_are_refused(tmp_path):
    res = fake_results(3)
    del res[0]["cluster"]
    with pytest.raises(ValueError, match="cluster"):
        summary.write_summary(tmp_path, res, CONFIG)
