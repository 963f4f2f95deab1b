"""Weight files are read without running code from them: torch zip / legacy formats and safetensors."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import numpy as np
import pytest

from undesirable_jax.models import checkpoints as W
from test_weights_torch_writer import LEGACY_MAGIC, contiguous, write_legacy, write_zip


def _arrays():
    rng = np.random.default_rng(1)
    return {
        "conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
        "conv.bias": rng.normal(size=(4,)).astype(np.float32),
        "bn.num_batches_tracked": np.array(12, dtype=np.int64),
        "half": rng.normal(size=(2, 5)).astype(np.float16),
        "double": rng.normal(size=(3,)),
        "mask": rng.random(6) > 0.5,
        "empty": np.zeros((0, 3), np.float32),
    }


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_torch_formats_round_trip(tmp_path, fmt):
    arrays = _arrays()
    tensors, storages = contiguous(arrays)
    path = tmp_path / "w.pth"
    (write_zip if fmt == "zip" else write_legacy)(path, tensors, storages)
    sd = W.load_state_dict(path)
    assert list(sd) == list(arrays)  # order kept
    for k, v in arrays.items():
        assert sd[k].dtype == v.dtype and sd[k].shape == v.shape, k
        np.testing.assert_array_equal(sd[k], v)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_views_sharing_one_storage(tmp_path, fmt):
    """Offsets and non-contiguous strides, as torch writes a transposed view or a slice of a tensor."""
    base = np.arange(24, dtype=np.float32)
    storages = {"s": base}
    tensors = {
        "full": ("s", 0, (4, 6), (6, 1)),
        "transposed": ("s", 0, (6, 4), (1, 6)),
        "row2": ("s", 12, (6,), (1,)),
        "every_other": ("s", 1, (3, 2), (8, 2)),
    }
    path = tmp_path / "v.pth"
    (write_zip if fmt == "zip" else write_legacy)(path, tensors, storages)
    sd = W.load_state_dict(path)
    full = base.reshape(4, 6)
    np.testing.assert_array_equal(sd["full"], full)
    np.testing.assert_array_equal(sd["transposed"], full.T)
    np.testing.assert_array_equal(sd["row2"], full[2])
    np.testing.assert_array_equal(sd["every_other"], base[1 + np.add.outer(8 * np.arange(3), 2 * np.arange(2))])
    sd["full"][0, 0] = -1  # copies, not views into the file buffer
    assert sd["transposed"][0, 0] == 0


def test_any_zip_prefix_and_nested_checkpoint(tmp_path):
    arrays = {"a": np.ones((2, 2), np.float32)}
    tensors, storages = contiguous(arrays)
    write_zip(tmp_path / "c.pth", tensors, storages, prefix="my_model")
    np.testing.assert_array_equal(W.load_state_dict(tmp_path / "c.pth")["a"], arrays["a"])


def test_safetensors_round_trip_is_atomic_write(tmp_path):
    arrays = {k: v for k, v in _arrays().items() if v.dtype != np.bool_}
    path = W.save_safetensors(tmp_path / "sub" / "w.safetensors", arrays, {"note": "x"})
    assert [p.name for p in path.parent.iterdir()] == ["w.safetensors"]  # no temporary left behind
    sd = W.load_state_dict(path)
    for k, v in arrays.items():
        np.testing.assert_array_equal(sd[k], v)


def test_safetensors_found_by_content_and_bad_layouts_refused(tmp_path):
    W.save_safetensors(tmp_path / "w.bin", {"a": np.arange(3, dtype=np.float32)})
    np.testing.assert_array_equal(W.load_state_dict(tmp_path / "w.bin")["a"], np.arange(3))
    storages = {"0": np.arange(4, dtype=np.float32)}
    for layout, msg in ((("0", 0, (5,), (1,)), "needs 5 elements"), (("0", 0, (2, 2), (-1, 1)), "invalid tensor layout"),
                        (("0", -1, (2,), (1,)), "invalid tensor layout")):
        write_zip(tmp_path / "bad.pth", {"a": layout}, storages)
        with pytest.raises(ValueError, match=msg):
            W.load_state_dict(tmp_path / "bad.pth")
    write_zip(tmp_path / "ok.pth", {"a": ("0", 0, (4,), (1,))}, storages)
    with zipfile.ZipFile(tmp_path / "ok.pth") as src, zipfile.ZipFile(tmp_path / "cut.pth", "w") as dst:
        for name in src.namelist():
            if not name.endswith("data/0"):
                dst.writestr(name, src.read(name))
    with pytest.raises(ValueError, match="truncated"):
        W.load_state_dict(tmp_path / "cut.pth")


def test_missing_file_fails_at_once_with_what_to_do(tmp_path, no_network):
    with pytest.raises(FileNotFoundError, match="never downloads"):
        W.load_state_dict(tmp_path / "nope.pth")
    assert no_network == [], f"tried to connect to {no_network}"


def test_not_a_weight_file(tmp_path):
    (tmp_path / "x.pth").write_text("hello")
    with pytest.raises(ValueError, match="not a .safetensors file nor a torch checkpoint"):
        W.load_state_dict(tmp_path / "x.pth")
    with zipfile.ZipFile(tmp_path / "y.pth", "w") as z:
        z.writestr("readme.txt", "no pickle")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        W.load_state_dict(tmp_path / "y.pth")


def test_checkpoint_dict_needs_key(tmp_path):
    # {"epoch": 3, "state_dict": {...}} as a training script saves it
    from test_weights_torch_writer import state_dict_pickle

    tensors, storages = contiguous({"a": np.ones(3, np.float32)})
    inner = state_dict_pickle(tensors, storages, legacy=False)
    # wrap: {"epoch": 3, "state_dict": <inner OrderedDict>} -- splice the inner object before STOP
    outer = b"\x80\x02}(X\x05\x00\x00\x00epochK\x03X\n\x00\x00\x00state_dict" + inner[2:-1] + b"u."
    with zipfile.ZipFile(tmp_path / "ckpt.pth", "w") as z:
        z.writestr("archive/data.pkl", outer)
        z.writestr("archive/data/0", storages["0"].tobytes())
    with pytest.raises(ValueError, match=r"pass key= one of \['state_dict'\]"):
        W.load_state_dict(tmp_path / "ckpt.pth")
    np.testing.assert_array_equal(W.load_state_dict(tmp_path / "ckpt.pth", key="state_dict")["a"], np.ones(3))
    with pytest.raises(ValueError, match="key: 'model' not in"):
        W.load_state_dict(tmp_path / "ckpt.pth", key="model")


# --------------------------------------------------------------------------- malicious files


class _System:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _Eval:
    def __init__(self, src):
        self.src = src

    def __reduce__(self):
        import builtins

        return (builtins.eval, (self.src,))


def _payloads(marker):
    return {
        "os.system": pickle.dumps({"w": _System(f"touch {marker}")}, protocol=2),
        "builtins.eval": pickle.dumps({"w": _Eval(f"open({str(marker)!r}, 'w').close()")}, protocol=2),
    }


def test_the_payloads_are_real(tmp_path):
    """Control: plain pickle runs the eval payload (so the refusals below mean something)."""
    marker = tmp_path / "control"
    pickle.loads(_payloads(marker)["builtins.eval"])
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval"])
@pytest.mark.parametrize("where", ["zip", "legacy_object", "legacy_header", "persistent_id"])
def test_malicious_pickles_are_refused_without_running(tmp_path, kind, where):
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[kind]
    path = tmp_path / "evil.pth"
    if where == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", payload)
    elif where == "persistent_id":
        # the payload hidden in the storage type slot of a persistent id
        evil = payload[2:-1]  # the dict object, without PROTO / STOP
        pkl = b"\x80\x02(X\x07\x00\x00\x00storage" + evil + b"X\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x01tQ."
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("archive/data.pkl", pkl)
    else:
        buf = io.BytesIO()
        if where == "legacy_header":
            buf.write(payload)  # in place of the magic number
        else:
            for header in (LEGACY_MAGIC, 1001, {"little_endian": True}):
                pickle.dump(header, buf, protocol=2)
            buf.write(payload)
            pickle.dump([], buf, protocol=2)
        path.write_bytes(buf.getvalue())
    with pytest.raises(W.UnsafeWeightsError, match="refusing global"):
        W.load_state_dict(path)
    assert not marker.exists()


def test_restricted_unpickler_allows_only_state_dict_globals():
    allowed = [("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch", "FloatStorage")]
    refused = [("os", "system"), ("posix", "system"), ("builtins", "eval"), ("builtins", "getattr"),
               ("subprocess", "Popen"), ("torch", "load"), ("collections", "namedtuple"),
               ("numpy.core.multiarray", "_reconstruct")]
    u = W.RestrictedUnpickler(io.BytesIO(b""))
    for mod, name in allowed:
        assert u.find_class(mod, name) is not None
    for mod, name in refused:
        with pytest.raises(W.UnsafeWeightsError):
            u.find_class(mod, name)


def test_torch_saved_files_read_without_torch_code(tmp_path):
    """Where torch is installed: files written by torch.save itself (both formats) read identically."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lin = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
    sd = lin.state_dict()
    sd["view"] = sd["0.weight"].transpose(0, 1)  # non-contiguous, shares storage
    sd["bf16"] = torch.randn(3, 2, dtype=torch.bfloat16)
    sd["half_slice"] = torch.randn(6, dtype=torch.float16)[2:]
    torch.save(sd, tmp_path / "z.pth")
    torch.save(sd, tmp_path / "l.pth", _use_new_zipfile_serialization=False)
    for name in ("z.pth", "l.pth"):
        got = W.load_state_dict(tmp_path / name)
        assert list(got) == list(sd)
        for k, v in sd.items():
            want = v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy()
            np.testing.assert_array_equal(got[k].astype(want.dtype), want, err_msg=k)
            assert got[k].dtype.itemsize == v.element_size(), k
