"""Two processes joined by jax.distributed on localhost (CPU collectives) evaluate a small data set."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = str(Path(__file__).with_name("dist_worker.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(out, seeds, env_extra=None):
    """Start one worker per seed (process i gets seeds[i]); return their (returncode, output).

    The workers of one ``out`` (a first launch and its resume) share one compile cache folder beside it,
    and write their output to files (no pipe to fill); one still running at the deadline is killed.
    """
    port, count = free_port(), len(seeds)
    env = dict(os.environ, JAX_PLATFORMS="cpu", UJ_TEST_CACHE=f"{out}.cache", **(env_extra or {}))
    env.pop("XLA_FLAGS", None)
    logs = [Path(f"{out}.worker{i}.log") for i in range(count)]
    procs = []
    for i, (seed, log) in enumerate(zip(seeds, logs)):
        with open(log, "w") as f:
            procs.append(subprocess.Popen([sys.executable, WORKER, str(out), str(seed), str(count), str(i),
                                           str(port)], env=env, stdout=f, stderr=subprocess.STDOUT, text=True))
    return [(code, log.read_text()) for code, log in zip(wait_all(procs), logs)]


def wait_all(procs, timeout=400, grace=None):
    """The processes' return codes, waiting at most ``timeout`` seconds for all of them.

    With ``grace``: once one process has failed, the others get ``grace`` seconds more, then are killed.
    A jax.distributed process whose partner raised waits at the next collective until JAX's shutdown
    barrier gives up (minutes later); the failed process's own output says what went wrong. A process
    still running at the deadline is killed (its code reads "killed ..."), never left behind.
    """
    deadline, codes = time.monotonic() + timeout, [None] * len(procs)
    while None in codes and time.monotonic() < deadline:
        codes = [p.poll() for p in procs]
        if grace is not None and any(c not in (None, 0) for c in codes):
            deadline = min(deadline, time.monotonic() + grace)
            grace = None
        time.sleep(0.1)
    for i, p in enumerate(procs):
        if codes[i] is None:
            p.kill()
            p.wait()
            codes[i] = "killed (still running after another process failed, or after the deadline)"
    return codes


def results(out):
    return {p.name: json.loads(p.read_text()) for p in sorted((Path(out) / "results").glob("*.json"))}


def launch_cli(out, count, cache):
    """The README's multi-host command, once per process, on localhost; returns (returncode, output) each.

    Small on purpose (4 images, 2 per process, one seed and one scoring draw, 4×4 windows): what is
    checked is how the processes share and merge the work, which does not depend on the sizes. Every
    run uses the same compile cache folder ``cache``: a process loads what an earlier one compiled for
    the same program (a program that differs has another key and is compiled afresh), which spares
    most of each process's compile time. Output goes to files, not pipes, so a chatty process can never
    block on a full pipe; a process still running 60 s after another one failed is killed (it would
    wait for its partner until JAX's shutdown barrier gives up, minutes later).
    """
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    argv = [sys.executable, "-m", "undesirable_jax", "evaluate", "--dataset", "digits", "--limit", "4",
            "--model", "digits_cnn", "--window", "4", "--stride", "4", "--sampler", "constant",
            "--methods", "pda", "occlusion", "random", "--thresholds", "10", "20", "--seeds", "1",
            "--scoring-draws", "1", "--out", str(out), "--no-progress", "--compile-cache", str(cache)]
    if count > 1:
        argv += ["--distributed", "--coordinator-address", f"127.0.0.1:{port}", "--num-processes", str(count)]
    logs = [Path(f"{out}.{i}.log") for i in range(count)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as f:
            procs.append(subprocess.Popen(argv + (["--process-id", str(i)] if count > 1 else []), env=env,
                                          stdout=f, stderr=subprocess.STDOUT, text=True))
    return [(code, log.read_text()) for code, log in zip(wait_all(procs, grace=60), logs)]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    single = launch_cli(tmp_path / "one", 1, tmp_path / "cache")
    assert single[0][0] == 0, single[0][1][-3000:]
    double = launch_cli(tmp_path / "two", 2, tmp_path / "cache")
    assert [code for code, _ in double] == [0, 0], "\n\n".join(
        f"process {i} ({code}):\n{out[-3000:]}" for i, (code, out) in enumerate(double) if code != 0)
    assert "summary:" in double[0][1] and "summary:" not in double[1][1]   # process 0 merged
    one, two = results(tmp_path / "one"), results(tmp_path / "two")
    assert len(one) == 4 and one == two
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
    # One image a step, so process 1 finishes its first image before it dies loading the second (with
    # several a step, a crash loses the batch in progress, unfinished by definition).
    runs = launch(tmp_path, [0, 0], env_extra={"UJ_TEST_DIE_AFTER": "1", "UJ_TEST_BATCH_IMAGES": "1"})
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
