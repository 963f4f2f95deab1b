"""PyTorch modules as black-box classifiers (imported only by :func:`undesirable_jax.from_torch`).

On the host path the batch comes through ``jax.pure_callback`` as a NumPy array, is copied into a
torch tensor (so a module that writes into its input cannot touch JAX's buffers) and moved to the
module's device. When JAX itself runs on a CUDA GPU and the module is on a CUDA device, the batch
stays on the GPU: ``jax.experimental.buffer_callback`` hands JAX's device buffers to torch by
DLPack, the module runs on JAX's CUDA stream, and its output is written into JAX's output buffer.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .black_boxes import BlackBoxError, HostFunction, host_classifier

_TRANSFERS = ("auto", "host", "dlpack")


def _import_torch():
    try:
        import torch
    except ImportError as e:
        raise ImportError("from_torch needs PyTorch: pip install 'undesirable-jax[torch]' "
                          f"(or a torch build for your machine) ({e})") from e
    return torch


class TorchForward:
    """``module(x)`` on host NumPy batches: eval mode, ``torch.inference_mode()``, float32 out.

    The batch is cast to the module's floating-point parameter dtype (float16 and bfloat16 modules
    work; float32 when it has none) and the output back to float32.
    """

    def __init__(self, module: Any, device: Any):
        self.torch = _import_torch()
        self.module, self.device = module, device
        self.dtype = param_dtype(self.torch, module)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            t = torch.from_numpy(np.array(x, np.float32)).to(self.device, self.dtype)
            out = self.module(t)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the module returned {type(out).__name__}; expected a tensor [N, K]")
            return out.float().cpu().numpy()


class TorchDevice(HostFunction):
    """A :class:`HostFunction` that can hand JAX's buffers to torch by DLPack instead of NumPy.

    ``transfer``: "host" (``pure_callback``, a NumPy copy), "dlpack" (``buffer_callback``: torch
    reads JAX's input buffer and writes JAX's output buffer, on JAX's CUDA stream on a GPU; JAX and
    torch must be on the same kind of device) or "auto" (dlpack when JAX runs on a GPU and the module
    on a CUDA device, host otherwise).
    """

    def __init__(self, fn: TorchForward, *, transfer: str, **kwargs: Any):
        if transfer not in _TRANSFERS:
            raise ValueError(f"transfer: expected one of {_TRANSFERS}, got {transfer!r}")
        super().__init__(fn, **kwargs)
        self.transfer = transfer

    def dlpack(self) -> bool:
        """Whether this trace hands buffers over by DLPack (checked against JAX's backend)."""
        backend, torch_kind = jax.default_backend(), self.fn.device.type
        if self.transfer == "auto":
            return backend == "gpu" and torch_kind == "cuda"
        if self.transfer == "dlpack" and (backend == "gpu") != (torch_kind == "cuda"):
            raise ValueError(f'transfer="dlpack": JAX runs on {backend} but the module on {torch_kind}; move the '
                             'module (device=...) or use transfer="host"')
        return self.transfer == "dlpack"

    def outside_jit(self) -> bool:
        """DLPack hands JAX's buffers over inside the jitted step (on JAX's stream on a GPU): not outside it."""
        return not self.dlpack()

    def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
        if not self.dlpack():
            return super().__call__(images)
        from jax.experimental.buffer_callback import buffer_callback

        x = self.device_input(images)
        lead, item = x.shape[:-3], x.shape[-3:]
        k = self.classes_for(item)
        x = x.reshape(-1, *item)
        out = jax.ShapeDtypeStruct((x.shape[0], k), jnp.float32)
        return buffer_callback(self.device_host, out, vmap_method="broadcast_all")(x).reshape(*lead, k)

    def device_host(self, ctx: Any, out: Any, x: Any) -> None:
        """The buffer callback: torch reads ``x`` and writes ``out`` in place (on JAX's CUDA stream)."""
        torch = self.fn.torch
        cuda = self.fn.device.type == "cuda"
        stream = torch.cuda.ExternalStream(ctx.stream, device=self.fn.device) if cuda else None
        with torch.cuda.stream(stream) if cuda else contextlib.nullcontext():
            xt, ot = torch.from_dlpack(x), torch.from_dlpack(out)
            with self._lock:
                if self._error is None:
                    try:
                        ot.copy_(self._run_device(xt, ot.shape[1]))
                        return
                    except BlackBoxError as e:
                        self._error = e
            ot.fill_(float("nan"))

    def _run_device(self, xt: Any, k: int) -> Any:
        torch = self.fn.torch
        n = xt.shape[0]
        step = n if self.batch_size is None else self.batch_size
        outs = []
        with torch.inference_mode():
            for i in range(0, n, step):
                piece = xt[i:i + step].to(self.fn.dtype, copy=True)  # the module may write into its input
                try:
                    o = self.fn.module(piece)
                except Exception as e:  # noqa: BLE001 - reported with its cause
                    raise BlackBoxError(f"{self.label} raised {type(e).__name__}: {e} (on a batch of "
                                        f"{piece.shape[0]} images of shape {list(piece.shape[1:])})") from e
                if not isinstance(o, torch.Tensor) or o.ndim != 2 or tuple(o.shape) != (piece.shape[0], k):
                    shape = list(o.shape) if isinstance(o, torch.Tensor) else type(o).__name__
                    raise BlackBoxError(f"{self.label}: returned {shape} for {piece.shape[0]} images; expected "
                                        f"[{piece.shape[0]}, {k}]")
                outs.append(o.float())
            result = torch.cat(outs) if len(outs) > 1 else outs[0]
            bad = ~torch.isfinite(result).all(dim=1)
            if bool(bad.any()):
                raise BlackBoxError(f"{self.label}: returned NaN or inf for {int(bad.sum())} of {n} images; "
                                    "check the model and that the sampler's fills lie in the input range it expects")
        return result


def torch_classifier(module: Any, *, device: Any, input_layout: str, outputs: str, batch_size: int | None,
                     name: str | None, transfer: str = "auto") -> Any:
    """See :func:`undesirable_jax.from_torch`."""
    torch = _import_torch()
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module: expected a torch.nn.Module, got {type(module).__name__}")
    if input_layout not in ("NCHW", "NHWC"):
        raise ValueError(f'input_layout: expected "NCHW" or "NHWC", got {input_layout!r}')
    if device is None:
        first = next(iter(module.parameters()), None)
        first = first if first is not None else next(iter(module.buffers()), None)
        device = first.device if first is not None else torch.device("cpu")
    else:
        device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: the module is (to be) on {device}, but torch sees no CUDA device on this machine "
                         "(torch.cuda.is_available() is False); use device='cpu' (and map_location='cpu' when loading)")
    module.to(device)
    module.eval()
    label = name if name is not None else type(module).__name__
    host = TorchDevice(TorchForward(module, device), transfer=transfer, name=label, batch_size=batch_size,
                       layout=input_layout, identity=module_sha256(torch, module, label))
    return host_classifier(host, outputs)


def param_dtype(torch: Any, module: Any) -> Any:
    """The dtype of the module's first floating-point parameter (or buffer); float32 when it has none."""
    for t in (*module.parameters(), *module.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def module_sha256(torch: Any, module: Any, name: str) -> str:
    """SHA-256 of the module's class path, ``name`` and its state dict (names, shapes, dtypes, bytes)."""
    h = hashlib.sha256(f"{type(module).__module__}.{type(module).__qualname__}|{name}".encode())
    for key, t in module.state_dict().items():
        t = t.detach().to("cpu").contiguous()
        h.update(f"|{key}|{tuple(t.shape)}|{t.dtype}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
