"""Black-box classifiers: NumPy, PyTorch and ONNX functions called by the jitted engine.

The engine builds every perturbed batch on the device in a jitted step; only the classifier call
leaves JAX. The PDA engine calls the host function between two jitted steps
(:meth:`HostFunction.call_shards`, while the device already fills the next chunk); everywhere else
(the evaluation's baselines and scoring, ``Classifier.probs`` under ``jit``) it is called through
``jax.pure_callback``. Either way the function receives the batch as a NumPy array, in pieces of at
most ``batch_size`` images, and returns ``[N, K]``. Everything else (factors, evaluation, CLI) sees a
plain :class:`~undesirable_jax.Classifier` with ``differentiable=False``.

A host function cannot raise inside a compiled step without XLA wrapping the error in its own
traceback. So the call catches it (and checks each output for shape, ``K`` and NaN), keeps the
first error with a message naming the classifier, and returns NaN; the caller raises that error
after the step or chunk (:meth:`~undesirable_jax.Classifier.raise_host_error`). After an error, later
calls return NaN without running the function again until the error has been raised.

Calls are serialised (one at a time per classifier, also when ``mesh="local"`` gives one call per
device shard), so the host function need not be thread-safe.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import checks
from .classifiers import Classifier, check_outputs

_LAYOUTS = ("NHWC", "NCHW")
#: Most classes a black box may have: 2^20 (ImageNet-21k has 21,843). Class names, the engine's
#: [chunk, K] outputs and the [K, H, W] evidence all grow with K; 2^31 would need many gigabytes.
MAX_CLASSES = 2**20
#: Most bytes of one fixed-size batch a model file may demand (its float32 input): the engine's chunk
#: budget (:data:`undesirable_jax.engine.CHUNK_BYTES`), as the default chunk is then the fixed batch.
MAX_FIXED_BATCH_BYTES = 2**29
#: Most pixels of one model input a model file may declare (4096²); larger images need gigabytes a chunk.
MAX_INPUT_PIXELS = 2**24


class BlackBoxError(ValueError):
    """A black box failed: it raised (the original error is the ``__cause__``) or returned a bad output."""


class HostFunction:
    """The static part of a black-box :class:`~undesirable_jax.Classifier`: ``fn`` on the host.

    ``fn`` maps float32 ``[n, H, W, C]`` (``[n, C, H, W]`` for ``layout="NCHW"``, transposed on the
    device before the hand-over) to ``[n, K]``. ``num_classes`` None: found by one call on a zero
    image of the traced shape. ``fixed_batch``: ``fn`` accepts exactly ``batch_size`` images (the last
    piece is padded by repeating its last image; the engine's default chunk is then a multiple of it).
    ``identity``: the model's SHA-256 for run records (:func:`model_identity`). Compared by identity,
    so jit caches per object.
    """

    def __init__(self, fn: Callable[[np.ndarray], Any], *, name: str, num_classes: int | None = None,
                 batch_size: int | None = None, layout: str = "NHWC", fixed_batch: bool = False,
                 identity: str | None = None):
        if not callable(fn):
            raise TypeError(f"fn: expected a callable images [N, H, W, C] -> [N, K], got {type(fn).__name__}")
        if num_classes is not None:
            check_classes("num_classes", num_classes)
        if batch_size is not None:
            checks.positive_int("batch_size", batch_size, maximum=None)
        if layout not in _LAYOUTS:
            raise ValueError(f"layout: expected one of {_LAYOUTS}, got {layout!r}")
        if fixed_batch and batch_size is None:
            raise ValueError("fixed_batch: needs batch_size, the one batch size fn accepts")
        self.fn, self.name, self.num_classes = fn, name, num_classes
        self.batch_size, self.layout, self.fixed_batch = batch_size, layout, fixed_batch
        self.identity = identity   # what the run records say the model is (a file's or weights' SHA-256)
        self._lock = threading.Lock()
        self._error: Exception | None = None
        self._probed: dict[tuple[int, ...], int] = {}

    def __repr__(self) -> str:
        return f"HostFunction({self.name!r}, num_classes={self.num_classes}, batch_size={self.batch_size})"

    # ------------------------------------------------------------------ traced side

    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        """``[..., N, H, W, C] -> [..., N, K]`` float32 through ``jax.pure_callback``."""
        x = self.device_input(images)
        k = self.classes_for(x.shape[-3:])
        out = jax.ShapeDtypeStruct((*x.shape[:-3], k), jnp.float32)
        # broadcast_all: under vmap the callback sees the batched array; host() folds leading axes.
        return jax.pure_callback(self.host, out, x, vmap_method="broadcast_all")

    def device_input(self, images: jnp.ndarray) -> jnp.ndarray:
        """The batch as ``fn`` takes it (float32, in its layout), made on the device before the hand-over."""
        x = jnp.asarray(images).astype(jnp.float32)
        if x.ndim < 4:
            raise ValueError(f"{self.label}: expected images [N, H, W, C], got shape {x.shape}")
        return jnp.moveaxis(x, -1, -3) if self.layout == "NCHW" else x

    def outside_jit(self) -> bool:
        """Whether the engine calls this box between its jitted steps (:meth:`call_shards`) rather than
        inside them (``pure_callback``): True, except for a torch box that reads JAX's buffers by DLPack."""
        return True

    def call_shards(self, batch: jax.Array) -> jax.Array:
        """``fn`` on each of this process's shards of a (sharded) batch from :meth:`device_input`:
        ``[n, K]`` float32, sharded like ``batch``. An error is kept (NaN returned) as in :meth:`host`."""
        shards = batch.addressable_shards
        outs = [jax.device_put(self.host(np.asarray(shard.data)), shard.device) for shard in shards]
        k = outs[0].shape[-1]
        return jax.make_array_from_single_device_arrays((batch.shape[0], k), batch.sharding, outs)

    @property
    def label(self) -> str:
        return f"black box {self.name!r}"

    def classes_for(self, shape: tuple[int, ...]) -> int:
        """K: ``num_classes``, or one call of ``fn`` on a zero image of ``shape`` (cached per shape)."""
        if self.num_classes is not None:
            return self.num_classes
        shape = tuple(int(s) for s in shape)
        if shape not in self._probed:
            n = self.batch_size if self.fixed_batch else 1
            with self._lock:
                out = self._checked(np.zeros((n, *shape), np.float32), None)
            self._probed[shape] = check_classes(f"{self.label}: K", int(out.shape[1]))
        return self._probed[shape]

    # ------------------------------------------------------------------ host side

    def host(self, images: Any) -> np.ndarray:
        """The callback: ``fn`` on pieces of at most ``batch_size`` images; errors kept, NaN returned."""
        x = np.asarray(images, np.float32)
        lead, item = x.shape[:-3], x.shape[-3:]
        x = x.reshape(-1, *item)
        k = self.classes_for(item)
        with self._lock:
            if self._error is None:
                try:
                    return self._run(x, k).reshape(*lead, k)
                except BlackBoxError as e:  # kept, and raised by the caller after the step
                    self._error = e
        return np.full((*lead, k), np.nan, np.float32)

    def take_error(self) -> Exception | None:
        """The kept error (cleared): :meth:`Classifier.raise_host_error` raises it."""
        with self._lock:
            error, self._error = self._error, None
        return error

    def _run(self, x: np.ndarray, k: int) -> np.ndarray:
        n = x.shape[0]
        step = n if self.batch_size is None else self.batch_size
        pieces = [self._checked(x[i:i + step], k) for i in range(0, n, step)]
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)

    def _checked(self, x: np.ndarray, k: int | None) -> np.ndarray:
        """``fn(x)`` as float32 ``[n, k]`` (padded to the fixed batch), or a :class:`BlackBoxError`."""
        n = x.shape[0]
        if self.fixed_batch and n < self.batch_size:
            x = np.concatenate([x, np.repeat(x[-1:], self.batch_size - n, axis=0)], axis=0)
        try:
            out = np.asarray(self.fn(x))
        except BlackBoxError:   # an adapter's own check (e.g. the image size), already one clear message
            raise
        except KeyboardInterrupt as e:   # Ctrl-C inside the model: kept like an error, raised after the step
            raise BlackBoxError(f"{self.label}: interrupted (Ctrl-C) while running on a batch of {n} images") from e
        except Exception as e:  # noqa: BLE001 - any error of the user's function, reported with its cause
            raise BlackBoxError(f"{self.label} raised {type(e).__name__}: {e} (on a batch of {n} images of "
                                f"shape {list(x.shape[1:])}); {call_hint(e)}") from e
        if self.fixed_batch:
            out = out[:n]
        if out.ndim != 2 or out.shape[0] != n or (k is not None and out.shape[1] != k):
            want = f"[{n}, {k}]" if k is not None else f"[{n}, K]"
            raise BlackBoxError(f"{self.label}: returned shape {list(out.shape)} for {n} images; expected {want} "
                             + (f"(num_classes={k})" if k is not None else "(one row of scores per image)"))
        if not np.issubdtype(out.dtype, np.number) or np.iscomplexobj(out):
            raise BlackBoxError(f"{self.label}: returned dtype {out.dtype}; expected real numbers (logits or "
                             "probabilities)")
        out = out.astype(np.float32, copy=False)
        finite = np.isfinite(out).all(axis=1)
        if not finite.all():
            raise BlackBoxError(f"{self.label}: returned NaN or inf for {int((~finite).sum())} of {n} images; "
                             "check the model and that the sampler's fills lie in the input range it expects")
        return out


def call_hint(error: BaseException) -> str:
    """The likely fix for a black box's error: CUDA missing, a shape the model does not take, else fix it."""
    text = str(error)
    if "CUDA" in text or "cuda" in text:
        return ("the model needs CUDA, which this machine lacks: load it on the CPU (map_location='cpu', no "
                ".cuda() / device='cuda')")
    if any(w in text for w in ("shape", "size mismatch", "sizes", "dimension")):
        return ("the model may take another input size or layout: give the size it was trained on (CLI: "
                "--input-size, --input-layout; in Python: preprocess to that size), or fix the function")
    return "fix the function and run again"


def check_classes(name: str, k: Any) -> int:
    """A class count in [1, :data:`MAX_CLASSES`], refused before anything of that size is allocated."""
    k = checks.positive_int(name, k, maximum=None)
    if k > MAX_CLASSES:
        raise ValueError(f"{name}: {k:,} classes, more than the {MAX_CLASSES:,} a black box may have (the outputs of "
                         f"one chunk of 256 images alone would take {256 * 4 * k / 2**30:,.1f} GiB); check the "
                         "model's output shape")
    return k


def check_declared_size(path: str, in_shape: list[Any], out_shape: list[Any], layout: str, dtype: Any) -> None:
    """A model file's declared class count, fixed batch and input size against :data:`MAX_CLASSES`,
    :data:`MAX_FIXED_BATCH_BYTES` and :data:`MAX_INPUT_PIXELS`, before anything is allocated."""
    if len(out_shape) == 2 and isinstance(out_shape[1], int):
        check_classes(f"model: {path!r} declares an output [N, K] with K", out_shape[1])
    hwc = (in_shape[2:] + in_shape[1:2]) if layout == "NCHW" else in_shape[1:]
    if len(hwc) == 3 and isinstance(hwc[0], int) and isinstance(hwc[1], int) and hwc[0] * hwc[1] > MAX_INPUT_PIXELS:
        raise ValueError(f"model: {path!r} declares an input of {hwc[0]}x{hwc[1]} pixels, more than the "
                         f"{MAX_INPUT_PIXELS:,} (4096²) a model input may have; export it for a smaller input")
    item = int(np.prod([d for d in hwc if isinstance(d, int)] or [1])) * max(np.dtype(dtype).itemsize, 4)
    fixed = in_shape[0] if in_shape and isinstance(in_shape[0], int) else None
    if fixed is not None and fixed * item > MAX_FIXED_BATCH_BYTES:
        raise ValueError(f"model: {path!r} takes exactly {fixed:,} images per call, {fixed * item / 2**30:,.1f} GiB "
                         f"a batch; more than the {MAX_FIXED_BATCH_BYTES / 2**30:g} GiB limit: export it with a "
                         "dynamic batch axis (dynamic_axes / dynamic_shapes) or a small fixed batch")


def fixed_batch(classifier: Any) -> int | None:
    """The one batch size a black box accepts (None: any): the engine's default chunk is a multiple of it."""
    fn = getattr(classifier, "fn", None)
    return fn.batch_size if isinstance(fn, HostFunction) and fn.fixed_batch else None


def model_identity(classifier: Any) -> dict[str, str]:
    """``{"model_sha256": ...}`` for a black box that knows its model (ONNX file, torch weights), else ``{}``.

    A run record holding it refuses a resumed evaluation whose model file or weights changed.
    """
    fn = getattr(classifier, "fn", None)
    ident = getattr(fn, "identity", None) if isinstance(fn, HostFunction) else None
    return {} if ident is None else {"model_sha256": ident}


def black_box(fn: Callable[[np.ndarray], Any], *, num_classes: int, outputs: str = "auto",
              batch_size: int | None = None, name: str | None = None) -> Classifier:
    """Any host function ``fn(images [N, H, W, C] float32 NumPy) -> [N, K]`` as a classifier.

    ``fn``'s result may be anything ``np.asarray`` takes. ``outputs``: "auto" (decided once from the
    untouched image's output: :func:`undesirable_jax.resolve_outputs`), "logits" (softmax applied),
    "probs" or "log_probs"; an explicit value the output contradicts is refused. ``batch_size``: at most this many images per call (None: one call per engine chunk).
    ``name``: used in error messages (default: the function's name). Not differentiable: methods
    that need gradients skip it.
    """
    label = name if name is not None else getattr(fn, "__name__", type(fn).__name__)
    return host_classifier(HostFunction(fn, name=label, num_classes=num_classes, batch_size=batch_size),
                           outputs)


def host_classifier(host: HostFunction, outputs: str) -> Classifier:
    """A :class:`~undesirable_jax.Classifier` calling ``host`` (used by the PyTorch and ONNX adapters)."""
    return Classifier(fn=host, outputs=check_outputs(outputs), differentiable=False)


def from_torch(module: Any, *, device: Any = None, input_layout: str = "NCHW", outputs: str = "auto",
               batch_size: int | None = None, name: str | None = None, transfer: str = "auto") -> Classifier:
    """A ``torch.nn.Module`` as a classifier (set to eval mode, run under ``torch.inference_mode()``).

    ``device``: where the module runs (it is moved there); None keeps the module's own device.
    ``input_layout``: "NCHW" (PyTorch's convention; the batch is transposed on the JAX device) or
    "NHWC". ``transfer``: "auto" hands the batch over by DLPack on the device when JAX and PyTorch
    share a CUDA GPU, through host memory otherwise; "dlpack" or "host" say which (DLPack also works
    with both on CPU). Needs the ``torch`` extra: ``pip install undesirable-jax[torch]``.
    """
    from ._torch_box import torch_classifier

    return torch_classifier(module, device=device, input_layout=input_layout, outputs=outputs,
                            batch_size=batch_size, name=name, transfer=transfer)


def from_onnx(path: Any, *, providers: Any = None, input_layout: str | None = None, outputs: str = "auto",
              batch_size: int | None = None, num_classes: int | None = None) -> Classifier:
    """An ONNX model file as a classifier, run by an ONNX Runtime ``InferenceSession``.

    The input layout ("NCHW"/"NHWC"), K and a fixed batch size are read from the graph when it
    declares them; ``input_layout`` / ``num_classes`` say them when it does not. ``providers``: ONNX
    Runtime execution providers (None: every available one, in ONNX Runtime's order of preference).
    Needs the ``onnx`` extra: ``pip install undesirable-jax[onnx]``.
    """
    from ._onnx_box import onnx_classifier

    return onnx_classifier(path, providers=providers, input_layout=input_layout, outputs=outputs,
                           batch_size=batch_size, num_classes=num_classes)
