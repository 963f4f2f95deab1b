"""Classifier adapters: any black box becomes a pytree the engine can pass through ``jit``.

A classifier maps float32 images ``[N, H, W, C]`` to logits ``[N, K]`` (or probabilities, when
wrapped with :func:`probabilities`). Wrapping it in :class:`Classifier` keeps the function static and
its parameters as pytree leaves, so one compiled engine step serves every image and every set of
weights of the same shapes (a new lambda per call would recompile each time).

JAX functions are ``differentiable``; black boxes called on the host (:mod:`undesirable_jax.black_boxes`:
NumPy, PyTorch, ONNX) are not, and the methods that need gradients skip them.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

_OUTPUTS = ("logits", "probs")
#: How far a row of probabilities may sum from 1 (bf16 softmax rounds to about 1e-3 per class).
PROB_SUM_TOLERANCE = 1e-2


@struct.dataclass
class Classifier:
    """``fn(images)`` when ``params`` is None, else ``fn(params, images)``; ``outputs`` says what it returns.

    ``differentiable``: whether JAX can take gradients through ``fn`` (False for host black boxes).
    """

    fn: Callable = struct.field(pytree_node=False)
    params: Any = None
    outputs: str = struct.field(pytree_node=False, default="logits")
    differentiable: bool = struct.field(pytree_node=False, default=True)

    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        return self.fn(images) if self.params is None else self.fn(self.params, images)

    def probs(self, images: jnp.ndarray) -> jnp.ndarray:
        """Class probabilities ``[N, K]`` in float32 (softmax of logits; probabilities pass through)."""
        out = self(images)
        if not isinstance(out, (jax.Array, np.ndarray)):
            raise TypeError(f"classifier: must return an array [N, K] of {self.outputs}, got "
                            f"{type(out).__name__}; return the logits array itself (not None, a tuple or a dict)")
        if out.ndim != 2 or out.shape[0] != images.shape[0]:
            raise ValueError(
                f"classifier: must map images [N, H, W, C] to [N, K], got output shape {out.shape} "
                f"for input {images.shape}")
        out = out.astype(jnp.float32)
        probs = jax.nn.softmax(out, axis=-1) if self.outputs == "logits" else out
        # XLA may turn softmax(NaN) into finite values; keep a non-finite output visible as NaN.
        return jnp.where(jnp.all(jnp.isfinite(out), axis=-1, keepdims=True), probs, jnp.nan)

    def raise_host_error(self) -> None:
        """Raise the first error a host black box met since the last check (no-op for JAX functions).

        A black box called inside a jitted step cannot raise there; it records the error, returns NaN,
        and the caller (e.g. :func:`undesirable_jax.explain`) raises it here, after the step.
        """
        take = getattr(self.fn, "take_error", None)
        error = take() if take is not None else None
        if error is not None:
            raise error


def valid_probs(probs: jnp.ndarray) -> jnp.ndarray:
    """True where every row is a probability distribution: finite, in [0, 1], summing to 1."""
    finite = jnp.all(jnp.isfinite(probs))
    in_range = jnp.all((probs >= 0.0) & (probs <= 1.0 + 1e-6))
    sums = jnp.all(jnp.abs(jnp.sum(probs, axis=-1) - 1.0) <= PROB_SUM_TOLERANCE)
    return finite & in_range & sums


def check_probs(probs: Any, outputs: str) -> int:
    """Check the class probabilities of the untouched image ``[K]`` before any long work; returns K."""
    p = np.asarray(probs, np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError("classifier: returned NaN or inf on the image; check the model and preprocessing")
    k = int(p.shape[-1])
    if k < 2:
        raise ValueError(
            f"classifier: returned K = {k} class; the evidence compares classes and needs K >= 2. For one "
            "sigmoid logit z, return the two logits [0, z] (their softmax is [1 - sigmoid(z), sigmoid(z)])")
    if outputs == "probs" and (p.min() < 0.0 or p.max() > 1.0 + 1e-6
                               or abs(p.sum() - 1.0) > PROB_SUM_TOLERANCE):
        raise ValueError(
            f"classifier: marked as returning probabilities, but its output on the image is not a "
            f"distribution (min {p.min():.3g}, max {p.max():.3g}, sum {p.sum():.4g}); return softmax "
            "probabilities, or logits without undesirable_jax.probabilities(...)")
    return k


def as_classifier(classifier: Any) -> Classifier:
    """Accept a :class:`Classifier` or any callable ``images -> logits``."""
    if isinstance(classifier, Classifier):
        if classifier.outputs not in _OUTPUTS:
            raise ValueError(f"classifier.outputs must be one of {_OUTPUTS}, got {classifier.outputs!r}")
        return classifier
    if not callable(classifier):
        raise TypeError(
            f"classifier: expected a callable images [N, H, W, C] -> logits [N, K] or a Classifier, "
            f"got {type(classifier).__name__}")
    return Classifier(fn=classifier)


def from_function(fn: Callable, params: Any = None, *, outputs: str = "logits") -> Classifier:
    """``fn(images)`` or ``fn(params, images)``; say ``outputs="probs"`` when it returns probabilities."""
    if outputs not in _OUTPUTS:
        raise ValueError(f"outputs must be one of {_OUTPUTS}, got {outputs!r}")
    return Classifier(fn=fn, params=params, outputs=outputs)


def probabilities(classifier: Any) -> Classifier:
    """Mark a classifier as returning probabilities (no softmax is applied)."""
    c = as_classifier(classifier)
    return c.replace(outputs="probs")


def flax_linen(module: Any, variables: Any, *, outputs: str = "logits", **apply_kwargs: Any) -> Classifier:
    """A Flax linen module with its variables: ``module.apply(variables, images, **apply_kwargs)``."""
    if apply_kwargs:
        fn = _LinenApply(module, tuple(sorted(apply_kwargs.items())))
    else:
        fn = module.apply
    return from_function(fn, variables, outputs=outputs)


def flax_nnx(model: Any, *, outputs: str = "logits") -> Classifier:
    """A Flax nnx model: split into a static graph definition and a pytree of state."""
    from flax import nnx

    graphdef, state = nnx.split(model)
    return from_function(_NnxApply(graphdef), state, outputs=outputs)


@struct.dataclass
class _LinenApply:
    module: Any = struct.field(pytree_node=False)
    kwargs: tuple = struct.field(pytree_node=False)

    def __call__(self, variables, images):
        return self.module.apply(variables, images, **dict(self.kwargs))


@struct.dataclass
class _NnxApply:
    graphdef: Any = struct.field(pytree_node=False)

    def __call__(self, state, images):
        from flax import nnx

        return nnx.merge(self.graphdef, state)(images)


def rank_classes(probs: Any, classes: Any = None) -> Any:
    """Positions of ``probs`` in rank order: highest p first, lowest class id on ties.

    ``classes``: the class id of each position (default ``0..K-1``). NumPy in, NumPy out; a JAX array
    in (also under ``jit``), a JAX array out. The one ranking rule of the package: the target and the
    competitors of the factors, the figure's panels, the CLI's top classes and the evaluation's
    competitor all come from it.
    """
    xp = np if isinstance(probs, (np.ndarray, list, tuple, float, int)) else jnp
    p = xp.asarray(probs)
    ids = xp.arange(p.shape[-1]) if classes is None else xp.asarray(classes)
    return xp.lexsort((ids, -p))
