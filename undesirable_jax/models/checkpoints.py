"""Read weight files into ``{name: np.ndarray}`` without running any code from the file.

- ``.safetensors``: through ``safetensors.numpy`` (a JSON header plus raw bytes; no code at all).
- torch ``.pth`` / ``.pt``, both formats, without torch: the zip format (torch >= 1.6:
  ``<prefix>/data.pkl`` plus one ``<prefix>/data/<key>`` file per storage) and the legacy format
  (pickles for magic number, protocol, system info, the object and the storage keys, then the raw
  storages). Every pickle goes through :class:`RestrictedUnpickler`, which resolves only the globals
  a state dict needs (tensor rebuilding, storage types, ``OrderedDict``) and refuses any other one
  before it can be called, so a file that tries ``os.system`` or ``eval`` raises
  :class:`UnsafeWeightsError` and nothing runs.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import io as uj_io

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _bfloat16() -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafeWeightsError(pickle.UnpicklingError):
    """A weight file asked for a global a plain state dict never needs; it was not loaded."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends: only carries the dtype."""

    def __init__(self, name: str):
        dt = _STORAGE_DTYPES[name]
        self.dtype = _bfloat16() if dt == "bfloat16" else np.dtype(dt)


class _TensorRef:
    """A tensor still to be materialised from its storage: ``(storage key, offset, size, stride)``."""

    def __init__(self, key: str, dtype: np.dtype, offset: int, size: tuple, stride: tuple):
        self.key, self.dtype, self.offset, self.size, self.stride = key, dtype, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    dtype, key = storage
    return _TensorRef(key, dtype, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a torch state dict; anything else raises UnsafeWeightsError.

    ``storage_dtypes`` records the dtype of every storage the pickle refers to, by key.
    """

    def __init__(self, file: Any):
        super().__init__(file)
        self.storage_dtypes: dict[str, np.dtype] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise UnsafeWeightsError(
            f"refusing global {module}.{name}: a state dict needs only tensors, storages and OrderedDict; "
            f"this file may run code when loaded with torch.load. Re-save it as a plain state dict "
            f"(torch.save(model.state_dict(), path)) or as .safetensors")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage_type, key, location, numel[, view_metadata])
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafeWeightsError(f"unexpected persistent id {pid!r:.80}: not a torch storage")
        self.storage_dtypes[str(pid[2])] = pid[1].dtype
        return (pid[1].dtype, str(pid[2]))


def _restricted_load(f: Any) -> tuple[Any, dict[str, np.dtype]]:
    u = RestrictedUnpickler(f)
    return u.load(), u.storage_dtypes


def _materialise(obj: Any, storages: Mapping[str, np.ndarray]) -> Any:
    """Replace every :class:`_TensorRef` in a nest of dicts / lists by a numpy array (a copy)."""
    if isinstance(obj, _TensorRef):
        if obj.key not in storages:
            raise ValueError(f"weight file: tensor refers to storage {obj.key!r}, which the file lacks")
        if obj.offset < 0 or any(n < 0 for n in obj.size) or any(st < 0 for st in obj.stride) \
                or len(obj.size) != len(obj.stride):
            raise ValueError(f"weight file: invalid tensor layout (offset {obj.offset}, size {obj.size}, "
                             f"stride {obj.stride})")
        flat = storages[obj.key]
        if obj.dtype != flat.dtype:
            flat = flat.view(obj.dtype)
        need = obj.offset + (sum((n - 1) * s for n, s in zip(obj.size, obj.stride)) + 1 if all(obj.size) else 0)
        if need > flat.size:
            raise ValueError(f"weight file: tensor needs {need} elements of storage {obj.key!r}, which has {flat.size}")
        if not all(obj.size):
            return np.zeros(obj.size, obj.dtype)
        return np.lib.stride_tricks.as_strided(
            flat[obj.offset:], shape=obj.size, strides=[s * flat.itemsize for s in obj.stride]).copy()
    if isinstance(obj, Mapping):
        return {k: _materialise(v, storages) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, storages) for v in obj)
    return obj


def _load_torch_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError(f"path: {str(path)!r} is a zip file but not a torch checkpoint (no single data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in names and z.read(prefix + "byteorder").strip() != b"little":
            raise ValueError(f"path: {str(path)!r} was saved big-endian; re-save it on a little-endian machine")
        obj, dtypes = _restricted_load(io.BytesIO(z.read(pkl[0])))
        lacking = [k for k in dtypes if f"{prefix}data/{k}" not in names]
        if lacking:
            raise ValueError(f"path: {str(path)!r} is truncated: no data for storages {lacking[:5]}")
        storages = {k: np.frombuffer(z.read(f"{prefix}data/{k}"), dtype=dt) for k, dt in dtypes.items()}
    return _materialise(obj, storages)


def _load_torch_legacy(path: Path) -> Any:
    with open(path, "rb") as f:
        magic, _ = _restricted_load(f)
        if magic != _LEGACY_MAGIC:
            raise ValueError(f"path: {str(path)!r} is neither a torch checkpoint nor .safetensors")
        _restricted_load(f)  # protocol version
        _restricted_load(f)  # system info
        obj, dtypes = _restricted_load(f)
        keys, _ = _restricted_load(f)
        storages = {}
        for key in keys:
            key = str(key)
            if key not in dtypes:
                raise ValueError(f"path: {str(path)!r}: storage {key!r} is listed but no tensor uses it")
            (n,) = struct.unpack("<q", f.read(8))
            storages[key] = np.frombuffer(f.read(n * dtypes[key].itemsize), dtype=dtypes[key])
    return _materialise(obj, storages)


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"weights: no file at {str(path)!r}. Download the weights yourself (this package never downloads) "
        f"and pass the local path to a .safetensors or torch .pth state dict")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The object stored in a ``.safetensors`` or torch file, tensors as numpy arrays."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise _missing(path)
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header
    looks_safetensors = len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 10**8
    if path.suffix == ".safetensors" or looks_safetensors:
        from safetensors.numpy import load_file

        return load_file(os.fspath(path))
    if head[:4] == b"PK\x03\x04":
        return _load_torch_zip(path)
    if head[:1] == b"\x80":
        return _load_torch_legacy(path)
    raise ValueError(f"path: {str(path)!r} is not a .safetensors file nor a torch checkpoint (zip or legacy)")


def load_state_dict(path: str | os.PathLike, *, key: str | None = None) -> dict[str, np.ndarray]:
    """A flat ``{name: array}`` state dict from a ``.safetensors`` or torch ``.pth`` file.

    ``key`` picks a nested entry of a checkpoint dict (e.g. ``"state_dict"`` or ``"model"``).
    """
    obj = read_checkpoint(path)
    if key is not None:
        if not isinstance(obj, Mapping) or key not in obj:
            got = sorted(obj) if isinstance(obj, Mapping) else type(obj).__name__
            raise ValueError(f"key: {key!r} not in the checkpoint at {str(path)!r}; it holds {got}")
        obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"path: {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    bad = [k for k, v in obj.items() if not isinstance(v, np.ndarray)]
    if bad:
        nested = [k for k in bad if isinstance(obj[k], Mapping)]
        hint = f"; pass key= one of {nested}" if nested else ""
        raise ValueError(f"path: {str(path)!r} is not a flat state dict (non-tensor entries {bad[:5]}){hint}")
    return {str(k): v for k, v in obj.items()}


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any],
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``{name: array}`` to ``path`` as .safetensors, atomically."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    return uj_io.write_bytes(path, save(arrays, metadata=dict(metadata) if metadata else None))
