"""Small CNNs: the shipped parameters load and reach their accuracy; the training script reproduces them."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import safe_open

import undesirable_jax as uj
from undesirable_jax import data, models
from undesirable_jax.models import small_cnn, train_small_cnn


def _accuracy(model: models.LoadedModel, dataset) -> float:
    x = np.stack([model.preprocess(e.image).image for e in dataset])
    logits = jax.jit(lambda c, v: c(v))(model.classifier, jnp.asarray(x))
    return float(np.mean(np.argmax(np.asarray(logits), -1) == np.array([e.label for e in dataset])))


def _metadata(dataset: str) -> dict:
    with safe_open(str(small_cnn.shipped_weights_path(dataset)), "np") as f:
        return json.loads(f.metadata()["undesirable_jax"])


def test_shipped_digits_cnn_reaches_95_percent_on_held_out_digits():
    m = models.load("digits_cnn")
    assert m.input_shape == (8, 8, 1) and m.class_names == tuple("0123456789")
    assert isinstance(m.classifier, uj.Classifier)
    test = data.digits("test")
    acc = _accuracy(m, test)
    assert acc >= 0.95
    assert acc == pytest.approx(float(_metadata("digits")["test_accuracy"]), abs=1e-6)  # what the script reported
    assert small_cnn.shipped_weights_path("digits").stat().st_size < 100_000  # kilobytes


def test_shipped_lfw_cnn_separates_faces():
    m = models.load("lfw_cnn")
    acc = _accuracy(m, data.lfw("test"))
    assert acc >= 0.9
    assert acc == pytest.approx(float(_metadata("lfw")["test_accuracy"]), abs=1e-6)


def test_small_cnn_preprocess_takes_any_uint8_image():
    m = models.load("digits_cnn")
    e = data.digits("test")[3]
    p = m.preprocess(e.image)
    np.testing.assert_allclose(p.image[..., 0], e.image / 255.0, rtol=1e-6)
    rgb = m.preprocess(data.sample_image("coffee"))  # grey, box-resized to 8x8
    assert rgb.image.shape == (8, 8, 1) and 0 <= rgb.image.min() and rgb.image.max() <= 1
    assert rgb.to_original(rgb.image[..., 0]).shape == (400, 600)


@pytest.mark.slow
def test_training_script_reproduces_the_shipped_digits_params_without_touching_them(tmp_path, monkeypatch):
    shipped_path = small_cnn.shipped_weights_path("digits")
    before = Path(shipped_path).read_bytes()
    monkeypatch.chdir(tmp_path)
    result = train_small_cnn.main(["--dataset", "digits"])      # default --out: the current folder
    assert result.test_accuracy >= 0.95
    assert Path(shipped_path).read_bytes() == before
    new = models.checkpoints.load_state_dict(tmp_path / "digits_cnn.safetensors")
    shipped = models.checkpoints.load_state_dict(small_cnn.shipped_weights_path("digits"))
    assert new.keys() == shipped.keys()
    for k in shipped:  # bit-identical on the machine that made them; tiny float drift elsewhere
        np.testing.assert_allclose(new[k], shipped[k], atol=1e-3, err_msg=k)
    assert result.test_accuracy == pytest.approx(float(_metadata("digits")["test_accuracy"]), abs=2 / 360)


@pytest.mark.slow
def test_training_is_deterministic_from_the_seed_and_varies_with_it():
    short = train_small_cnn.TrainConfig(epochs=1, batch_size=128, learning_rate=3e-3)
    a = train_small_cnn.train("lfw", seed=3, train_config=short)
    b = train_small_cnn.train("lfw", seed=3, train_config=short)
    c = train_small_cnn.train("lfw", seed=4, train_config=short)
    jax.tree.map(np.testing.assert_array_equal, a.variables, b.variables)
    assert not np.allclose(a.variables["params"]["Dense_0"]["kernel"], c.variables["params"]["Dense_0"]["kernel"])


def test_bad_names_and_weights(tmp_path):
    with pytest.raises(ValueError, match="known models: efficientnet_lite0, digits_cnn"):
        models.load("vgg16")
    with pytest.raises(ValueError, match="dataset: expected one of"):
        small_cnn.config("mnist")
    models.checkpoints.save_safetensors(tmp_path / "w.safetensors", {"params/Dense_0/kernel": np.zeros((3, 3), np.float32)})
    with pytest.raises(ValueError, match="does not fit the digits CNN"):
        models.load("digits_cnn", weights=tmp_path / "w.safetensors")


def test_loaded_model_runs_through_the_engine_and_compiles_once():
    """A LoadedModel's classifier is what ``explain`` takes; occlusion with S=1 equals a direct loop."""
    m = models.load("digits_cnn")
    x = m.preprocess(data.digits("test")[0].image).image
    expl = uj.explain(m.classifier, x, window=4, stride=4, sampler=uj.samplers.constant(0.0), num_samples=1,
                      key=jax.random.key(0), chunk_size=4)
    probs = np.asarray(m.classifier.probs(jnp.asarray(x[None])))[0]
    np.testing.assert_allclose(expl.probs, probs, rtol=1e-5, atol=1e-7)
    for i in range(2):
        for j in range(2):
            occluded = x.copy()
            occluded[4 * i:4 * i + 4, 4 * j:4 * j + 4] = 0.0
            want = np.asarray(m.classifier.probs(jnp.asarray(occluded[None])))[0]
            np.testing.assert_allclose(expl.window_probs[:, i, j], want, rtol=1e-4, atol=1e-6)
    # a second LoadedModel of the same architecture hashes equal: same compiled program
    assert models.load("digits_cnn").classifier.fn == m.classifier.fn
    assert hash(models.load("digits_cnn").classifier.fn) == hash(m.classifier.fn)
