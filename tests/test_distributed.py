"""Two processes joined by jax.distributed on localhost (CPU collectives) evaluate a small data set."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = str(Path(__file__).with_name("dist_worker.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out, seeds, env_extra=None):
    """Start one worker per seed (process i gets seeds[i]); return their (returncode, output)."""
    port, count = free_port(), len(seeds)
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, WORKER, str(out), str(seed), str(count), str(i), str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i, seed in enumerate(seeds)]
    results = []
    for p in procs:
        try:
            stdout, _ = p.communicate(timeout=400)
        except subprocess.TimeoutExpired:
            p.kill()
            stdout, _ = p.communicate()
        results.append((p.returncode, stdout))
    return results


def results(out):
    return {p.name: json.loads(p.read_text()) for p in sorted((Path(out) / "results").glob("*.json"))}


def launch_cli(out, count):
    """The README's multi-host command, once per process, on localhost."""
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    argv = [sys.executable, "-m", "undesirable_jax", "evaluate", "--dataset", "digits", "--limit", "6",
            "--model", "digits_cnn", "--window", "2", "--stride", "2", "--sampler", "constant",
            "--methods", "pda", "occlusion", "random", "--thresholds", "10", "20", "--out", str(out),
            "--no-progress"]
    if count > 1:
        argv += ["--distributed", "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(count)]
    procs = [subprocess.Popen(argv + (["--process-id", str(i)] if count > 1 else []), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(count)]
    return [(p.wait(timeout=400), p.stdout.read()) for p in procs]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    single = launch_cli(tmp_path / "one", 1)
    assert single[0][0] == 0, single[0][1][-3000:]
    double = launch_cli(tmp_path / "two", 2)
    for code, out in double:
        assert code == 0, out[-3000:]
    assert "summary:" in double[0][1] and "summary:" not in double[1][1]   # process 0 merged
    one, two = results(tmp_path / "one"), results(tmp_path / "two")
    assert len(one) == 6 and one == two
    assert (tmp_path / "two" / "summary.csv").read_text() == (tmp_path / "one" / "summary.csv").read_text()


@pytest.mark.slow
def test_mismatched_configuration_is_refused(tmp_path):
    runs = launch(tmp_path, [0, 1])
    for code, out in runs:
        assert code != 0
        assert "different configuration" in out, out[-3000:]
    assert not (tmp_path / "results").exists() or not list((tmp_path / "results").glob("*.json"))


@pytest.mark.slow
def test_dead_process_keeps_finished_results_and_resume_completes(tmp_path):
    runs = launch(tmp_path, [0, 0], env_extra={"UJ_TEST_DIE_AFTER": "1"})
    assert runs[1][0] == 3                      # the injected crash after one image
    assert runs[0][0] != 0                      # the survivor does not pretend the run is complete
    done = results(tmp_path)
    assert len(done) == 4                       # process 0's three images and process 1's first
    rerun = launch(tmp_path, [0, 0])
    for code, out in rerun:
        assert code == 0, out[-3000:]
    final = results(tmp_path)
    assert len(final) == 6
    assert all(final[name] == rec for name, rec in done.items())


class Counting:
    """A data set with ids that records every image it decodes."""

    def __init__(self, inner):
        self.inner, self.loads = inner, []
        self.ids, self.class_names = inner.ids, inner.class_names

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        self.loads.append(i)
        return self.inner[i]


@pytest.mark.slow
def test_each_image_is_decoded_by_one_process_and_merge_only_decodes_none(tmp_path):
    from undesirable_jax import data
    from undesirable_jax.evaluate import orchestrate

    runs = launch(tmp_path, [0, 0], env_extra={"UJ_TEST_COUNT_LOADS": str(tmp_path / "loads")})
    for code, out in runs:
        assert code == 0, out[-3000:]
    loads = [[int(x) for x in (tmp_path / f"loads.{i}").read_text().split()] for i in range(2)]
    assert sorted(loads[0] + loads[1]) == list(range(6))          # every image once, by one process
    assert set(loads[0]) == {0, 2, 4} and set(loads[1]) == {1, 3, 5}
    digits = data.digits("test")
    counting = Counting(data.ArraySet(name="digits", images=digits.images[:6], labels=digits.labels[:6],
                                      ids=digits.ids[:6], class_names=digits.class_names))
    paths = orchestrate.merge_only(tmp_path, counting)
    assert counting.loads == [] and paths["csv"].exists()


def test_tfds_and_subset_ids_need_no_decoding():
    """Every data set the CLI builds knows its ids without reading an image (so shares read only their own)."""
    from undesirable_jax import data

    ds = data.Subset(Counting(data.Subset(data.digits("test"), 5)), 3)
    assert ds.ids == data.digits("test").ids[:3] and ds.dataset.loads == []
