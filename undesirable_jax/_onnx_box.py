"""ONNX models as black-box classifiers (imported only by :func:`undesirable_jax.from_onnx`).

The graph's single input is read for its layout (a 4-D input whose axis 1 holds 1 or 3 channels is
NCHW, one whose last axis does is NHWC), its element type (float32 or float16) and a fixed batch
size; its first output for K. What the graph leaves open must be said by the caller.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from .black_boxes import BlackBoxError, HostFunction, check_declared_size, host_classifier

_CHANNELS = (1, 3)


def _import_ort():
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"from_onnx needs ONNX Runtime: pip install 'undesirable-jax[onnx]' ({e})") from e
    return onnxruntime


def graph_layout(shape: list[Any]) -> str | None:
    """"NCHW" / "NHWC" from a declared 4-D input shape (symbolic axes as strings or None), else None."""
    if len(shape) != 4:
        return None
    c1, c3 = shape[1] in _CHANNELS, shape[3] in _CHANNELS
    if c1 and not c3:
        return "NCHW"
    if c3 and not c1:
        return "NHWC"
    return None


class OnnxForward:
    """``session.run`` on host NumPy batches, casting to the graph's input type; float32 out.

    An image whose shape differs from the one the graph declares is refused naming both, before
    ONNX Runtime sees it.
    """

    def __init__(self, session: Any, dtype: Any, name: str = "the ONNX graph"):
        self.session, self.dtype, self.name = session, dtype, name
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.declared = list(session.get_inputs()[0].shape)[1:]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        got = list(x.shape[1:])
        if any(isinstance(d, int) and d != g for d, g in zip(self.declared, got)):
            raise BlackBoxError(f"{self.name}: the graph takes images of shape {self.declared} (after the batch "
                                f"axis) but got {got}; preprocess the image to that size (the CLI does so from "
                                "the graph; in Python: undesirable_jax.data.Preprocessor(size=...))")
        try:
            out = self.session.run([self.output_name], {self.input_name: x.astype(self.dtype, copy=False)})[0]
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's own error classes, in one message
            raise BlackBoxError(f"{self.name}: ONNX Runtime failed on a batch of {x.shape[0]} images of shape {got} "
                                f"({type(e).__name__}: {' '.join(str(e).split())[:400]}); the graph cannot run on "
                                "this input: check the input size and type it expects, or export it again") from e
        return np.asarray(out, np.float32)


def onnx_classifier(path: Any, *, providers: Any, input_layout: str | None, outputs: str,
                    batch_size: int | None, num_classes: int | None) -> Any:
    """See :func:`undesirable_jax.from_onnx`."""
    ort = _import_ort()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no ONNX file at {path!r}; check the path")
    session = _session(ort, path, providers)
    inputs, outs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise ValueError(f"path: {path!r} has {len(inputs)} inputs {[i.name for i in inputs]}; expected one image "
                         "batch [N, C, H, W] or [N, H, W, C]")
    spec = inputs[0]
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
    if spec.type not in types:
        raise ValueError(f"path: the input {spec.name!r} has type {spec.type}; expected a float tensor")
    declared = graph_layout(list(spec.shape))
    if input_layout is None:
        if declared is None:
            raise ValueError(f"input_layout: the graph's input {spec.name!r} has shape {spec.shape}, which does "
                             'not say its layout; pass input_layout="NCHW" or "NHWC" (CLI: --input-layout)')
        input_layout = declared
    elif declared is not None and declared != input_layout:
        raise ValueError(f"input_layout: {input_layout!r} contradicts the graph's input shape {spec.shape} "
                         f"({declared}); drop the argument or fix it")
    out_shape = _merged(list(outs[0].shape), declared_output(path))
    graph_k = out_shape[1] if len(out_shape) == 2 and isinstance(out_shape[1], int) else None
    if num_classes is not None and graph_k is not None and num_classes != graph_k:
        raise ValueError(f"num_classes: {num_classes} contradicts the graph's output shape {out_shape}")
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
    if fixed is not None and batch_size is not None and batch_size != fixed:
        raise ValueError(f"batch_size: the graph takes exactly {fixed} images per call (input shape {spec.shape}); "
                         f"got batch_size={batch_size}")
    check_declared_size(path, spec.shape, out_shape, input_layout, types[spec.type])
    host = HostFunction(OnnxForward(session, types[spec.type], os.path.basename(path)), name=os.path.basename(path),
                        num_classes=num_classes if num_classes is not None else graph_k,
                        batch_size=fixed if fixed is not None else batch_size, layout=input_layout,
                        fixed_batch=fixed is not None, identity=file_sha256(path))
    return host_classifier(host, outputs)


#: What the usual ONNX Runtime load failures mean, by a word of its message: the likely fix.
_LOAD_HINTS = (
    (("external", "location", ".data", "no such file"),
     "keep the external-data file(s) the graph names next to it, under the names it was saved with, or re-export "
     "with the weights inside (save_as_external_data=False)"),
    (("not_implemented", "could not find an implementation", "no opset import", "is not a registered function",
      "unrecognized attribute", "opset"),
     "the graph uses an operator (or opset) this ONNX Runtime does not implement; re-export with a supported "
     "opset and standard operators, or upgrade onnxruntime"),
    (("shapeinferenceerror", "unification", "typeinferenceerror", "invalid_graph", "invalid graph"),
     "the graph is inconsistent (its shapes or types do not fit together); export it again"),
    (("protobuf", "no graph", "model_path", "parse", "load model"),
     "the file is empty, truncated or not an ONNX model; export or download it again"),
)


def _session(ort: Any, path: str, providers: Any) -> Any:
    """An ``InferenceSession`` of ``path``; any failure becomes one ValueError naming the file and the fix."""
    options = ort.SessionOptions()
    options.log_severity_level = 4   # fatal only: its warnings and error logs would add lines to the one-line error
    try:
        return ort.InferenceSession(path, sess_options=options,
                                    providers=list(providers) if providers else ort.get_available_providers())
    except Exception as e:  # noqa: BLE001 - ONNX Runtime's own error classes; reported with the cause
        text = " ".join(str(e).split())
        low = text.lower()
        hint = next((h for words, h in _LOAD_HINTS if any(w in low for w in words)),
                    "check that it is an ONNX model ONNX Runtime can run")
        raise ValueError(f"model: ONNX Runtime cannot load {path!r} ({type(e).__name__}: {text[:300]}); {hint}") from e


def file_sha256(path: str) -> str:
    """SHA-256 of an ONNX file and of the external-data files it names (in the order it names them)."""
    h = hashlib.sha256()
    for f in [path, *_external_files(path)]:
        h.update(os.path.relpath(f, os.path.dirname(path)).encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _merged(inferred: list[Any], declared: list[Any]) -> list[Any]:
    """The output shape ONNX Runtime reports, with the graph's declared sizes where it reports none
    (Runtime drops a declared size its own shape inference disagrees with)."""
    if len(declared) != len(inferred):
        return inferred
    return [i if isinstance(i, int) else d for i, d in zip(inferred, declared)]


def declared_output(path: str) -> list[Any]:
    """The first output's shape as the graph file declares it (ints, None where symbolic); [] without onnx."""
    try:
        import onnx
    except ImportError:
        return []
    model = onnx.load(path, load_external_data=False)
    dims = model.graph.output[0].type.tensor_type.shape.dim if model.graph.output else []
    return [d.dim_value if d.HasField("dim_value") else None for d in dims]


def _external_files(path: str) -> list[str]:
    """The external-data files an ONNX graph refers to (none when the onnx package is absent)."""
    try:
        import onnx
    except ImportError:  # ONNX Runtime alone loads the model; the file's own hash is then the identity
        return []
    model = onnx.load(path, load_external_data=False)
    names: list[str] = []
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc is not None and loc not in names:
                names.append(loc)
    base = os.path.dirname(os.path.abspath(path))
    return [os.path.join(base, n) for n in names if os.path.isfile(os.path.join(base, n))]
