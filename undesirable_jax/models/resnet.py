"""ResNet-18/34/50/101/152 in Flax linen, loading torchvision-named weights from a user's file.

Layout and padding follow torchvision exactly (v1.5 bottleneck: the stride sits on the 3x3 conv),
so a torchvision state dict converts one to one: ``conv1``, ``bn1``, ``layer{1-4}.{i}.conv{1-3}`` /
``bn{1-3}``, ``layer*.0.downsample.0`` (1x1 conv) / ``.1`` (BN), ``fc``. BatchNorm runs in eval
mode from ``batch_stats`` (running mean / var, eps 1e-5). Inputs: NHWC float32 normalised with the
ImageNet mean / std (:data:`undesirable_jax.data.TORCHVISION`).

Use :func:`load` for a ``.safetensors`` / ``.pth`` state dict (read without running code from the
file), :func:`init` for random weights (benchmarks), and :class:`ResNetApply` as the classifier
function: it is a hashable value, so every ResNet of the same depth shares one compiled program.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from .checkpoints import load_state_dict

#: depth -> (blocks per stage, bottleneck?)
DEPTHS = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True),
          101: ((3, 4, 23, 3), True), 152: ((3, 8, 36, 3), True)}
BN_EPS = 1e-5


def _check_depth(depth: int) -> tuple[tuple[int, ...], bool]:
    if depth not in DEPTHS:
        raise ValueError(f"depth: expected one of {sorted(DEPTHS)}, got {depth!r}")
    return DEPTHS[depth]


def _pad(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    return ((k // 2, k // 2), (k // 2, k // 2))


class Block(nn.Module):
    """Basic (two 3x3) or bottleneck (1x1, 3x3, 1x1 with 4x expansion) residual block."""

    features: int
    stride: int
    bottleneck: bool
    downsample: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        def conv(f, k, s, name):
            return nn.Conv(f, (k, k), strides=(s, s), padding=_pad(k), use_bias=False, dtype=self.dtype, name=name)

        def bn(name):
            return nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=self.dtype, name=name)

        if self.bottleneck:
            y = nn.relu(bn("bn1")(conv(self.features, 1, 1, "conv1")(x)))
            y = nn.relu(bn("bn2")(conv(self.features, 3, self.stride, "conv2")(y)))
            y = bn("bn3")(conv(self.features * 4, 1, 1, "conv3")(y))
            out = self.features * 4
        else:
            y = nn.relu(bn("bn1")(conv(self.features, 3, self.stride, "conv1")(x)))
            y = bn("bn2")(conv(self.features, 3, 1, "conv2")(y))
            out = self.features
        if self.downsample:
            x = bn("downsample_bn")(conv(out, 1, self.stride, "downsample_conv")(x))
        return nn.relu(x + y)


class ResNet(nn.Module):
    """torchvision's ResNet: ``images [N, H, W, 3] -> logits [N, num_classes]`` (float32)."""

    depth: int = 50
    num_classes: int = 1000
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        stages, bottleneck = _check_depth(self.depth)
        x = x.astype(self.dtype)
        x = nn.Conv(64, (7, 7), strides=(2, 2), padding=_pad(7), use_bias=False, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, dtype=self.dtype, name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_ch = 64
        for stage, blocks in enumerate(stages):
            features = 64 * 2 ** stage
            out_ch = features * (4 if bottleneck else 1)
            for i in range(blocks):
                stride = 2 if (i == 0 and stage > 0) else 1
                x = Block(features, stride, bottleneck, downsample=(i == 0 and (stride != 1 or in_ch != out_ch)),
                          dtype=self.dtype, name=f"layer{stage + 1}_{i}")(x)
                in_ch = out_ch
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class ResNetApply:
    """``(variables, images) -> logits`` for :func:`undesirable_jax.from_function` (hashable)."""

    depth: int
    num_classes: int = 1000
    dtype: str = "float32"

    def __call__(self, variables: Mapping[str, Any], images: jnp.ndarray) -> jnp.ndarray:
        return ResNet(self.depth, self.num_classes, jnp.dtype(self.dtype)).apply(variables, images)


def init(depth: int, key: jax.Array, num_classes: int = 1000) -> dict[str, Any]:
    """Random variables for benchmarks: He-normal kernels (std ``sqrt(2 / fan_in)``, dense
    ``sqrt(1 / fan_in)``), BN scale 1 and bias 0, running mean 0 and var 1.

    All kernels come from one ``jax.random.normal`` draw (jitting flax's per-layer initialisers
    takes ~15 s to compile on a 2-core CPU).
    """
    _check_depth(depth)
    shapes = traverse_util.flatten_dict(jax.eval_shape(
        lambda: ResNet(depth, num_classes).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))))
    kernels = [p for p in shapes if p[-1] == "kernel"]
    z = np.asarray(jax.random.normal(key, (sum(int(np.prod(shapes[p].shape)) for p in kernels),), jnp.float32))
    out, start = {}, 0
    for path, leaf in shapes.items():
        if path[-1] == "kernel":
            n = int(np.prod(leaf.shape))
            fan_in = int(np.prod(leaf.shape[:-1]))
            gain = 1.0 if path[-2] == "fc" else 2.0
            out[path] = jnp.asarray(z[start:start + n].reshape(leaf.shape) * np.float32(np.sqrt(gain / fan_in)))
            start += n
        else:
            fill = 1.0 if path[-1] in ("scale", "var") else 0.0
            out[path] = jnp.asarray(np.full(leaf.shape, fill, np.float32))
    return traverse_util.unflatten_dict(out)


def random_classifier(depth: int, key: jax.Array, num_classes: int = 1000, dtype: str = "float32"):
    """A :class:`undesirable_jax.Classifier` of a randomly initialised ResNet (see :func:`init`)."""
    from ..classifiers import from_function

    return from_function(ResNetApply(depth, num_classes, dtype), init(depth, key, num_classes))


def _torch_name(collection: str, path: tuple[str, ...]) -> str:
    """Flax path -> torchvision name, e.g. ('params', 'layer1_0', 'downsample_conv', 'kernel')."""
    *modules, leaf = path
    parts = []
    for m in modules:
        if m.startswith("layer"):
            stage, block = m.split("_")
            parts += [stage, block]
        elif m == "downsample_conv":
            parts += ["downsample", "0"]
        elif m == "downsample_bn":
            parts += ["downsample", "1"]
        else:
            parts.append(m)
    leaf = {("params", "kernel"): "weight", ("params", "scale"): "weight", ("params", "bias"): "bias",
            ("batch_stats", "mean"): "running_mean", ("batch_stats", "var"): "running_var"}[(collection, leaf)]
    return ".".join(parts + [leaf])


def infer_depth(state_dict: Mapping[str, Any]) -> int:
    """Depth of a torchvision ResNet state dict from its block counts and block type."""
    counts = tuple(len({k.split(".")[1] for k in state_dict if k.startswith(f"layer{s}.")}) for s in (1, 2, 3, 4))
    bottleneck = any(k.endswith("conv3.weight") for k in state_dict)
    for depth, spec in DEPTHS.items():
        if spec == (counts, bottleneck):
            return depth
    raise ValueError(f"weights: not a torchvision ResNet state dict (blocks per stage {counts}, "
                     f"bottleneck={bottleneck}); expected names like conv1.weight, layer1.0.conv1.weight, fc.weight")


def convert(state_dict: Mapping[str, Any], depth: int | None = None) -> dict[str, Any]:
    """A torchvision-named state dict -> flax variables ``{"params", "batch_stats"}``.

    Every tensor must be used and every variable found, with matching shapes (``num_batches_tracked``
    is ignored; a uniform ``module.`` prefix from DataParallel is stripped).
    """
    sd = {str(k): np.asarray(v) for k, v in state_dict.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    if "fc.weight" not in sd:
        raise ValueError(f"weights: no 'fc.weight' in the state dict (keys like {sorted(sd)[:5]}); "
                         f"expected a torchvision ResNet state dict")
    depth = infer_depth(sd) if depth is None else depth
    if depth != infer_depth(sd):
        raise ValueError(f"depth: asked for ResNet-{depth} but the weights are ResNet-{infer_depth(sd)}")
    num_classes = sd["fc.weight"].shape[0]
    shapes = jax.eval_shape(lambda: ResNet(depth, num_classes).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3))))
    flat = traverse_util.flatten_dict(shapes)
    out, used = {}, set()
    for path, shape in flat.items():
        name = _torch_name(path[0], path[1:])
        if name not in sd:
            raise ValueError(f"weights: ResNet-{depth} needs {name!r}, which the state dict lacks")
        w = sd[name].astype(np.float32)
        if path[-1] == "kernel":
            w = w.transpose(2, 3, 1, 0) if w.ndim == 4 else w.T
        if w.shape != shape.shape:
            raise ValueError(f"weights: {name!r} has shape {sd[name].shape}, ResNet-{depth} needs "
                             f"{shape.shape} (after OIHW->HWIO)")
        out[path] = jnp.asarray(w)
        used.add(name)
    extra = sorted(set(sd) - used)
    if extra:
        raise ValueError(f"weights: {len(extra)} tensors are not part of ResNet-{depth}, e.g. {extra[:5]}")
    return traverse_util.unflatten_dict(out)


def load(weights: str | os.PathLike, depth: int | None = None, *, key: str | None = None) -> dict[str, Any]:
    """Variables from a torchvision-named ``.safetensors`` or ``.pth`` file (``key``: nested entry)."""
    return convert(load_state_dict(weights, key=key), depth)
