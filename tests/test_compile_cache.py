"""The CLI's persistent compilation cache: where it goes, how it is turned off, and that it is reused."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from undesirable_jax import compile_cache


def test_default_dir_follows_the_environment(tmp_path):
    assert compile_cache.default_dir({"UNDESIRABLE_JAX_CACHE": "off"}) is None
    assert compile_cache.default_dir({"UNDESIRABLE_JAX_CACHE": " OFF "}) is None
    assert compile_cache.default_dir({"UNDESIRABLE_JAX_CACHE": str(tmp_path)}) == tmp_path
    assert compile_cache.default_dir({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "undesirable_jax" / "jax"
    assert compile_cache.default_dir({}) == Path.home() / ".cache" / "undesirable_jax" / "jax"


def test_an_unusable_folder_gives_one_warning_and_no_cache(tmp_path):
    """A file where the folder should be, or a folder without write permission: one warning, cache off."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    said: list[str] = []
    assert compile_cache.enable(blocker / "cache", warn=said.append) is None
    assert len(said) == 1 and "--compile-cache" in said[0] and str(blocker) in said[0], said
    assert compile_cache.enable(None) is None
    if os.geteuid() != 0:    # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        said.clear()
        assert compile_cache.usable_folder(locked, warn=said.append) is None and len(said) == 1


def test_the_folder_is_one_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert compile_cache.usable_folder("cache") == compile_cache.usable_folder(tmp_path / "x" / ".." / "cache")
    assert compile_cache.usable_folder("cache") == (tmp_path / "cache").resolve()


def test_the_option_refuses_an_empty_folder_name():
    for blank in ("", "  "):
        with pytest.raises(ValueError, match="--compile-cache: an empty folder name"):
            compile_cache.folder_option(blank)
    assert compile_cache.folder_option("OFF") is None
    assert compile_cache.folder_option("some/dir") == Path("some/dir")
    assert compile_cache.folder_option(None, {"UNDESIRABLE_JAX_CACHE": "off"}) is None


def test_an_entry_is_loaded_only_under_its_own_key_versions_and_device(tmp_path):
    """Swapped, damaged or foreign entries are refused at load, removed, with one warning each."""
    said: list[str] = []
    cache = compile_cache.VerifiedCache(tmp_path, warn=said.append)
    cache._stamp = "jax 0, jaxlib 0, cpu test"
    cache.put("jit_a-1", b"program a")
    cache.put("jit_b-2", b"program b")
    assert cache.get("jit_a-1") == b"program a" and cache.get("jit_b-2") == b"program b" and not said
    a, b = cache.entry("jit_a-1"), cache.entry("jit_b-2")
    data_a, data_b = a.read_bytes(), b.read_bytes()
    a.write_bytes(data_b)                                      # b's entry under a's key
    assert cache.get("jit_a-1") is None and not a.exists()
    assert len(said) == 1 and "another key" in said[0]
    b.write_bytes(data_b[:-1] + bytes([data_b[-1] ^ 1]))        # one flipped bit
    assert cache.get("jit_b-2") is None and not b.exists() and "damaged" in said[1]
    a.write_bytes(data_a)
    cache._stamp = "jax 0, jaxlib 0, gpu other"                  # compiled for another device
    assert cache.get("jit_a-1") is None and "compiled for" in said[2] and len(said) == 3
    assert cache.get("jit_missing-3") is None and len(said) == 3
    assert not list(tmp_path.glob(".tmp-*"))                   # writes leave no temporary files


def test_sweep_removes_bad_entries_with_one_warning_and_keeps_good_ones(tmp_path):
    said: list[str] = []
    cache = compile_cache.VerifiedCache(tmp_path, warn=said.append)
    cache._stamp = "s"
    for i in range(4):
        cache.put(f"k{i}", f"program {i}".encode())
    cache.entry("k0").write_bytes(cache.entry("k1").read_bytes())      # swapped in
    cache.entry("k2").write_bytes(os.urandom(200))                     # random bytes
    stale = tmp_path / f".tmp-dead{compile_cache.SUFFIX}"
    stale.write_bytes(b"half a write")
    os.utime(stale, (0, 0))
    assert cache.sweep() == 2 and len(said) == 1 and "removed 2" in said[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"k1{compile_cache.SUFFIX}", f"k3{compile_cache.SUFFIX}"]
    assert cache.sweep() == 0 and len(said) == 1


def test_a_second_process_loads_what_the_first_compiled(tmp_path):
    """Run the same jitted program in two fresh processes: the first writes entries, the second adds none."""
    prog = ("import sys, jax, jax.numpy as jnp\n"
            "from undesirable_jax import compile_cache\n"
            "compile_cache.enable(sys.argv[1])\n"
            "print(float(jax.jit(lambda x: jnp.tanh(x) @ x.T)(jnp.ones((64, 64))).sum()))\n")
    cache = tmp_path / "cache"
    outs = []
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", prog, str(cache)], capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        outs.append((done.stdout, sorted(p.name for p in cache.iterdir())))
    assert outs[0][1], "the first process wrote no cache entry"
    assert outs[0] == outs[1]          # same answer, and the second process compiled nothing new


PROGRAM = """
import sys, jax, jax.numpy as jnp
from undesirable_jax import compile_cache
compile_cache.enable(compile_cache.folder_option(sys.argv[1]))
x = jnp.linspace(0.1, 1.0, 32 * 32).reshape(32, 32)
print(repr(float(jax.jit(lambda x: (jnp.tanh(x) @ x.T).sum())(x))),
      repr(float(jax.jit(lambda x: (jnp.sin(x) * 3 + x ** 2).sum())(x))))
"""


def _run(cache: str) -> tuple[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", PROGRAM, cache], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout, [ln for ln in done.stderr.splitlines() if ln.strip()]


def test_swapped_damaged_and_unusable_caches_give_the_cache_off_result(tmp_path):
    """Two programs' entries swapped under each other's keys, then random bytes, then an unwritable
    folder: every run prints what a cache-off run prints, each problem costs one warning line once."""
    reference, noise = _run("off")
    assert not noise
    cache = tmp_path / "cache"
    assert _run(str(cache)) == (reference, [])
    entries = sorted(p for p in cache.iterdir() if "lambda" in p.name)
    assert len(entries) == 2
    inodes = {p.name: p.stat().st_ino for p in cache.iterdir()}
    assert _run(str(cache)) == (reference, [])
    assert {p.name: p.stat().st_ino for p in cache.iterdir()} == inodes     # loaded, not compiled again
    one, two = (p.read_bytes() for p in entries)
    entries[0].write_bytes(two)
    entries[1].write_bytes(one)
    out, warned = _run(str(cache))
    assert out == reference and len(warned) == 1 and "another key" in warned[0], warned
    assert _run(str(cache)) == (reference, [])                             # replaced: no more warnings
    entries[0].write_bytes(os.urandom(3000))
    out, warned = _run(str(cache))
    assert out == reference and len(warned) == 1 and "removed 1" in warned[0], warned
    assert _run(str(cache)) == (reference, [])
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out, warned = _run(str(blocker / "cache"))
    assert out == reference and len(warned) == 1 and "cannot use" in warned[0], warned
