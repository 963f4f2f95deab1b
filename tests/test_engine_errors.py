"""Bad input to explain gets a clear error that names the argument."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import samplers


def clf(x):
    return jnp.stack([x.mean(axis=(1, 2, 3)), -x.mean(axis=(1, 2, 3)), jnp.zeros(x.shape[0])], axis=1)


IMG = np.zeros((8, 8, 1), np.float32)


def run(image=IMG, classifier=clf, **overrides):
    kwargs = dict(window=2, stride=1, sampler=samplers.constant(0.0), num_samples=1, key=jax.random.key(0))
    kwargs.update(overrides)
    return uj.explain(classifier, image, **kwargs)


@pytest.mark.parametrize("overrides,exc,words", [
    (dict(image=np.zeros((8, 8), np.float32)), ValueError, ["image", "[H, W, C]"]),
    (dict(image=np.zeros((2, 8, 8, 1), np.float32)), ValueError, ["image", "once per image"]),
    (dict(image=np.where(np.eye(8)[..., None] > 0, np.nan, 0.0)), ValueError, ["image", "NaN"]),
    (dict(image=np.full((8, 8, 1), np.inf)), ValueError, ["image", "inf"]),
    (dict(image=np.zeros((8, 8, 1), bool)), TypeError, ["image", "dtype"]),
    (dict(window=9), ValueError, ["window=9", "larger", "window <= 8"]),
    (dict(window=0), ValueError, ["window", ">= 1"]),
    (dict(window=2.0), TypeError, ["window", "int"]),
    (dict(stride=0), ValueError, ["stride", ">= 1"]),
    (dict(stride=3), ValueError, ["stride=3", "stride <= window"]),
    (dict(num_samples=0), ValueError, ["num_samples", ">= 1"]),
    (dict(chunk_size=0), ValueError, ["chunk_size", ">= 1"]),
    (dict(classes=[0, 3]), ValueError, ["classes", "[0, 3)"]),
    (dict(classes=[-1]), ValueError, ["classes", "[0, 3)"]),
    (dict(classes=[1, 1]), ValueError, ["classes", "distinct"]),
    (dict(laplace_n=0), ValueError, ["laplace_n"]),
    (dict(key=0), TypeError, ["key", "jax.random.key"]),
    (dict(sampler="zeros"), TypeError, ["sampler", "constant"]),
    (dict(classifier=42), TypeError, ["classifier", "callable"]),
    (dict(classifier=lambda x: x.mean(axis=(1, 2, 3))), ValueError, ["classifier", "[N, K]"]),
    (dict(classifier=lambda x: jnp.full((x.shape[0], 3), jnp.nan)), ValueError, ["classifier", "NaN"]),
    (dict(sampler=samplers.constant([0.0, 1.0])), ValueError, ["sampler", "channels"]),
    (dict(sampler=samplers.marginal(np.zeros((2, 4, 4, 1)))), ValueError, ["sampler", "pool"]),
])
def test_bad_input_names_the_argument(overrides, exc, words):
    with pytest.raises(exc) as info:
        run(**overrides)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_nan_only_on_perturbed_images_is_caught():
    def fragile(x):  # finite on the untouched image, NaN once a window is filled with -1
        bad = jnp.any(x < -0.5, axis=(1, 2, 3))
        return jnp.where(bad[:, None], jnp.nan, jnp.zeros((x.shape[0], 3)))

    with pytest.raises(ValueError, match="perturbed image"):
        run(classifier=fragile, sampler=samplers.constant(-1.0))


@pytest.mark.parametrize("factory,arg,words", [
    (samplers.constant, np.zeros((2, 2)), ["value", "scalar"]),
    (samplers.constant, float("nan"), ["value", "finite"]),
    (samplers.marginal, np.zeros((4, 4, 1)), ["pool", "[M, H, W, C]"]),
    (samplers.marginal, np.full((1, 4, 4, 1), np.nan), ["pool", "NaN"]),
    (samplers.blur, 0.0, ["sigma", "positive"]),
])
def test_sampler_factories_reject_bad_arguments(factory, arg, words):
    with pytest.raises(ValueError) as info:
        factory(arg)
    for word in words:
        assert word in str(info.value)


def test_row_names_missing_classes_and_refuses_stacks():
    expl = run(classes=[2, 0])
    assert expl.row(0) == 1
    with pytest.raises(ValueError, match="class 1 is not in this explanation"):
        expl.row(1)
    stack = jax.tree.map(lambda *a: jnp.stack(a), expl, expl)
    with pytest.raises(ValueError, match="stack of 2"):
        stack.row(0)
