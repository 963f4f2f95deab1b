"""ONNX models as black-box classifiers (imported only by :func:`undesirable_jax.from_onnx`).

The graph's single input is read for its layout (a 4-D input whose axis 1 holds 1 or 3 channels is
NCHW, one whose last axis does is NHWC), its element type (float32 or float16) and a fixed batch
size; its first output for K. What the graph leaves open must be said by the caller.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .black_boxes import HostFunction, host_classifier

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
    """``session.run`` on host NumPy batches, casting to the graph's input type; float32 out."""

    def __init__(self, session: Any, dtype: Any):
        self.session, self.dtype = session, dtype
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.session.run([self.output_name], {self.input_name: x.astype(self.dtype, copy=False)})[0]
        return np.asarray(out, np.float32)


def onnx_classifier(path: Any, *, providers: Any, input_layout: str | None, outputs: str,
                    batch_size: int | None, num_classes: int | None) -> Any:
    """See :func:`undesirable_jax.from_onnx`."""
    ort = _import_ort()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no ONNX file at {path!r}; check the path")
    session = ort.InferenceSession(path, providers=list(providers) if providers else ort.get_available_providers())
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
                             'not say its layout; pass input_layout="NCHW" or "NHWC"')
        input_layout = declared
    elif declared is not None and declared != input_layout:
        raise ValueError(f"input_layout: {input_layout!r} contradicts the graph's input shape {spec.shape} "
                         f"({declared}); drop the argument or fix it")
    out_shape = list(outs[0].shape)
    graph_k = out_shape[1] if len(out_shape) == 2 and isinstance(out_shape[1], int) else None
    if num_classes is not None and graph_k is not None and num_classes != graph_k:
        raise ValueError(f"num_classes: {num_classes} contradicts the graph's output shape {out_shape}")
    fixed = spec.shape[0] if isinstance(spec.shape[0], int) else None
    if fixed is not None and batch_size is not None and batch_size != fixed:
        raise ValueError(f"batch_size: the graph takes exactly {fixed} images per call (input shape {spec.shape}); "
                         f"got batch_size={batch_size}")
    host = HostFunction(OnnxForward(session, types[spec.type]), name=os.path.basename(path),
                        num_classes=num_classes if num_classes is not None else graph_k,
                        batch_size=fixed if fixed is not None else batch_size, layout=input_layout,
                        fixed_batch=fixed is not None)
    return host_classifier(host, outputs)
