"""Small Flax CNNs for the offline labelled sets (digits, lfw), with parameters shipped in the package.

Kept deliberately light, because the PDA engine runs them tens of thousands of times per image:
two strided 3x3 convolutions and one dense layer (no 3x3 conv on a 2x2 map, which XLA:CPU runs ~70x
slower than on 4x4). Inputs are grayscale ``[N, H, W, 1]`` scaled to [0, 1] (``uint8 / 255``).
The parameters in ``weights/<name>.safetensors`` were written by
``python -m undesirable_jax.models.train_small_cnn --dataset <set>``, which reproduces them.
"""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import traverse_util

from ..checks import BadFileError
from .checkpoints import check_shapes, load_state_dict, save_safetensors


@dataclasses.dataclass(frozen=True)
class SmallCNNConfig:
    """Architecture and input of one small CNN: conv ``features`` / ``strides``, ``num_classes``."""

    input_shape: tuple[int, int, int]
    features: tuple[int, ...]
    strides: tuple[int, ...]
    num_classes: int


CONFIGS: dict[str, SmallCNNConfig] = {
    "digits": SmallCNNConfig(input_shape=(8, 8, 1), features=(16, 32), strides=(1, 2), num_classes=10),
    "lfw": SmallCNNConfig(input_shape=(25, 25, 1), features=(16, 32), strides=(2, 2), num_classes=2),
}


class SmallCNN(nn.Module):
    """``images [N, H, W, C] -> logits [N, num_classes]``: 3x3 conv + ReLU per entry, then dense."""

    features: tuple[int, ...]
    strides: tuple[int, ...]
    num_classes: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for f, s in zip(self.features, self.strides):
            x = nn.relu(nn.Conv(f, (3, 3), strides=(s, s), padding=((1, 1), (1, 1)))(x))
        return nn.Dense(self.num_classes)(x.reshape(x.shape[0], -1))


@dataclasses.dataclass(frozen=True)
class SmallCNNApply:
    """``(variables, images) -> logits`` for :func:`undesirable_jax.from_function` (hashable)."""

    features: tuple[int, ...]
    strides: tuple[int, ...]
    num_classes: int

    @classmethod
    def for_dataset(cls, dataset: str) -> "SmallCNNApply":
        c = config(dataset)
        return cls(c.features, c.strides, c.num_classes)

    def __call__(self, variables: Mapping[str, Any], images: jnp.ndarray) -> jnp.ndarray:
        return SmallCNN(self.features, self.strides, self.num_classes).apply(variables, images)


def config(dataset: str) -> SmallCNNConfig:
    """The :class:`SmallCNNConfig` of ``dataset`` (``"digits"`` or ``"lfw"``)."""
    if dataset not in CONFIGS:
        raise ValueError(f"dataset: expected one of {sorted(CONFIGS)}, got {dataset!r}")
    return CONFIGS[dataset]


def shipped_weights_path(dataset: str) -> Path:
    """Path of the parameters shipped for ``dataset`` (``weights/<dataset>_cnn.safetensors``)."""
    config(dataset)
    return Path(os.fspath(resources.files(__package__).joinpath("weights", f"{dataset}_cnn.safetensors")))


def save_params(path: str | os.PathLike, variables: Mapping[str, Any], metadata: Mapping[str, str]) -> Path:
    """Write flax variables as ``.safetensors`` (names joined with ``/``), atomically."""
    flat = traverse_util.flatten_dict(dict(variables), sep="/")
    return save_safetensors(path, {k: np.asarray(v, np.float32) for k, v in flat.items()}, metadata)


def load_params(dataset: str, weights: str | os.PathLike | None = None) -> dict[str, Any]:
    """Flax variables for ``dataset``'s CNN from ``weights`` (default: the shipped file), shape-checked."""
    path = shipped_weights_path(dataset) if weights is None else Path(weights)
    flat = load_state_dict(path)
    variables = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in flat.items()}, sep="/")
    c = config(dataset)
    import jax

    want = jax.eval_shape(lambda: SmallCNN(c.features, c.strides, c.num_classes).init(
        jax.random.key(0), jnp.zeros((1, *c.input_shape))))
    want_shapes = {k: v.shape for k, v in traverse_util.flatten_dict(want, sep="/").items()}
    check_shapes(path, f"the {dataset} CNN", want_shapes, flat)
    extra = sorted(set(flat) - set(want_shapes))
    if extra:
        raise BadFileError(path, f"does not fit the {dataset} CNN: tensors {extra[:3]} are not part of it",
                           f"pass weights saved from the {dataset} CNN")
    return variables
