"""Read weight files into ``{name: np.ndarray}`` without running any code from the file.

- ``.safetensors``: through ``safetensors.numpy`` (a JSON header plus raw bytes; no code at all).
- torch ``.pth`` / ``.pt``, both formats, without torch: the zip format (torch >= 1.6:
  ``<prefix>/data.pkl`` plus one ``<prefix>/data/<key>`` file per storage) and the legacy format
  (pickles for magic number, protocol, system info, the object and the storage keys, then the raw
  storages). Every pickle goes through :class:`RestrictedUnpickler`, which resolves only the globals
  a state dict needs (tensor rebuilding, storage types, ``OrderedDict``) and refuses any other one
  before it can be called, so a file that tries ``os.system`` or ``eval`` raises
  :class:`UnsafeWeightsError` and nothing runs.

Before any tensor is allocated, every size is checked against the file: the safetensors header
(length, JSON, dtypes, offsets), zip members (no storage larger than the file), legacy storage
lengths (no more bytes than follow), and tensor views (inside their storage, no more elements than
it holds, no more than :data:`MAX_VIEW_REUSE` times the stored bytes in all). A file that fails
raises :class:`~undesirable_jax.checks.BadFileError` naming it.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors import SafetensorError

from .. import io as uj_io
from ..checks import BadFileError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
#: Views may re-read their storages up to this many times in total (transposes, slices, tied weights).
MAX_VIEW_REUSE = 4
_SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors format's own limit
_SAFETENSORS_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
                         "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


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


def _all_ints(values: Any, minimum: int | None = None) -> bool:
    """True when ``values`` are plain ints (not bools), each ``>= minimum`` when given."""
    return all(isinstance(v, int) and not isinstance(v, bool) and (minimum is None or v >= minimum)
               for v in values)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_ignored):
    dtype, key = storage
    if not _all_ints((storage_offset, *size, *stride)):
        raise ValueError(f"invalid tensor layout (offset {storage_offset!r}, size {size!r}, stride {stride!r})")
    return _TensorRef(key, dtype, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *_ignored):
    return data


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals of a torch state dict; anything else raises UnsafeWeightsError.

    ``storage_dtypes`` and ``storage_numel`` record the dtype and declared element count of every
    storage the pickle refers to, by key.
    """

    def __init__(self, file: Any):
        super().__init__(file)
        self.storage_dtypes: dict[str, np.dtype] = {}
        self.storage_numel: dict[str, Any] = {}

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
        self.storage_numel[str(pid[2])] = pid[4]
        return (pid[1].dtype, str(pid[2]))


def _restricted_load(f: Any) -> tuple[Any, dict[str, np.dtype]]:
    u = RestrictedUnpickler(f)
    obj = u.load()
    for key, dtype in u.storage_dtypes.items():
        _storage_bytes(key, u.storage_numel[key], dtype)
    return obj, u.storage_dtypes


def _storage_bytes(key: str, numel: Any, dtype: np.dtype) -> int:
    """Bytes of a storage from its declared element count (refused unless a non-negative int)."""
    if not _all_ints((numel,), minimum=0):
        raise ValueError(f"storage {key!r} declares {numel!r} elements")
    return numel * dtype.itemsize


def _tensor_refs(obj: Any) -> list[_TensorRef]:
    """Every :class:`_TensorRef` in a nest of dicts / lists / tuples."""
    if isinstance(obj, _TensorRef):
        return [obj]
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else ()
    return [r for v in values for r in _tensor_refs(v)]


def _check_layouts(obj: Any, storages: Mapping[str, np.ndarray]) -> None:
    """Refuse, before anything is allocated, tensors that lie outside their storage, views with more
    elements than their storage (stride 0), and views that re-read the storages over and over."""
    total = 0
    for ref in _tensor_refs(obj):
        if ref.key not in storages:
            raise ValueError(f"a tensor refers to storage {ref.key!r}, which the file lacks")
        if ref.offset < 0 or any(n < 0 for n in ref.size) or any(st < 0 for st in ref.stride) \
                or len(ref.size) != len(ref.stride):
            raise ValueError(f"invalid tensor layout (offset {ref.offset}, size {ref.size}, stride {ref.stride})")
        nbytes = storages[ref.key].nbytes
        count = ref.offset + (sum((n - 1) * st for n, st in zip(ref.size, ref.stride)) + 1 if all(ref.size) else 0)
        if count * ref.dtype.itemsize > nbytes:
            raise ValueError(f"a tensor needs {count} elements of storage {ref.key!r}, which has "
                             f"{nbytes // ref.dtype.itemsize}")
        elements = math.prod(ref.size)
        if elements * ref.dtype.itemsize > nbytes:
            raise ValueError(f"a tensor of shape {ref.size} has more elements than its storage {ref.key!r} "
                             f"(stride {ref.stride}: an expanded view); save tensor.contiguous() instead")
        total += elements * ref.dtype.itemsize
    stored = sum(a.nbytes for a in storages.values())
    if total > MAX_VIEW_REUSE * stored + 2**20:
        raise ValueError(f"its tensors read {total:,} bytes from {stored:,} bytes of storage (more than "
                         f"{MAX_VIEW_REUSE}x: overlapping views); save each tensor with tensor.clone()")


def _materialise(obj: Any, storages: Mapping[str, np.ndarray]) -> Any:
    """Replace every :class:`_TensorRef` in a nest of dicts / lists by a numpy array (a copy)."""
    if isinstance(obj, _TensorRef):
        flat = storages[obj.key]
        if obj.dtype != flat.dtype:
            flat = flat.view(obj.dtype)
        if not all(obj.size):
            return np.zeros(obj.size, obj.dtype)
        return np.lib.stride_tricks.as_strided(
            flat[obj.offset:], shape=obj.size, strides=[s * flat.itemsize for s in obj.stride]).copy()
    if isinstance(obj, Mapping):
        return {k: _materialise(v, storages) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_materialise(v, storages) for v in obj)
    return obj


def _load_torch_zip(path: Path, size: int) -> Any:
    with zipfile.ZipFile(path) as z:
        infos = {i.filename: i for i in z.infolist()}
        big = [i for i in infos.values() if i.file_size > size]
        if big:
            raise ValueError(f"member {big[0].filename!r} declares {big[0].file_size:,} bytes uncompressed, more "
                             f"than the whole file ({size:,} bytes); torch stores tensors uncompressed")
        pkl = [n for n in infos if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkl) != 1:
            raise ValueError("is a zip file but not a torch checkpoint (no single data.pkl)")
        prefix = pkl[0][: -len("data.pkl")]
        if prefix + "byteorder" in infos and z.read(prefix + "byteorder").strip() != b"little":
            raise ValueError("was saved big-endian; re-save it on a little-endian machine")
        u = RestrictedUnpickler(io.BytesIO(z.read(pkl[0])))
        obj = u.load()
        lacking = [k for k in u.storage_dtypes if f"{prefix}data/{k}" not in infos]
        if lacking:
            raise ValueError(f"is truncated: no data for storages {lacking[:5]}")
        storages = {}
        for k, dt in u.storage_dtypes.items():
            want, got = _storage_bytes(k, u.storage_numel[k], dt), infos[f"{prefix}data/{k}"].file_size
            if got != want:
                raise ValueError(f"storage {k!r} holds {got:,} bytes, but its tensors declare {want:,}")
            storages[k] = np.frombuffer(z.read(f"{prefix}data/{k}"), dtype=dt)
    _check_layouts(obj, storages)
    return _materialise(obj, storages)


def _load_torch_legacy(path: Path, size: int) -> Any:
    with open(path, "rb") as f:
        magic, _ = _restricted_load(f)
        if magic != _LEGACY_MAGIC:
            raise ValueError("is neither a torch checkpoint nor .safetensors")
        _restricted_load(f)  # protocol version
        _restricted_load(f)  # system info
        obj, dtypes = _restricted_load(f)
        keys, _ = _restricted_load(f)
        if not isinstance(keys, (list, tuple)):
            raise ValueError(f"ends with {type(keys).__name__} where the list of storage keys belongs")
        storages = {}
        for key in keys:
            key = str(key)
            if key not in dtypes:
                raise ValueError(f"storage {key!r} is listed but no tensor uses it")
            head = f.read(8)
            if len(head) != 8:
                raise ValueError(f"is truncated: it ends before storage {key!r}")
            (n,) = struct.unpack("<q", head)
            nbytes, left = n * dtypes[key].itemsize, size - f.tell()
            if n < 0 or nbytes > left:
                raise ValueError(f"storage {key!r} declares {n:,} elements ({nbytes:,} bytes), but only {left:,} "
                                 "bytes follow: truncated or damaged")
            storages[key] = np.frombuffer(f.read(nbytes), dtype=dtypes[key])
    _check_layouts(obj, storages)
    return _materialise(obj, storages)


def _missing(path: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"weights: no file at {str(path)!r}. Download the weights yourself (this package never downloads) "
        f"and pass the local path to a .safetensors or torch .pth state dict")


def read_checkpoint(path: str | os.PathLike) -> Any:
    """The object stored in a ``.safetensors`` or torch file, tensors as numpy arrays.

    Sizes, offsets, strides and element counts are checked against the file before anything is
    allocated; a damaged, truncated or inconsistent file raises :class:`BadFileError` naming it.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise _missing(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors: an 8-byte little-endian header length, then the JSON header
    looks_safetensors = len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") < 10**8
    try:
        if path.suffix == ".safetensors" or looks_safetensors:
            return _load_safetensors(path, size, head)
        if head[:4] == b"PK\x03\x04":
            return _load_torch_zip(path, size)
        if head[:1] == b"\x80":
            return _load_torch_legacy(path, size)
    except (UnsafeWeightsError, BadFileError):
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, OverflowError, MemoryError,
            struct.error, pickle.UnpicklingError, zipfile.BadZipFile, zipfile.LargeZipFile, OSError,
            SafetensorError) as e:
        raise _damaged(path, e) from e
    raise BadFileError(path, "is not a .safetensors file nor a torch checkpoint (zip or legacy)",
                       "pass a .safetensors file or a torch .pth state dict")


def _damaged(path: Path, e: BaseException) -> BadFileError:
    """A reader's error as a :class:`BadFileError` that names the file."""
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, ValueError) and not isinstance(e, pickle.UnpicklingError):
        problem = text if text.startswith(("is ", "was ")) else f"is not a usable weight file: {text}"
    else:
        problem = f"is damaged or truncated ({type(e).__name__}: {text})"
    return BadFileError(path, problem, "download or save it again")


def _load_safetensors(path: Path, size: int, head: bytes) -> dict[str, np.ndarray]:
    """Check the header against the file (lengths, JSON, dtypes, offsets), then read with safetensors."""
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    if not 2 <= n <= min(size - 8, _SAFETENSORS_MAX_HEADER):
        what = ("a torch zip checkpoint" if head[:4] == b"PK\x03\x04" else
                "a pickle (torch legacy checkpoint)" if head[:1] == b"\x80" else "not safetensors")
        raise ValueError(f"is not a valid .safetensors file: its header length {n:,} does not fit the file "
                         f"({size:,} bytes); it looks like {what}")
    with open(path, "rb") as f:
        f.seek(8)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"is not a valid .safetensors file: its header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise ValueError("is not a valid .safetensors file: its header is not a JSON object")
    data = size - 8 - n
    for name, info in header.items():
        if name != "__metadata__":
            _check_safetensors_entry(name, info, data)
    from safetensors.numpy import load_file

    return load_file(os.fspath(path))


def _check_safetensors_entry(name: str, info: Any, data: int) -> None:
    ok = isinstance(info, dict) and info.get("dtype") in _SAFETENSORS_ITEMSIZE
    shape, offsets = (info.get("shape"), info.get("data_offsets")) if ok else (None, None)
    if not (ok and isinstance(shape, list) and _all_ints(shape, 0) and isinstance(offsets, list)
            and len(offsets) == 2 and _all_ints(offsets, 0)):
        raise ValueError(f"is not a valid .safetensors file: tensor {name!r} has a malformed entry {info!r:.200}")
    begin, end = offsets
    want = math.prod(shape) * _SAFETENSORS_ITEMSIZE[info["dtype"]]
    if not begin <= end <= data or end - begin != want:
        raise ValueError(f"is not a valid .safetensors file: tensor {name!r} ({info['dtype']} {shape}, {want:,} "
                         f"bytes) has data offsets {offsets} outside the {data:,} data bytes or of the wrong size")


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


def check_shapes(source: str | os.PathLike, model: str, want: Mapping[str, tuple],
                 got: Mapping[str, Any]) -> None:
    """Refuse weights that do not fit ``model``: the first missing tensor, or the first tensor whose
    shape differs, named with both shapes. ``got`` maps names to arrays; names not in ``want`` are
    ignored (bookkeeping such as ``num_batches_tracked``)."""
    missing = [k for k in want if k not in got]
    if missing:
        raise BadFileError(source, f"does not fit {model}: it lacks {len(missing)} of its tensors, e.g. "
                                   f"{missing[:3]}", f"pass weights saved from {model}")
    for k, shape in want.items():
        if tuple(np.shape(got[k])) != tuple(shape):
            raise BadFileError(source, f"does not fit {model}: tensor {k!r} has shape {tuple(np.shape(got[k]))} "
                                       f"where {model} needs {tuple(shape)}", f"pass weights saved from {model}")


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, Any],
                     metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``{name: array}`` to ``path`` as .safetensors, atomically."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tensors.items()}
    return uj_io.write_bytes(path, save(arrays, metadata=dict(metadata) if metadata else None))
