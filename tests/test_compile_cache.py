"""The CLI's persistent compilation cache: where it goes, how it is turned off, and that it is reused."""

from __future__ import annotations

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


def test_enable_refuses_a_folder_it_cannot_create(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="(?s)compilation cache.*--compile-cache off"):
        compile_cache.enable(blocker / "cache")
    assert compile_cache.enable(None) is None


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
