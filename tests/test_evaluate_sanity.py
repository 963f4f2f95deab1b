"""Sanity checks: layer order from the traced model, cascading randomisation, Spearman ρ, random logit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import undesirable_jax as uj
from undesirable_jax.evaluate import baselines, sanity


def _toy():
    """Two dense layers whose names sort against their order: 'z_first' runs before 'a_last'."""
    def fn(p, x):
        h = jnp.tanh(x.reshape(x.shape[0], -1) @ p["z_first"]["w"] + p["z_first"]["b"])
        return h @ p["a_last"]["w"]

    k = jax.random.split(jax.random.key(0), 3)
    params = {"a_last": {"w": jax.random.normal(k[0], (5, 3))},
              "z_first": {"w": 2.0 * jax.random.normal(k[1], (12, 5)), "b": jnp.zeros(5)}}
    return uj.from_function(fn, params)


def test_layer_order_follows_the_computation_not_the_names():
    assert sanity.layer_order(_toy(), (2, 2, 3)) == ["z_first", "a_last"]


def test_cascade_is_top_first_and_keeps_earlier_draws():
    clf = _toy()
    stages = list(sanity.cascading_randomisation(clf, jax.random.key(1), input_shape=(2, 2, 3)))
    assert [s[0] for s in stages] == [(), ("a_last",), ("a_last", "z_first")]
    p0, p1, p2 = (s[1].params for s in stages)
    assert np.array_equal(p0["a_last"]["w"], clf.params["a_last"]["w"])
    assert not np.array_equal(p1["a_last"]["w"], p0["a_last"]["w"])
    assert np.array_equal(p1["z_first"]["w"], p0["z_first"]["w"])                 # not yet randomised
    assert np.array_equal(p2["a_last"]["w"], p1["a_last"]["w"])                   # earlier draw kept
    assert float(jnp.std(p2["z_first"]["w"])) == pytest.approx(float(jnp.std(p0["z_first"]["w"])), rel=0.4)
    assert np.array_equal(p2["z_first"]["b"], np.zeros(5))                          # std 0 stays 0
    again = list(sanity.cascading_randomisation(clf, jax.random.key(1), layers=["a_last", "z_first"]))
    assert np.array_equal(again[2][1].params["z_first"]["w"], p2["z_first"]["w"])   # deterministic by key
    with pytest.raises(ValueError, match="layers"):
        sanity.randomise_layers(clf, ["nope"], jax.random.key(0))
    with pytest.raises(TypeError, match="params"):
        next(iter(sanity.cascading_randomisation(lambda x: x, jax.random.key(0), layers=[])))


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, (6, 7)).astype(np.float32)             # many ties
    b = a + rng.integers(0, 3, (6, 7))
    assert sanity.spearman_maps(a, b) == pytest.approx(scipy.stats.spearmanr(a.ravel(), b.ravel())[0], abs=1e-6)
    c = rng.standard_normal((6, 7))
    assert sanity.spearman_maps(c, -c) == pytest.approx(-1.0, abs=1e-6)
    assert sanity.spearman_maps(c, -c, absolute=True) == pytest.approx(1.0, abs=1e-6)
    assert np.isnan(sanity.spearman_maps(np.zeros((3, 3)), c[:3, :3]))
    with pytest.raises(ValueError, match="shape"):
        sanity.spearman_maps(np.zeros((2, 2)), np.zeros((2, 3)))


def test_random_other_class_is_never_top_and_uniform():
    probs = jnp.array([0.1, 0.6, 0.2, 0.1])
    keys = jax.random.split(jax.random.key(0), 3000)
    picks = np.asarray(jax.vmap(lambda k: sanity.random_other_class(probs, k))(keys))
    assert not np.any(picks == 1)
    counts = np.bincount(picks, minlength=4)[[0, 2, 3]]
    assert scipy.stats.chisquare(counts).pvalue > 1e-3


def test_digits_maps_decorrelate_under_cascading_randomisation():
    """Gradient × input and PDA's signed evidence (window 2, stride 2, S = 1, constant 0) on the shipped
    digits CNN: ρ = 1 at stage 0, below 0.5 on average once every layer is random."""
    from undesirable_jax import models
    from undesirable_jax.data import digits

    m = models.load("digits_cnn")
    data = digits("test")
    images = [m.preprocess(data[i].image).image for i in range(4)]
    finals = {"gradient_input": [], "pda": []}
    for n, image in enumerate(images):
        t = int(jnp.argmax(m.classifier(jnp.asarray(image)[None])[0]))
        makers = {
            "gradient_input": lambda clf: baselines.gradient_input(clf, image, [t])[0],
            "pda": lambda clf: uj.explain(clf, image, window=2, stride=2, sampler=uj.samplers.constant(0.0),
                                          num_samples=1, key=jax.random.key(0), classes=[t]).evidence[0],
        }
        for name, make in makers.items():
            rows = sanity.randomisation_rhos(make, m.classifier, jax.random.key(n), input_shape=m.input_shape)
            assert rows[0].rho == pytest.approx(1.0, abs=1e-6) and rows[0].layers == ()
            assert rows[1].layers == ("params/Dense_0",) and len(rows) == 4
            finals[name].append(rows[-1].rho)
    for name, rhos in finals.items():
        assert np.mean(rhos) < 0.5, (name, rhos)


def test_a_map_that_is_the_image_fails_by_abs_rho_ssim_and_the_image_test():
    """A 'method' whose map is the image's grey intensity whatever the model: every randomisation stage
    keeps ρ = |ρ| = SSIM = 1 against the trained map and |ρ| = 1 against the image, so it is flagged."""
    clf = _toy()
    image = np.random.default_rng(4).uniform(size=(2, 2, 3)).astype(np.float32)
    rows = sanity.randomisation_rhos(lambda c: image.sum(-1), clf, jax.random.key(0), input_shape=(2, 2, 3),
                                     image=image)
    last = rows[-1]
    assert len(rows) == 3 and last.layers == ("a_last", "z_first")
    assert last.rho == pytest.approx(1.0) and last.abs_rho == pytest.approx(1.0) and last.ssim == pytest.approx(1.0)
    assert last.rho_image == pytest.approx(1.0) and last.abs_rho_image == pytest.approx(1.0)
    assert sanity.fails(last.abs_rho, last.ssim, last.abs_rho_image)
    assert not sanity.fails(0.1, 0.2, 0.3) and not sanity.fails(float("nan"), 0.1, 0.1)


def test_ssim_matches_a_direct_numpy_formula_and_ignores_scale_and_sign():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(9, 7)), rng.normal(size=(9, 7))
    assert sanity.ssim(a, a) == pytest.approx(1.0) and sanity.ssim(a, -3.0 * a) == pytest.approx(1.0, abs=1e-6)
    na, nb = np.abs(a) / np.abs(a).max(), np.abs(b) / np.abs(b).max()
    blur = lambda x: np.asarray(uj.samplers.gaussian_blur(jnp.asarray(x[..., None], jnp.float32), 1.5))[..., 0]
    ma, mb = blur(na), blur(nb)
    va, vb, cov = blur(na * na) - ma ** 2, blur(nb * nb) - mb ** 2, blur(na * nb) - ma * mb
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    want = np.mean((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    assert sanity.ssim(a, b) == pytest.approx(want, abs=1e-5) and sanity.ssim(a, b) < 0.5


def test_compare_maps_reports_every_measure():
    rng = np.random.default_rng(2)
    ref, other = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    image = rng.uniform(size=(5, 5, 2))
    got = sanity.compare_maps(ref, other, image)
    assert set(got) == {"rho", "abs_rho", "ssim", "rho_image", "abs_rho_image"}
    assert got["rho"] == pytest.approx(scipy.stats.spearmanr(ref.ravel(), other.ravel())[0], abs=1e-6)
    abs_rho = scipy.stats.spearmanr(np.abs(ref).ravel(), np.abs(other).ravel())[0]
    assert got["abs_rho"] == pytest.approx(abs_rho, abs=1e-6)
    assert got["rho_image"] == pytest.approx(scipy.stats.spearmanr(image.sum(-1).ravel(), other.ravel())[0], abs=1e-6)
    assert set(sanity.compare_maps(ref, other)) == {"rho", "abs_rho", "ssim"}


def test_summary_sanity_table_splits_correct_and_misclassified_and_flags_failures():
    from undesirable_jax.evaluate import summary

    close = {"rho": 0.9, "abs_rho": 0.95, "ssim": 0.9, "rho_image": 0.8, "abs_rho_image": 0.9}
    far = {"rho": 0.0, "abs_rho": 0.1, "ssim": 0.1, "rho_image": 0.0, "abs_rho_image": 0.2}
    results = [{"label": 1, "prediction": p, "sanity": {
        "image_map": {"trained": close, "randomise:top": close, "randomise:bottom": close},
        "good": {"trained": close, "randomise:top": close, "randomise:bottom": dict(far, rho=0.1 * i)}}}
        for i, p in enumerate([1, 1, 0])]
    rows = summary.sanity_table(results)
    row = {(r["method"], r["check"], r["group"]): r for r in rows}
    assert row[("good", "randomise:bottom", "all")]["n"] == 3 and row[("good", "randomise:bottom", "correct")]["n"] == 2
    assert row[("good", "randomise:bottom", "misclassified")]["rho"] == pytest.approx(0.2)
    assert row[("good", "randomise:bottom", "correct")]["rho"] == pytest.approx(0.05)
    assert row[("image_map", "randomise:bottom", "all")]["fails"] == "yes"
    assert row[("good", "randomise:bottom", "all")]["fails"] == "no"
    assert row[("good", "randomise:top", "all")]["fails"] == ""          # only the last stage decides
    text = summary.sanity_markdown(rows)
    assert "Methods that fail: image_map." in text and "≥ 0.5" in text
