"""Paired statistics against scipy and hand computations."""

import jax
import numpy as np
import pytest
import scipy.stats

from undesirable_jax.evaluate import stats


def test_holm_on_a_hand_worked_example():
    # sorted p: 0.01, 0.02, 0.03, 0.04 (m = 4): 4·0.01 = 0.04, 3·0.02 = 0.06, 2·0.03 = 0.06, 1·0.04 = 0.04
    # running max -> 0.04, 0.06, 0.06, 0.06; returned in the input's order
    got = stats.holm([0.03, 0.01, 0.04, 0.02])
    np.testing.assert_allclose(got, [0.06, 0.04, 0.06, 0.06])
    np.testing.assert_allclose(stats.holm([0.5, 0.4]), [0.8, 0.8])
    np.testing.assert_allclose(stats.holm([0.9, 0.6, 0.001]), [1.0, 1.0, 0.003])
    with pytest.raises(ValueError, match="pvalues"):
        stats.holm([0.1, 1.5])


def test_holm_brute_force_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        p = rng.random(7) ** 3
        m, order = len(p), np.argsort(p)
        expect = np.empty(m)
        for i in range(m):
            expect[order[i]] = min(1.0, max((m - j) * p[order[j]] for j in range(i + 1)))
        np.testing.assert_allclose(stats.holm(p), expect)


def test_wilcoxon_matches_scipy_and_all_zero_is_one():
    rng = np.random.default_rng(1)
    d = rng.standard_normal(40) + 0.4
    assert stats.wilcoxon_p(d) == pytest.approx(scipy.stats.wilcoxon(d).pvalue)
    d[:5] = 0.0
    assert stats.wilcoxon_p(d) == pytest.approx(scipy.stats.wilcoxon(d, zero_method="wilcox").pvalue)
    assert stats.wilcoxon_p(np.zeros(12)) == 1.0
    with pytest.raises(ValueError, match="diffs"):
        stats.wilcoxon_p([0.1, np.nan])


def test_bootstrap_is_deterministic_and_close_to_scipy_percentile():
    rng = np.random.default_rng(2)
    d = rng.exponential(1.0, 60) - 0.7
    a = stats.paired_bootstrap_ci(d, 7, n_boot=4000)
    assert a == stats.paired_bootstrap_ci(d, 7, n_boot=4000)
    assert a != stats.paired_bootstrap_ci(d, 8, n_boot=4000)
    k = stats.paired_bootstrap_ci(d, jax.random.key(3), n_boot=4000)
    assert k == stats.paired_bootstrap_ci(d, jax.random.key(3), n_boot=4000)
    ref = scipy.stats.bootstrap((d,), np.mean, n_resamples=4000, method="percentile",
                                rng=np.random.default_rng(0)).confidence_interval
    assert a[0] == pytest.approx(ref.low, abs=0.03) and a[1] == pytest.approx(ref.high, abs=0.03)
    assert a[0] < d.mean() < a[1]


def test_bootstrap_interval_covers_the_true_mean_about_95_percent():
    rng = np.random.default_rng(3)
    hits = 0
    for i in range(300):
        d = rng.standard_normal(40) + 0.25
        lo, hi = stats.paired_bootstrap_ci(d, i, n_boot=1000)
        hits += lo <= 0.25 <= hi
    assert 0.89 <= hits / 300 <= 0.985        # percentile bootstrap runs a little narrow at n = 40


def test_paired_table_rows_seeds_and_holm():
    rng = np.random.default_rng(4)
    n = 50
    base = rng.standard_normal(n)
    scores = {
        "good": np.stack([base + 1.0 + 0.1 * rng.standard_normal(n) for _ in range(3)]),   # [seeds, n]
        "bad": base + 0.1 * rng.standard_normal(n),
    }
    rnd = base + 0.05 * rng.standard_normal(n)
    rows = stats.paired_table(scores, nulls={"random": rnd}, n_boot=2000, family="all")
    names = [(r.a, r.b) for r in rows]
    assert names == [("good", "bad"), ("good", "zero"), ("good", "random"), ("bad", "zero"), ("bad", "random")]
    first = rows[0]
    d = scores["good"].mean(0) - scores["bad"]
    assert first.mean == pytest.approx(d.mean()) and first.n_images == first.n_clusters == n
    assert first.p == pytest.approx(scipy.stats.wilcoxon(d).pvalue)
    assert first.ci_low < 1.0 < first.ci_high and first.p_holm < 1e-6
    np.testing.assert_allclose([r.p_holm for r in rows], stats.holm([r.p for r in rows]))
    assert rows == stats.paired_table(scores, nulls={"random": rnd}, n_boot=2000, family="all")   # deterministic
    assert "| good | bad |" in stats.table_markdown(rows)


def test_paired_table_drops_nonfinite_pairs_and_reports_n():
    a = np.array([1.0, 2.0, np.nan, 4.0])
    b = np.array([0.0, np.nan, 1.0, 1.0])
    rows = stats.paired_table({"a": a, "b": b}, n_boot=200, family="all")
    assert rows[0].n_images == 2 and rows[0].mean == pytest.approx(2.0)
    # dropped before clustering: cluster 1 holds only the two non-finite pairs and disappears
    r = stats.paired(a, b, clusters=np.array([0, 1, 1, 2]), key=0, n_boot=200)
    assert (r.n_images, r.n_clusters) == (2, 2) and r.mean == pytest.approx(2.0)


def test_confidence_bins_partition():
    p = np.array([0.1, 0.9, 0.95, 0.999, 0.9995, 0.89999])
    bins = stats.confidence_bins(p)
    assert list(bins) == ["p(t) < 0.9", "0.9 ≤ p(t) < 0.999", "p(t) ≥ 0.999"]
    assert np.array_equal(bins["p(t) < 0.9"], [1, 0, 0, 0, 0, 1])
    assert np.array_equal(bins["0.9 ≤ p(t) < 0.999"], [0, 1, 1, 0, 0, 0])
    assert np.array_equal(sum(b.astype(int) for b in bins.values()), np.ones(6))


def _copies(rng, effects, copies, noise):
    """Per-image scores a, b and cluster ids for clusters of near-identical copies."""
    clusters = np.repeat(np.arange(len(effects)), copies)
    b = rng.standard_normal(clusters.size)
    a = b + np.repeat(effects, copies) + noise * rng.standard_normal(clusters.size)
    return a, b, clusters


def test_copies_significant_per_image_are_not_significant_per_cluster():
    # 10 source images x 100 near-identical copies; 6 sources favour a, 4 favour b by about as much
    rng = np.random.default_rng(5)
    effects = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, -1.5, -2.5, -3.5, -4.5]) * 0.01
    a, b, clusters = _copies(rng, effects, 100, 1e-4)
    per_image = stats.paired(a, b, key=0, n_boot=500)
    per_cluster = stats.paired(a, b, clusters=clusters, key=0, n_boot=500)
    assert per_image.p < 1e-6 and per_image.n_clusters == per_image.n_images == 1000
    assert per_cluster.p > 0.05 and (per_cluster.n_images, per_cluster.n_clusters) == (1000, 10)
    assert per_cluster.ci_low < 0.0 < per_cluster.ci_high       # the interval covers 0 as well
    assert per_image.ci_low > 0.0                                 # while the per-image one does not
    rows = stats.paired_table({"a": a, "b": b}, clusters=clusters, family=[("a", "b")], n_boot=500)
    first = rows[0]
    assert (first.a, first.b, first.in_family) == ("a", "b", True)
    assert first.p_holm > 0.05 and first.n_clusters == 10
    assert "not in family" in stats.table_markdown(rows)


def test_cluster_bootstrap_against_a_hand_computation():
    rng = np.random.default_rng(6)
    clusters = np.array(["q", "a", "q", "m", "a", "a", "z", "m"])     # uneven sizes, unsorted labels
    a, b = rng.standard_normal(8), rng.standard_normal(8)
    got = stats.paired(np.stack([a, a + 0.2]), b, clusters=clusters, key=(3, 1), n_boot=400, level=0.9)
    # by hand: seeds averaged, differences averaged per cluster (sorted labels a, m, q, z), then
    # 400 resamples of the 4 cluster means drawn exactly as the docstring says
    d = (a + a + 0.2) / 2 - b
    means = np.array([np.mean([d[i] for i in range(8) if clusters[i] == c]) for c in ("a", "m", "q", "z")])
    idx = np.random.default_rng([3, 1]).integers(0, 4, (400, 4))
    boot = np.array([sum(means[j] for j in row) / 4 for row in idx])
    lo, hi = np.quantile(boot, [0.05, 0.95])
    assert got.mean == pytest.approx(means.mean(), abs=1e-12)
    assert (got.ci_low, got.ci_high) == (pytest.approx(lo, abs=1e-12), pytest.approx(hi, abs=1e-12))
    assert got.p == pytest.approx(scipy.stats.wilcoxon(means).pvalue)
    assert (got.n_images, got.n_clusters) == (8, 4)


def test_effect_size_dz_against_a_hand_computation():
    clusters = np.array([0, 0, 1, 2, 2, 2])
    d = np.array([1.0, 3.0, -1.0, 0.5, 1.5, 4.0])                       # cluster means 2, -1, 2
    got = stats.paired(d, np.zeros(6), clusters=clusters, key=0, n_boot=100)
    mean = (2.0 - 1.0 + 2.0) / 3.0
    sd = np.sqrt(((2.0 - mean) ** 2 + (-1.0 - mean) ** 2 + (2.0 - mean) ** 2) / 2.0)
    assert got.d_z == pytest.approx(mean / sd, abs=1e-12)
    assert stats.effect_size_dz([0.3, 0.3, 0.3]) != stats.effect_size_dz([0.3, 0.3, 0.3])   # SD 0: NaN
    assert np.isnan(stats.effect_size_dz([0.3]))                                              # one unit: NaN


def test_holm_family_is_declared_and_checked():
    rng = np.random.default_rng(7)
    scores = {m: rng.standard_normal(30) + k for k, m in enumerate(("x", "y", "w"))}
    rows = stats.paired_table(scores, family=[("x", "y"), ("y", "w")], n_boot=200)
    inside = [r for r in rows if r.in_family]
    assert [(r.a, r.b) for r in inside] == [("x", "y"), ("y", "w")]
    np.testing.assert_allclose([r.p_holm for r in inside], stats.holm([r.p for r in inside]))
    assert all(np.isnan(r.p_holm) for r in rows if not r.in_family)
    with pytest.raises(ValueError, match="family"):
        stats.paired_table(scores, family=[("x", "nope")], n_boot=200)
    with pytest.raises(ValueError, match="clusters"):
        stats.paired(scores["x"], scores["y"], clusters=[0, 1], key=0)
