"""Independent scoring: disjoint key streams, perturbations, both orders, and a planted-region check."""

import csv
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import evaluate as ev
from undesirable_jax.classifiers import as_classifier
from undesirable_jax.data import Example
from undesirable_jax.evaluate import keys, methods, metrics, runner

H = W = 8


def planted(x):
    """Class 0 is seen in region A (top left); the bright hindering region H (bottom right) lowers its logit."""
    a = x[:, 0:3, 0:3, 0].mean((1, 2))
    h = x[:, 5:8, 5:8, 0].mean((1, 2))
    return jnp.stack([4.0 * a - 6.0 * h + 2.0, jnp.full_like(a, 0.5), 2.0 * h - 1.0], axis=-1)


def planted_images(n):
    """A dim background, a bright A and a bright H, with a little noise per image; label 0."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        img = 0.2 + 0.05 * rng.standard_normal((H, W, 1))
        img[0:3, 0:3] = 0.9
        img[5:8, 5:8] = 0.9 + 0.05 * rng.standard_normal((3, 3, 1))
        out.append(Example(id=f"planted/{i}", image=img.astype(np.float32), label=0))
    return out


CONFIG = ev.EvalConfig(model="planted", window=3, stride=1, num_samples=2, seed=0, dataset="planted",
                       methods=("pda", "occlusion", "random"), percents=(5.0, 10.0), curve_steps=4,
                       num_seeds=1, scoring_draws=2, occlusion_value=0.2)
SAMPLER = uj.samplers.constant(0.2)


def key_bytes(k):
    k = jnp.asarray(k) if not isinstance(k, jax.Array) else k
    data = np.asarray(jax.random.key_data(k))
    return [tuple(row.tolist()) for row in data.reshape(-1, data.shape[-1])]


def test_build_score_and_rank_keys_come_from_disjoint_streams(monkeypatch):
    seen = {"build": [], "score": [], "rank": []}

    def recorder(stream, fn, pos, name):
        def wrapped(*args, **kwargs):
            seen[stream] += key_bytes(kwargs[name] if name in kwargs else args[pos])
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(methods, "explain_batch", recorder("build", methods.explain_batch, None, "key"))
    monkeypatch.setattr(methods.baselines, "rise", recorder("build", methods.baselines.rise, 4, "key"))
    monkeypatch.setattr(methods.baselines, "random_maps", recorder("build", methods.baselines.random_maps, 0, "key"))
    monkeypatch.setattr(methods.baselines, "smoothgrad", recorder("build", methods.baselines.smoothgrad, 3, "key"))
    monkeypatch.setattr(methods.baselines, "sobol", recorder("build", methods.baselines.sobol, 4, "key"))
    monkeypatch.setattr(methods, "fill_image", recorder("build", methods.fill_image, 3, "key"))
    monkeypatch.setattr(runner, "fill_image", recorder("score", runner.fill_image, 3, "key"))
    monkeypatch.setattr(metrics, "perturbed_probs", recorder("score", metrics.perturbed_probs, 4, "keys"))
    monkeypatch.setattr(metrics, "_method_places", recorder("rank", metrics._method_places, 2, "key"))
    config = dataclasses.replace(CONFIG, methods=ev.METHODS, num_seeds=2, rise_masks=8, rise_cells=2)
    sampler = uj.samplers.marginal(np.random.default_rng(0).uniform(size=(3, H, W, 1)))
    for ex in planted_images(2):
        runner.evaluate_image(planted, ex.image, ex.label, config, sampler, ex.id)
    sets = {k: set(v) for k, v in seen.items()}
    assert all(sets.values()), {k: len(v) for k, v in sets.items()}
    assert not sets["build"] & sets["score"]
    assert not sets["build"] & sets["rank"] and not sets["score"] & sets["rank"]
    # PDA (1 key), RISE (mask key + fill key), random, SmoothGrad (noise key), Sobol (design key + fill key):
    # 7 build keys per image and seed, all distinct.
    assert len(sets["build"]) == len(seen["build"]) == 2 * 2 * 7


def test_stream_keys_differ_by_stream_image_and_repeat():
    ks = [keys.stream_key(0, s, i, r) for s in ("build", "score") for i in ("a", "b") for r in (0, 1)]
    assert len({b for k in ks for b in key_bytes(k)}) == len(ks)
    with pytest.raises(ValueError, match="stream"):
        keys.stream_key(0, "fill", "a")


@pytest.mark.parametrize("kind", ["constant", "blur"])
def test_constant_and_blur_perturbations_touch_only_removed_pixels(kind):
    img = jax.random.uniform(jax.random.key(0), (5, 6, 2))
    removed = jnp.zeros((5, 6), bool).at[1:3, 2:5].set(True)
    p = ev.Perturbation(kind, value=0.5, sigma=1.0)
    out = np.asarray(p.apply(img, removed, jax.random.key(1)))
    np.testing.assert_array_equal(out[~np.asarray(removed)], np.asarray(img)[~np.asarray(removed)])
    fill = np.full((5, 6, 2), 0.5) if kind == "constant" else np.asarray(uj.samplers.gaussian_blur(img, 1.0))
    np.testing.assert_allclose(out[np.asarray(removed)], fill[np.asarray(removed)], rtol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        ev.Perturbation("mean")


@pytest.mark.parametrize("kind, in_turn", [("road", True), ("road", False), ("constant", None), ("blur", True)])
def test_perturbed_probs_equal_a_direct_loop(kind, in_turn):
    """Every (ranking, count, draw) image built by hand and classified on its own: one fill per removal
    shared by its draws, deterministic kinds classified once, in turn or vectorised alike."""
    img = jax.random.uniform(jax.random.key(2), (H, W, 1))
    places = jnp.stack([jax.random.permutation(jax.random.key(i), H * W) for i in range(2)]).astype(jnp.int32)
    counts = jnp.asarray([0, 5, 64])
    ks = keys.part_keys(jax.random.key(3), 3)
    pert = ev.Perturbation(kind, noise=0.05, value=0.3, sigma=1.5)
    got = np.asarray(ev.removal.perturbed_probs(as_classifier(planted), img, places, counts, ks,
                                                perturbation=pert, batch_size=5, in_turn=in_turn))
    for j in range(2):
        for f, n in enumerate([0, 5, 64]):
            removed = (places[j] < n).reshape(H, W)
            if kind == "road":
                filled = [ev.road_impute(img, removed, k, noise=0.05) for k in ks]
            else:
                fill = jnp.full_like(img, 0.3) if kind == "constant" else uj.samplers.gaussian_blur(img, 1.5)
                filled = [jnp.where(removed[..., None], fill, img)]
            want = np.mean([np.asarray(jax.nn.softmax(planted(x[None])[0])) for x in filled], axis=0)
            np.testing.assert_allclose(got[j, f], want, rtol=1e-4, atol=1e-6)


def test_planted_region_rises_undesirable_first_and_beats_random(tmp_path):
    ids = ev.run(tmp_path, planted_images(8), planted, CONFIG, SAMPLER, progress=False)
    res = runner.load_results(tmp_path)
    assert len(res) == len(ids) == 8
    for r in res:
        pda = r["seeds"][0]["pda"]
        assert pda["removal_gain"][1] > 0 > pda["lerf_gain"][1]          # MoRF raises p(t), LeRF lowers it
        assert pda["area_between"] > 0
        assert pda["positive"] >= 9                                       # the planted 3×3 region at least
    rows = list(csv.DictReader((tmp_path / "comparisons.csv").open()))
    pair = next(r for r in rows if r["metric"] == "removal_gain" and r["method"] == "pda" and r["versus"] == "random"
                and float(r["q"]) == 10.0)
    assert float(pair["mean"]) > 0 and float(pair["p"]) < 0.05


def test_black_box_classifier_skips_gradient_input_with_a_message(tmp_path):
    box = uj.black_box(lambda x: np.asarray(planted(jnp.asarray(x))), num_classes=3, name="planted")
    assert box.differentiable is False
    config = dataclasses.replace(CONFIG, methods=("gradient_input", "random"))
    ev.run(tmp_path, planted_images(2), box, config, SAMPLER, progress=False)
    res = runner.load_results(tmp_path)
    assert all(set(r["seeds"][0]) == {"random"} and "gradient_input" in r["skipped"] for r in res)
    assert "gradient_input skipped" in (tmp_path / "summary.md").read_text()


def test_average_windows_scales_each_map_before_averaging():
    a = methods.SignedMaps(against=jnp.array([[2.0, -4.0]]), competitors={"uc": jnp.array([[1.0, 0.0]])}, own="sampler")
    b = methods.SignedMaps(against=jnp.array([[0.5, 0.25]]), competitors={"uc": jnp.zeros((1, 2)), "uc_plain": a.against},
                           own=0.0)
    avg = methods.average_windows([a, b])
    np.testing.assert_allclose(avg.against, [[(0.5 + 1.0) / 2, (-1.0 + 0.5) / 2]])
    np.testing.assert_allclose(avg.competitors["uc"], [[0.5, 0.0]])       # an all-zero map stays zero
    assert set(avg.competitors) == {"uc"} and avg.own is None
    with pytest.raises(ValueError, match="maps"):
        methods.average_windows([])


def test_ut_is_scored_on_its_own_support_apart_from_the_full_signed_order():
    """A logistic classifier p(t) = σ(Σ w·x) on a 4×4 image of ones, removal to 0: three pixels
    (w = −0.9, −0.6, −0.3) hinder t, so U_t has 3 pixels; q = 50 % (8 pixels) exceeds it."""
    w = np.full(16, 0.05)
    w[[5, 9, 2]] = [-0.9, -0.6, -0.3]
    w[[0, 1]] = [0.4, 0.2]                                      # the two most supporting pixels
    clf = as_classifier(lambda x: jnp.stack([jnp.einsum("nhwc,hw->n", x, jnp.asarray(w, jnp.float32).reshape(4, 4)),
                                             jnp.zeros(x.shape[0])], axis=-1))
    image = jnp.ones((4, 4, 1), jnp.float32)
    against = -w                                                # signed evidence against t = 0
    order = np.argsort(-against, kind="stable")                 # distinct values: 5, 9, 2, then supporting
    places = np.empty(16, np.int32)
    places[order] = np.arange(16)
    ut = jnp.asarray(places)
    got = metrics.score_rankings(clf, image, {"m": {"ut": ut, "uc": ut, "union": ut}}, 0, 1, 0, (10.0, 50.0), 3,
                                 ev.Perturbation("constant", value=0.0), jax.random.split(jax.random.key(0), 2),
                                 positives={"m": 3}, laplace_n=1e5, batch_size=8)["m"]

    def p_after(removed):
        keep = np.ones(16)
        keep[list(removed)] = 0.0
        return 1.0 / (1.0 + np.exp(-(w * keep).sum()))

    p0 = p_after([])
    assert got["positive"] == 3 and got["ut_within"] == [True, False]   # 10 %: 2 pixels; 50 %: 8 pixels
    np.testing.assert_allclose(got["ut_gain"], [p_after([5, 9]) - p0, p_after([5, 9, 2]) - p0], atol=1e-6)
    np.testing.assert_allclose(got["removal_gain"], [p_after([5, 9]) - p0, p_after(order[:8]) - p0], atol=1e-6)
    curve = [p_after(order[:k]) for k in (0, 1, 2, 3)]          # fractions 0, 1/3, 2/3, 1 of |U_t| = 3
    np.testing.assert_allclose(got["ut_curve"], curve, atol=1e-6)
    assert got["ut_area"] == pytest.approx(np.trapezoid(np.array(curve) - p0, [0, 1 / 3, 2 / 3, 1]), abs=1e-6)
    assert got["ut_gain"][1] > got["removal_gain"][1]          # the full order went on into supporting pixels
    assert got["corrected"]["ut"] == [True, True] and got["margin_gain"]["ut"][1] > got["margin_gain"]["signed"][1]
    empty = metrics.score_rankings(clf, image, {"m": {"ut": ut, "uc": ut, "union": ut}}, 0, 1, 0, (10.0,), 3,
                                   ev.Perturbation("constant", value=0.0), jax.random.split(jax.random.key(0), 2),
                                   positives={"m": 0}, laplace_n=1e5, batch_size=8)["m"]
    assert empty["ut_gain"] == [0.0] and empty["ut_area"] == 0.0 and empty["ut_within"] == [False]
