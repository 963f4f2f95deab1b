"""ResNet converter: random torchvision-named weights in .safetensors / .pth -> Flax, checked against an
independent numpy forward pass written the torch way (NCHW, OIHW kernels, eval-mode BatchNorm)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax.models import checkpoints, resnet
from test_weights_torch_writer import contiguous, write_legacy, write_zip

STAGES = {18: ([2, 2, 2, 2], False), 34: ([3, 4, 6, 3], False), 50: ([3, 4, 6, 3], True)}


def torchvision_state_dict(depth: int, num_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random weights under torchvision's names, built from its architecture (not from our converter)."""
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, out_ch, in_ch, k):
        sd[name + ".weight"] = (rng.normal(size=(out_ch, in_ch, k, k)) * np.sqrt(2.0 / (in_ch * k * k))).astype(np.float32)

    def bn(name, ch):
        sd[name + ".weight"] = rng.uniform(0.5, 1.0, ch).astype(np.float32)
        sd[name + ".bias"] = rng.normal(0, 0.1, ch).astype(np.float32)
        sd[name + ".running_mean"] = rng.normal(0, 0.1, ch).astype(np.float32)
        sd[name + ".running_var"] = rng.uniform(0.5, 1.5, ch).astype(np.float32)
        sd[name + ".num_batches_tracked"] = np.array(100, np.int64)

    blocks, bottleneck = STAGES[depth]
    expansion = 4 if bottleneck else 1
    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inplanes = 64
    for li, n in enumerate(blocks):
        planes = 64 * 2 ** li
        for b in range(n):
            p = f"layer{li + 1}.{b}."
            stride = 2 if (b == 0 and li > 0) else 1
            if bottleneck:
                conv(p + "conv1", planes, inplanes, 1), bn(p + "bn1", planes)
                conv(p + "conv2", planes, planes, 3), bn(p + "bn2", planes)
                conv(p + "conv3", planes * 4, planes, 1), bn(p + "bn3", planes * 4)
            else:
                conv(p + "conv1", planes, inplanes, 3), bn(p + "bn1", planes)
                conv(p + "conv2", planes, planes, 3), bn(p + "bn2", planes)
            if b == 0 and (stride != 1 or inplanes != planes * expansion):
                conv(p + "downsample.0", planes * expansion, inplanes, 1)
                bn(p + "downsample.1", planes * expansion)
            inplanes = planes * expansion
    sd["fc.weight"] = (rng.normal(size=(num_classes, inplanes)) / np.sqrt(inplanes)).astype(np.float32)
    sd["fc.bias"] = rng.normal(0, 0.1, num_classes).astype(np.float32)
    return sd


# ------------------------------------------------------------- numpy reference (torch conventions)


def _conv(x, w, stride, pad):
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    cols = np.stack([x[:, :, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
                     for i in range(k) for j in range(k)], axis=2)  # n, c, k*k, oh, ow
    out = np.tensordot(cols, w.reshape(o, c, k * k), axes=([1, 2], [1, 2]))  # n, oh, ow, o
    return out.transpose(0, 3, 1, 2)


def _bn(x, sd, name, eps=1e-5):
    g = lambda s: sd[f"{name}.{s}"].astype(np.float64)[None, :, None, None]  # noqa: E731
    return (x - g("running_mean")) / np.sqrt(g("running_var") + eps) * g("weight") + g("bias")


def _maxpool(x):
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    oh, ow = (x.shape[2] - 3) // 2 + 1, (x.shape[3] - 3) // 2 + 1
    return np.max(np.stack([x[:, :, i:i + 2 * (oh - 1) + 1:2, j:j + 2 * (ow - 1) + 1:2]
                            for i in range(3) for j in range(3)]), axis=0)


def numpy_resnet(sd, depth, x_nchw):
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    w = lambda n: sd[n + ".weight"].astype(np.float64)  # noqa: E731
    blocks, bottleneck = STAGES[depth]
    x = relu(_bn(_conv(x_nchw.astype(np.float64), w("conv1"), 2, 3), sd, "bn1"))
    x = _maxpool(x)
    for li, n in enumerate(blocks):
        for b in range(n):
            p = f"layer{li + 1}.{b}."
            stride = 2 if (b == 0 and li > 0) else 1
            if bottleneck:
                y = relu(_bn(_conv(x, w(p + "conv1"), 1, 0), sd, p + "bn1"))
                y = relu(_bn(_conv(y, w(p + "conv2"), stride, 1), sd, p + "bn2"))
                y = _bn(_conv(y, w(p + "conv3"), 1, 0), sd, p + "bn3")
            else:
                y = relu(_bn(_conv(x, w(p + "conv1"), stride, 1), sd, p + "bn1"))
                y = _bn(_conv(y, w(p + "conv2"), 1, 1), sd, p + "bn2")
            if p + "downsample.0.weight" in sd:
                x = _bn(_conv(x, w(p + "downsample.0"), stride, 0), sd, p + "downsample.1")
            x = relu(x + y)
    x = x.mean(axis=(2, 3))
    return x @ w("fc").T + sd["fc.bias"]


def _check(variables, depth, sd, num_classes, size=32):
    x = np.random.default_rng(5).normal(size=(2, size, size, 3)).astype(np.float32)
    clf = uj.from_function(resnet.ResNetApply(depth, num_classes), variables)
    got = np.asarray(jax.jit(lambda c, v: c(v))(clf, jnp.asarray(x)))
    want = numpy_resnet(sd, depth, x.transpose(0, 3, 1, 2))
    assert got.shape == (2, num_classes)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_resnet18_from_safetensors_and_pth_matches_numpy(tmp_path):
    sd = torchvision_state_dict(18, num_classes=7)
    checkpoints.save_safetensors(tmp_path / "r18.safetensors", sd)
    tensors, storages = contiguous(sd)
    write_zip(tmp_path / "r18.pth", tensors, storages)
    write_legacy(tmp_path / "r18_legacy.pth", tensors, storages)
    loaded = [resnet.load(tmp_path / name) for name in ("r18.safetensors", "r18.pth", "r18_legacy.pth")]
    for v in loaded[1:]:
        jax.tree.map(np.testing.assert_array_equal, loaded[0], v)
    _check(loaded[0], 18, sd, 7)


@pytest.mark.slow
def test_resnet50_bottleneck_from_pth_matches_numpy(tmp_path):
    sd = torchvision_state_dict(50, num_classes=5, seed=1)
    tensors, storages = contiguous(sd)
    write_zip(tmp_path / "r50.pth", tensors, storages)
    variables = resnet.load(tmp_path / "r50.pth", 50)
    _check(variables, 50, sd, 5)


def test_registry_loads_resnet_with_user_weights(tmp_path):
    from undesirable_jax import models

    sd = torchvision_state_dict(18, num_classes=1000, seed=2)
    sd = {"module." + k: v for k, v in sd.items()}  # DataParallel prefix is stripped
    checkpoints.save_safetensors(tmp_path / "r.safetensors", sd)
    m = models.load("resnet18", weights=tmp_path / "r.safetensors")
    assert m.class_names == models.registry.IMAGENET_CLASSES and m.input_shape == (224, 224, 3)
    assert isinstance(m.classifier, uj.Classifier)
    with pytest.raises(ValueError, match="asked for ResNet-34 but the weights are ResNet-18"):
        models.load("resnet34", weights=tmp_path / "r.safetensors")
    with pytest.raises(ValueError, match="needs a path to torchvision.*random_classifier"):
        models.load("resnet50")
    with pytest.raises(FileNotFoundError, match="no file at"):
        models.load("resnet50", weights=tmp_path / "missing.pth")


def test_converter_rejects_wrong_or_partial_weights():
    sd = torchvision_state_dict(18, num_classes=3)
    bad = dict(sd)
    del bad["layer2.0.bn1.running_var"]
    with pytest.raises(ValueError, match="needs 'layer2.0.bn1.running_var'"):
        resnet.convert(bad)
    bad = dict(sd, **{"extra.weight": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="not part of ResNet-18"):
        resnet.convert(bad)
    bad = dict(sd, **{"layer1.0.conv1.weight": np.zeros((64, 64, 1, 1), np.float32)})
    with pytest.raises(ValueError, match="has shape"):
        resnet.convert(bad)
    with pytest.raises(ValueError, match="depth: expected one of"):
        resnet.init(19, jax.random.key(0))


def test_init_gives_random_resnet_of_the_right_shape():
    v = resnet.init(18, jax.random.key(0), num_classes=4)
    out = jax.jit(lambda c, x: c(x))(uj.from_function(resnet.ResNetApply(18, 4), v), jnp.zeros((1, 32, 32, 3)))
    assert out.shape == (1, 4) and out.dtype == jnp.float32
    names = {resnet._torch_name(p[0], p[1:]) for p in __import__("flax").traverse_util.flatten_dict(v)}
    want = {k for k in torchvision_state_dict(18, 4) if not k.endswith("num_batches_tracked")}
    assert names == want
    k = np.asarray(v["params"]["layer3_1"]["conv2"]["kernel"])  # 3x3x256x256, He-normal
    assert abs(k.std() / np.sqrt(2.0 / (9 * 256)) - 1) < 0.02 and abs(k.mean()) < 1e-3
    assert not np.allclose(k, np.asarray(resnet.init(18, jax.random.key(1), 4)["params"]["layer3_1"]["conv2"]["kernel"]))


@pytest.mark.slow
def test_bfloat16_compute_tracks_float32():
    key = jax.random.key(3)
    f32 = resnet.random_classifier(18, key, num_classes=8)
    bf16 = resnet.random_classifier(18, key, num_classes=8, dtype="bfloat16")
    x = jax.random.normal(jax.random.key(4), (4, 32, 32, 3))
    run = jax.jit(lambda c, v: c(v))
    a, b = np.asarray(run(f32, x)), np.asarray(run(bf16, x))
    assert b.dtype == np.float32 and a.shape == b.shape == (4, 8)
    assert np.abs(a - b).max() < 0.05 * np.abs(a).max()
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
