"""Train a small CNN on an offline labelled set and write its parameters (deterministic from a seed).

    python -m undesirable_jax.models.train_small_cnn --dataset digits
    python -m undesirable_jax.models.train_small_cnn --dataset lfw

Trains on the ``"train"`` split (see :mod:`undesirable_jax.data.datasets` for the fixed split),
reports accuracy on ``"test"``, and writes ``<dataset>_cnn.safetensors`` in the current folder atomically
(or ``--out``). It never writes into the installed package unless ``--out`` names the shipped file
(``undesirable_jax/models/weights/<dataset>_cnn.safetensors`` in a source checkout), which is how the
shipped weights were made. Same seed, same machine: the same parameters, bit for bit.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ..data import datasets
from .small_cnn import SmallCNN, SmallCNNApply, config, save_params


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser settings: Adam with cosine decay, mini-batches reshuffled each epoch."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float = 1e-4


TRAIN_CONFIGS = {
    "digits": TrainConfig(epochs=40, batch_size=64, learning_rate=3e-3),
    "lfw": TrainConfig(epochs=60, batch_size=32, learning_rate=3e-3),
}


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """Trained variables with their held-out accuracy and the settings that made them."""

    variables: Any
    test_accuracy: float
    train_accuracy: float
    dataset: str
    seed: int
    train_config: TrainConfig


def to_inputs(images: np.ndarray) -> np.ndarray:
    """``uint8 [N, H, W]`` -> float32 ``[N, H, W, 1]`` in [0, 1] (what the small CNNs take)."""
    return (np.asarray(images, np.float32) / 255.0)[..., None]


@functools.partial(jax.jit, static_argnums=0)
def _predict(apply: SmallCNNApply, variables: Any, x: jnp.ndarray) -> jnp.ndarray:
    return jnp.argmax(apply(variables, x), -1)


def accuracy(apply: SmallCNNApply, variables: Any, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of ``apply(variables, ·)`` on raw uint8 ``images``."""
    return float(np.mean(np.asarray(_predict(apply, variables, jnp.asarray(to_inputs(images)))) == labels))


def _optimizer(tc: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    return optax.adamw(optax.cosine_decay_schedule(tc.learning_rate, total_steps), weight_decay=tc.weight_decay)


# Module-level jitted functions with hashable static arguments, so repeated training runs in one
# process compile once. A Python loop over a jitted step: on XLA:CPU the same step inside
# lax.scan ran ~20x slower.
@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _step(apply: SmallCNNApply, tc: TrainConfig, total_steps: int, variables: Any, opt_state: Any,
          xb: jnp.ndarray, yb: jnp.ndarray) -> tuple[Any, Any]:
    def loss_fn(v):
        return optax.softmax_cross_entropy_with_integer_labels(apply(v, xb), yb).mean()

    opt = _optimizer(tc, total_steps)
    updates, opt_state = opt.update(jax.grad(loss_fn)(variables), opt_state, variables)
    return optax.apply_updates(variables, updates), opt_state


@functools.partial(jax.jit, static_argnums=(0, 1))
def _init(apply: SmallCNNApply, shape: tuple[int, ...], key: jax.Array) -> Any:
    return SmallCNN(apply.features, apply.strides, apply.num_classes).init(key, jnp.zeros(shape, jnp.float32))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _batches(n: int, batch_size: int, key: jax.Array) -> jnp.ndarray:
    steps = n // batch_size
    return jax.random.permutation(key, n)[: steps * batch_size].reshape(steps, batch_size)


def train(dataset: str, seed: int = 0, train_config: TrainConfig | None = None) -> TrainResult:
    """Train the ``dataset`` CNN from ``jax.random.key(seed)``; pure given its arguments."""
    config(dataset)
    tc = TRAIN_CONFIGS[dataset] if train_config is None else train_config
    loader = {"digits": datasets.digits, "lfw": datasets.lfw}[dataset]
    train_set, test_set = loader("train"), loader("test")
    x = jnp.asarray(to_inputs(train_set.images))
    y = jnp.asarray(train_set.labels, jnp.int32)
    n = x.shape[0]
    total_steps = tc.epochs * (n // tc.batch_size)
    apply = SmallCNNApply.for_dataset(dataset)
    init_key, shuffle_key = jax.random.split(jax.random.key(seed))
    variables = _init(apply, (1, *x.shape[1:]), init_key)
    opt_state = _optimizer(tc, total_steps).init(variables)
    for e in range(tc.epochs):
        for idx in _batches(n, tc.batch_size, jax.random.fold_in(shuffle_key, e)):
            variables, opt_state = _step(apply, tc, total_steps, variables, opt_state, x[idx], y[idx])
    return TrainResult(variables=variables,
                       test_accuracy=accuracy(apply, variables, test_set.images, test_set.labels),
                       train_accuracy=accuracy(apply, variables, train_set.images, train_set.labels),
                       dataset=dataset, seed=seed, train_config=tc)


def main(argv: Sequence[str] | None = None) -> TrainResult:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", required=True, choices=sorted(TRAIN_CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="output .safetensors (default: <dataset>_cnn.safetensors in the current folder)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    result = train(args.dataset, args.seed)
    seconds = time.perf_counter() - t0
    out = f"{args.dataset}_cnn.safetensors" if args.out is None else args.out
    meta = {"dataset": args.dataset, "seed": str(args.seed), "test_accuracy": f"{result.test_accuracy:.6f}",
            "train_accuracy": f"{result.train_accuracy:.6f}",
            "train_config": repr(result.train_config),
            "command": f"python -m undesirable_jax.models.train_small_cnn --dataset {args.dataset} --seed {args.seed}",
            "jax": jax.__version__, "optax": optax.__version__}
    # one metadata entry holding sorted JSON: safetensors orders several entries at random
    path = save_params(out, result.variables, {"undesirable_jax": json.dumps(meta, sort_keys=True)})
    print(f"{args.dataset}: test accuracy {result.test_accuracy:.4f} (train {result.train_accuracy:.4f}), "
          f"{seconds:.1f} s, wrote {path}")
    return result


if __name__ == "__main__":
    main()
