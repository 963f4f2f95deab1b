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

_OUTPUTS = ("logits", "probs", "log_probs")
#: ``outputs`` a caller may give: what the classifier returns, or "auto" (decided from the image).
OUTPUT_CHOICES = ("auto", *_OUTPUTS)
#: How far a row of probabilities may sum from 1 (bf16 softmax rounds to about 1e-3 per class).
PROB_SUM_TOLERANCE = 1e-2
#: ``outputs="auto"``: a row in [0, 1] summing to 1 within this is probabilities; a row <= 0 whose
#: logsumexp is 0 within this is log-probabilities. Between this and PROB_SUM_TOLERANCE it is ambiguous.
AUTO_TOLERANCE = 1e-4


@struct.dataclass
class Classifier:
    """``fn(images)`` when ``params`` is None, else ``fn(params, images)``; ``outputs`` says what it returns.

    ``outputs``: "logits", "probs", "log_probs", or "auto": decided from the untouched image's output
    by :func:`resolve_outputs` (which :func:`undesirable_jax.explain` and the evaluation call first).
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
        return self.probs_of(out)

    def probs_of(self, out: jnp.ndarray) -> jnp.ndarray:
        """:meth:`probs` from the classifier's own outputs ``[N, K]`` (e.g. a host black box's, called outside jit)."""
        if self.outputs == "auto":
            raise ValueError("classifier: outputs='auto' is decided from the untouched image's output before the "
                             "work; call undesirable_jax.resolve_outputs(classifier, image) first, or say outputs=")
        out = out.astype(jnp.float32)
        probs = out if self.outputs == "probs" else jax.nn.softmax(out, axis=-1)   # softmax(log p) = p
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
    """True where every row is a probability distribution: finite, in [0, 1], summing to 1 (NaN and ±inf
    fail the range test, so finiteness needs no pass of its own)."""
    in_range = jnp.all((probs >= 0.0) & (probs <= 1.0 + 1e-6))
    sums = jnp.all(jnp.abs(jnp.sum(probs, axis=-1) - 1.0) <= PROB_SUM_TOLERANCE)
    return in_range & sums


def decide_outputs(row: Any, outputs: str = "auto") -> str:
    """What the classifier's output ``row`` [K] on the untouched image is: "probs", "log_probs" or "logits".

    "auto": a row in [0, 1] summing to 1 within :data:`AUTO_TOLERANCE` is probabilities, a row <= 0
    whose logsumexp is 0 within it log-probabilities, anything else logits; a row within
    :data:`PROB_SUM_TOLERANCE` of either but not within AUTO_TOLERANCE is refused as ambiguous. An
    explicit value is returned when the row agrees with it, else refused naming both ("logits" on
    log-probabilities agrees: their softmax is the probabilities).
    """
    check_outputs(outputs)
    r = np.asarray(row, np.float64).reshape(1, -1)
    looks, prob_gap, log_gap = _output_kinds(r)
    looks, prob_gap, log_gap = str(looks[0]), float(prob_gap[0]), float(log_gap[0])
    if not np.all(np.isfinite(r)):
        raise ValueError("classifier: returned NaN or inf on the image; check the model and preprocessing")
    r = r[0]
    lse = float(np.logaddexp.reduce(r)) if r.size else np.inf
    about = (f"min {r.min():.4g}, max {r.max():.4g}, sum {r.sum():.6g}, logsumexp {lse:.4g}" if r.size else "empty")
    if outputs == "auto":
        if looks == "logits" and min(prob_gap, log_gap) <= PROB_SUM_TOLERANCE:
            raise ValueError(f"classifier: outputs='auto' cannot tell its output on the image ({about}) from "
                             "low-precision probabilities or log-probabilities; say outputs='probs', 'log_probs' or "
                             "'logits'")
        return looks
    if not _fits(outputs, np.asarray([looks]), np.asarray([prob_gap]), np.asarray([log_gap]))[0]:
        what = "is not a distribution and " if outputs == "probs" else ""
        raise ValueError(f"classifier: outputs={outputs!r} was given, but its output on the image {what}looks like "
                         f"{looks} ({about}); pass outputs={looks!r} or outputs='auto'")
    return outputs


def decide_batch_outputs(rows: Any, outputs: str = "auto") -> str:
    """:func:`decide_outputs` for the untouched images of a batch ``[N, K]``: decided on the first row,
    every other row checked against that decision (vectorised; the first row that disagrees is refused
    with :func:`decide_outputs`'s message, naming the image)."""
    r = np.asarray(rows, np.float64)
    decided = decide_outputs(r[0], outputs)
    looks, prob_gap, log_gap = _output_kinds(r)
    ok = np.isfinite(r).all(axis=1) & _fits(decided, looks, prob_gap, log_gap)
    for i in np.flatnonzero(~ok)[:1]:
        _per_image(int(i), decide_outputs, r[i], decided)
    return decided


def _output_kinds(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``rows`` [N, K] (float64): what it looks like ("probs", "log_probs" or "logits"), its
    distance from summing to 1 (inf unless in [0, 1]) and its logsumexp's distance from 0 (inf unless <= 0):
    the one rule behind :func:`decide_outputs`."""
    if rows.shape[-1] == 0:
        inf = np.full(rows.shape[0], np.inf)
        return np.full(rows.shape[0], "logits"), inf, inf
    with np.errstate(invalid="ignore", over="ignore"):
        in01 = (rows.min(axis=1) >= -1e-6) & (rows.max(axis=1) <= 1.0 + 1e-6)
        prob_gap = np.where(in01, np.abs(rows.sum(axis=1) - 1.0), np.inf)
        lse = np.logaddexp.reduce(rows, axis=1)
        log_gap = np.where(rows.max(axis=1) <= 1e-6, np.abs(lse), np.inf)
    looks = np.where(prob_gap <= AUTO_TOLERANCE, "probs", np.where(log_gap <= AUTO_TOLERANCE, "log_probs", "logits"))
    return looks, prob_gap, log_gap


def _fits(outputs: str, looks: np.ndarray, prob_gap: np.ndarray, log_gap: np.ndarray) -> np.ndarray:
    """Whether rows that look like ``looks`` (with their gaps, :func:`_output_kinds`) agree with an explicit
    ``outputs``."""
    if outputs == "probs":
        return prob_gap <= PROB_SUM_TOLERANCE
    if outputs == "log_probs":
        return log_gap <= PROB_SUM_TOLERANCE
    return looks != "probs"


def check_outputs(outputs: Any, name: str = "outputs") -> str:
    """``outputs`` is one of :data:`OUTPUT_CHOICES`."""
    if outputs not in OUTPUT_CHOICES:
        raise ValueError(f"{name}: must be one of {OUTPUT_CHOICES}, got {outputs!r}")
    return outputs


def resolve_outputs(classifier: Any, image: Any) -> Classifier:
    """The classifier with ``outputs`` decided (or checked) on its output for the untouched ``image`` [H, W, C].

    One call of the classifier on ``image``, jitted per classifier structure and image shape (so one
    compile serves every image); see :func:`decide_outputs` for the rule. Black-box errors are raised.
    """
    clf = as_classifier(classifier)
    raw = raw_output(clf, jnp.asarray(image, jnp.float32))
    jax.block_until_ready(raw)
    clf.raise_host_error()
    return clf.replace(outputs=decide_outputs(np.asarray(raw, np.float32), clf.outputs))


@jax.jit
def raw_outputs(clf: Classifier, images: jnp.ndarray) -> jnp.ndarray:
    """The classifier's own outputs [N, K] (float32, no softmax) on images [N, H, W, C]."""
    out = clf(images)
    if not isinstance(out, (jax.Array, np.ndarray)):
        raise TypeError(f"classifier: must return an array [N, K], got {type(out).__name__}; return the logits "
                        "(or probabilities) array itself (not None, a tuple or a dict)")
    if out.ndim != 2 or out.shape[0] != images.shape[0]:
        raise ValueError(f"classifier: must map images [N, H, W, C] to [N, K], got output shape {out.shape} "
                         f"for input {images.shape}")
    return out.astype(jnp.float32)


@jax.jit
def raw_output(clf: Classifier, image: jnp.ndarray) -> jnp.ndarray:
    """The classifier's own output [K] (float32, no softmax) on one image [H, W, C]."""
    return raw_outputs(clf, image[None])[0]


def output_probs(row: Any, outputs: str) -> jnp.ndarray:
    """Probabilities from a classifier's output ``row`` (``outputs`` decided: not "auto")."""
    r = jnp.asarray(row, jnp.float32)
    return r if outputs == "probs" else jax.nn.softmax(r, axis=-1)


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
    if outputs == "probs" and not _distributions(p[None])[0]:
        raise ValueError(
            f"classifier: marked as returning probabilities, but its output on the image is not a "
            f"distribution (min {p.min():.3g}, max {p.max():.3g}, sum {p.sum():.4g}); return softmax "
            "probabilities, or logits without undesirable_jax.probabilities(...)")
    return k


def check_batch_probs(probs: Any, outputs: str) -> int:
    """:func:`check_probs` for the untouched images of a batch ``[N, K]`` (vectorised; the first image that
    fails is refused with :func:`check_probs`'s message, naming it); returns K."""
    p = np.asarray(probs, np.float64)
    k = check_probs(p[0], outputs)
    ok = np.isfinite(p).all(axis=1)
    if outputs == "probs":
        ok &= _distributions(p)
    for i in np.flatnonzero(~ok)[:1]:
        _per_image(int(i), check_probs, p[i], outputs)
    return k


def _distributions(p: np.ndarray) -> np.ndarray:
    """Per row of finite ``p`` ``[N, K]``: in [0, 1] and summing to 1 within :data:`PROB_SUM_TOLERANCE`
    (:func:`check_probs`' rule for probabilities, shared with :func:`check_batch_probs`)."""
    return ((p.min(axis=1) >= 0.0) & (p.max(axis=1) <= 1.0 + 1e-6)
            & (np.abs(p.sum(axis=1) - 1.0) <= PROB_SUM_TOLERANCE))


def _per_image(index: int, check: Any, *args: Any) -> Any:
    """``check(*args)`` for image ``index`` of a batch, its error naming the image."""
    try:
        return check(*args)
    except ValueError as e:
        raise ValueError(f"images[{index}]: {e}") from e


def as_classifier(classifier: Any) -> Classifier:
    """Accept a :class:`Classifier` or any callable ``images -> logits``."""
    if isinstance(classifier, Classifier):
        check_outputs(classifier.outputs, "classifier.outputs")
        return classifier
    if not callable(classifier):
        raise TypeError(
            f"classifier: expected a callable images [N, H, W, C] -> logits [N, K] or a Classifier, "
            f"got {type(classifier).__name__}")
    return Classifier(fn=classifier)


def from_function(fn: Callable, params: Any = None, *, outputs: str = "logits") -> Classifier:
    """``fn(images)`` or ``fn(params, images)``; ``outputs``: "logits", "probs", "log_probs" or "auto"
    (decided from the untouched image's output, :func:`resolve_outputs`)."""
    return Classifier(fn=fn, params=params, outputs=check_outputs(outputs))


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
