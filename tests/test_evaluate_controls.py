"""The added methods end to end through the runner: model-free controls on the digits CNN, their sanity
records, and black boxes skipping every gradient method."""

import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import evaluate as ev
from undesirable_jax.evaluate import methods, runner


def test_each_control_is_scored_end_to_end_on_the_digits_cnn_and_fails_the_sanity_check():
    from undesirable_jax import data, models

    m = models.load("digits_cnn")
    ex = data.digits("test")[0]
    image = np.asarray(m.preprocess(ex.image).image, np.float32)
    names = (*methods.CONTROLS, "gradient_ref")
    config = ev.EvalConfig(model="digits_cnn", window=2, stride=2, num_samples=1, methods=names, num_seeds=1,
                           scoring_draws=1, percents=(10.0, 50.0), curve_steps=4)
    rec = runner.evaluate_image(m.classifier, image, int(ex.label), config, uj.samplers.constant(0.0), "d0",
                                sanity=True)
    assert rec["skipped"] == {} and set(rec["seeds"][0]) == set(names)
    grey = image.sum(-1)
    expected_positive = {"neg_x": int(np.sum(-grey > 0)), "centre_distance": 64,
                         "sobel": int(np.sum(np.asarray(ev.baselines.control_map("sobel", image)) > 0))}
    for name in methods.CONTROLS:
        s = rec["seeds"][0][name]
        assert len(s["removal_gain"]) == 2 and np.all(np.isfinite(s["removal_gain"] + s["lerf_gain"]))
        assert len(s["curve_morf"]) == 5 and s["own_gain"] is None
        if name in expected_positive:
            assert s["positive"] == expected_positive[name], name
        checks = rec["sanity"][name]
        stages = [c for c in checks if c.startswith("randomise:")]
        assert len(stages) == 3 and "random_logit" in checks
        for c in stages:                       # a map from the image alone does not change with the model
            assert checks[c]["rho"] == pytest.approx(1.0) and checks[c]["ssim"] == pytest.approx(1.0)
    assert rec["sanity"]["neg_x"]["trained"]["rho_image"] == pytest.approx(-1.0)
    grad_last = rec["sanity"]["gradient_ref"][stages[-1]]
    assert grad_last["rho"] < 0.9 and set(grad_last) == {"rho", "abs_rho", "ssim", "rho_image", "abs_rho_image"}


def test_a_black_box_skips_every_gradient_method_with_the_message():
    def planted(x):
        a = x[:, 1:4, 1:4, 0].mean((1, 2))
        return jnp.stack([2.0 * a, jnp.full_like(a, 0.5), -a], axis=-1)

    box = uj.black_box(lambda x: np.asarray(planted(jnp.asarray(x))), num_classes=3, name="planted")
    names = (*methods.NEEDS_GRADIENTS, "neg_x")
    assert set(methods.NEEDS_GRADIENTS) == {"gradient_input", "gradient_ref", "integrated_gradients", "smoothgrad"}
    config = ev.EvalConfig(model="box", window=2, stride=2, num_samples=1, methods=names, num_seeds=1,
                           scoring_draws=1, percents=(10.0,), curve_steps=2)
    image = np.random.default_rng(0).uniform(size=(6, 6, 1)).astype(np.float32)
    rec = runner.evaluate_image(box, image, 0, config, uj.samplers.constant(0.0), "b0")
    assert set(rec["seeds"][0]) == {"neg_x"}
    for name in methods.NEEDS_GRADIENTS:
        assert rec["skipped"][name] == f"{name} skipped: the classifier declares no gradients (differentiable = False)"


def test_config_checks_the_methods_settings():
    base = dict(model="m", window=2, stride=1)
    with pytest.raises(ValueError, match="sobol_designs"):
        ev.EvalConfig(**base, sobol_designs=24)
    with pytest.raises(ValueError, match="ig_steps"):
        ev.EvalConfig(**base, ig_steps=0)
    with pytest.raises(ValueError, match="smoothgrad_sigma"):
        ev.EvalConfig(**base, smoothgrad_sigma=-0.1)
    assert ev.EvalConfig(**base).methods[-4:] == methods.CONTROLS
