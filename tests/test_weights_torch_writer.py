"""A small pure-Python writer of torch's checkpoint formats for the tests (torch is not installed),
and the checks that what it writes is what torch writes (``torch.load`` where torch is installed).

It emits the pickle opcodes by hand (protocol 2, as ``torch.save`` does), so the bytes do not come
from the reader under test: ``OrderedDict`` of tensors rebuilt with ``torch._utils._rebuild_tensor_v2``
from storages named by persistent id ``('storage', torch.<Type>Storage, key, 'cpu', numel)``.

A tensor is given as ``(storage_key, offset, size, stride)`` over a dict of flat storages, so tests
can write views that share a storage (offsets, transposed strides) as torch does.
"""

from __future__ import annotations

import io
import pickle
import struct
import zipfile

import numpy as np

_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.int32): "IntStorage", np.dtype(np.uint8): "ByteStorage",
                  np.dtype(np.bool_): "BoolStorage"}
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _int(i: int) -> bytes:
    return b"J" + struct.pack("<i", i)


def _ints(xs) -> bytes:
    return b"(" + b"".join(_int(int(x)) for x in xs) + b"t"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def state_dict_pickle(tensors: dict, storages: dict, legacy: bool) -> bytes:
    """Pickle bytes of an OrderedDict ``name -> tensor``; ``tensors[name] = (key, offset, size, stride)``."""
    out = bytearray(b"\x80\x02")
    out += _global("collections", "OrderedDict") + b")R"
    out += b"("
    for name, (key, offset, size, stride) in tensors.items():
        flat = storages[key]
        out += _str(name)
        out += _global("torch._utils", "_rebuild_tensor_v2")
        out += b"("
        out += b"(" + _str("storage") + _global("torch", _STORAGE_NAMES[flat.dtype]) + _str(key) + _str("cpu")
        out += _int(flat.size) + (b"N" if legacy else b"") + b"tQ"
        out += _int(offset) + _ints(size) + _ints(stride) + b"\x89"
        out += _global("collections", "OrderedDict") + b")R"
        out += b"tR"
    out += b"u."
    return bytes(out)


def write_zip(path, tensors: dict, storages: dict, prefix: str = "archive") -> None:
    """torch >= 1.6 zip format: ``<prefix>/data.pkl``, ``<prefix>/data/<key>``, byteorder, version."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", state_dict_pickle(tensors, storages, legacy=False))
        z.writestr(f"{prefix}/byteorder", "little")
        for key, flat in storages.items():
            z.writestr(f"{prefix}/data/{key}", np.ascontiguousarray(flat).tobytes())
        z.writestr(f"{prefix}/version", "3\n")


def write_legacy(path, tensors: dict, storages: dict) -> None:
    """Legacy format: pickles of magic, protocol, sys info, the object, the keys; then raw storages."""
    buf = io.BytesIO()
    for header in (LEGACY_MAGIC, 1001, {"protocol_version": 1001, "little_endian": True,
                                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
        pickle.dump(header, buf, protocol=2)
    buf.write(state_dict_pickle(tensors, storages, legacy=True))
    pickle.dump(list(storages), buf, protocol=2)
    for flat in storages.values():
        buf.write(struct.pack("<q", flat.size))
        buf.write(np.ascontiguousarray(flat).tobytes())
    with open(path, "wb") as f:
        f.write(buf.getvalue())


def contiguous(arrays: dict) -> tuple[dict, dict]:
    """Each array in its own storage, C-contiguous: ``(tensors, storages)`` for the writers."""
    tensors, storages = {}, {}
    for i, (name, a) in enumerate(arrays.items()):
        a = np.asarray(a)
        key = str(i)
        storages[key] = a.reshape(-1).copy()
        stride = tuple(int(s) for s in np.cumprod((a.shape[1:] + (1,))[::-1])[::-1]) if a.ndim else ()
        tensors[name] = (key, 0, a.shape, stride)
    return tensors, storages


# ----------------------------------------------------------------------------- checks of the writer


def _sample():
    rng = np.random.default_rng(0)
    return {"w": rng.normal(size=(3, 2, 2, 2)).astype(np.float32), "b": np.arange(3, dtype=np.float32),
            "n": np.array(7, dtype=np.int64)}


def test_writer_emits_valid_pickles(tmp_path):
    import pickletools

    tensors, storages = contiguous(_sample())
    for legacy in (False, True):
        ops = [op.name for op, _arg, _pos in pickletools.genops(state_dict_pickle(tensors, storages, legacy))]
        assert ops[0] == "PROTO" and ops[-1] == "STOP"
        assert ops.count("BINPERSID") == len(tensors)
        assert ops.count("GLOBAL") == 1 + 3 * len(tensors)  # OrderedDict, and per tensor: rebuild, storage, hooks


def test_torch_reads_what_the_writer_writes(tmp_path):
    torch = __import__("pytest").importorskip("torch")
    arrays = _sample()
    tensors, storages = contiguous(arrays)
    write_zip(tmp_path / "a.pth", tensors, storages)
    write_legacy(tmp_path / "b.pth", tensors, storages)
    for name in ("a.pth", "b.pth"):
        sd = torch.load(tmp_path / name, weights_only=True)
        assert sorted(sd) == sorted(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(sd[k].numpy(), v)
