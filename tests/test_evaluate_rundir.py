"""Run folders read defensively (each damaged file named with what to do) and one process per share."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from undesirable_jax.checks import BadFileError
from undesirable_jax.evaluate import rundir
from undesirable_jax.io import json_digest as config_digest

RECORD = {"model": "m", "window": 2, "seed": 0}


def a_result(digest: str, image_id: str = "digits/0") -> dict:
    keys = dict.fromkeys(rundir.RESULT_KEYS, 0)
    return keys | {"id": image_id, "config_sha256": digest, "skipped": {}, "seeds": []}


@pytest.mark.parametrize("content, words", [
    ("{}", ["lacks", "'id'"]),
    ("[]", ["holds list"]),
    ("null", ["holds NoneType"]),
    ('{"id": "x", "index": 3}', ["lacks", "'config_sha256'"]),
    ('{"id": "x", "ind', ["not a readable", "JSONDecodeError"]),
    ("", ["not a readable"]),
    ('{"note": "a stray file"}', ["lacks"]),
])
def test_damaged_result_files_name_the_file_and_the_fix(content, words, tmp_path):
    path = tmp_path / "results" / "digits_0.json"
    path.parent.mkdir()
    path.write_text(content)
    with pytest.raises(BadFileError) as info:
        rundir.read_result(path)
    msg = str(info.value)
    assert str(path) in msg and "--resume" in msg and "delete it" in msg
    for w in words:
        assert w in msg, (w, msg)


def test_a_complete_result_reads_back(tmp_path):
    (tmp_path / "r.json").write_text(json.dumps(a_result("abc")))
    assert rundir.read_result(tmp_path / "r.json")["config_sha256"] == "abc"


@pytest.mark.parametrize("content", ['{"model": "m", "win', "[1, 2]", "null", ""])
def test_a_damaged_config_names_the_file(content, tmp_path):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(BadFileError, match="config.json.*delete it and run the same command with --resume"):
        rundir.read_config(tmp_path / "config.json")
    (tmp_path / "config.json").write_text(json.dumps(RECORD))
    assert rundir.read_config(tmp_path / "config.json") == RECORD


def test_a_deleted_config_is_restored_only_for_the_same_settings(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    assert rundir.restore_config(tmp_path, RECORD) is False  # nothing to restore: no results
    (results / "a.json").write_text(json.dumps(a_result(config_digest(RECORD))))
    assert rundir.restore_config(tmp_path, RECORD) is True
    assert json.loads((tmp_path / "config.json").read_text()) == RECORD
    assert rundir.restore_config(tmp_path, RECORD) is False  # it exists now
    (tmp_path / "config.json").unlink()
    other = RECORD | {"window": 3}
    with pytest.raises(ValueError, match=r"no config.json, and 1 of its 1 results \(e.g. a.json\).*move"):
        rundir.restore_config(tmp_path, other)
    assert not (tmp_path / "config.json").exists()
    (results / "stray.json").write_text("[]")
    with pytest.raises(BadFileError, match="stray.json"):
        rundir.restore_config(tmp_path, RECORD)


def test_a_second_process_on_the_same_share_is_refused(tmp_path):
    with rundir.RunLock(tmp_path, 0, 1) as lock:
        assert lock.path.exists()
        with pytest.raises(ValueError, match=f"process {os.getpid()}.*--process-index/--process-count.*delete"):
            with rundir.RunLock(tmp_path, 0, 1):
                pass
        with pytest.raises(ValueError, match="share 0 of 1, which has images in common with .* share 1 of 2"):
            with rundir.RunLock(tmp_path, 1, 2):   # overlaps the whole run
                pass
    assert not lock.path.exists() and not list(tmp_path.glob(".lock-*"))
    with rundir.RunLock(tmp_path, 1, 2), rundir.RunLock(tmp_path, 0, 2):  # disjoint shares run side by side
        with pytest.raises(ValueError, match="share 0 of 2, which has images in common with .* share 2 of 4"):
            with rundir.RunLock(tmp_path, 2, 4):
                pass
    with rundir.RunLock(tmp_path, 0, 4), rundir.RunLock(tmp_path, 2, 4), rundir.RunLock(tmp_path, 1, 2):
        pass
    with rundir.RunLock(tmp_path, 0, 1):  # free again
        pass


def test_a_stale_lock_is_taken_over_and_a_foreign_host_is_respected(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    lock = tmp_path / ".lock-0-of-1"
    lock.write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "since": 0}))
    with rundir.RunLock(tmp_path):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    lock.write_text("")  # a crash between creating and writing the lock
    with rundir.RunLock(tmp_path):
        pass
    lock.write_text(json.dumps({"pid": dead_pid, "host": "another-host", "since": 0}))
    with pytest.raises(ValueError, match="'another-host'"):
        with rundir.RunLock(tmp_path):
            pass


def test_shares_overlap_exactly_when_they_hold_a_common_position():
    for a in [(i, n) for n in range(1, 7) for i in range(n)]:
        for b in [(j, m) for m in range(1, 7) for j in range(m)]:
            common = any(x % a[1] == a[0] and x % b[1] == b[0] for x in range(36))
            assert rundir.overlap(a, b) == common, (a, b)


def test_temporary_files_of_killed_writes_are_removed_at_the_next_start(tmp_path):
    (tmp_path / "results").mkdir()
    old, young = tmp_path / "results" / ".a.json.x1.tmp", tmp_path / ".summary.md.x2.tmp"
    kept = tmp_path / "results" / "a.json"
    kept.write_text("{}")
    with rundir.RunLock(tmp_path, 0, 2):              # another process holds the folder: only old ones go
        for p in (old, young):
            p.write_text("half")
        os.utime(old, (0, 0))
        with rundir.RunLock(tmp_path, 1, 2):
            assert not old.exists() and young.exists()
    starting = tmp_path / ".config.json.x3.tmp"           # another process's write, before its lock
    starting.write_text("half")
    os.utime(young, (time.time() - 120, time.time() - 120))
    with rundir.RunLock(tmp_path):                     # alone: older than a minute goes, a write in progress stays
        assert not young.exists() and kept.exists() and starting.exists()


def _path_of(tmp_path):
    return lambda image_id: tmp_path / "results" / f"{image_id}.json"


def _good(digest, image_id):
    return a_result(digest, image_id) | {"label": 1, "target": 1, "competitor": 0, "p_target": 0.25,
                                         "p_competitor": 0.5, "percents": [5.0], "fractions": [0.0, 1.0],
                                         "seeds": [{}]}


@pytest.mark.parametrize("change, words", [
    ({"id": "b"}, "holds the result of image 'b', whose file is b.json"),
    ({"p_target": 90}, "p_target = 90, outside [0, 1]"),
    ({"p_competitor": float("nan")}, "p_competitor = nan"),
    ({"competitor": -1}, "competitor = -1"),
    ({"percents": [10.0]}, "percents [10.0]"),
    ({"fractions": [0.0, 2.0]}, "fractions outside [0, 1]"),
    ({"seeds": [{}, {}]}, "2 repeats (a list of records), not the run's 1"),
    ({"seeds": [3]}, "1 repeats (a list of records)"),
    ({"id": 7}, "has id 7, not an image id"),
    ({"config_sha256": "other"}, "another configuration"),
])
def test_a_result_that_cannot_be_its_files_is_named_and_moved_aside(tmp_path, change, words):
    record = RECORD | {"percents": [5.0], "num_seeds": 1}
    digest = config_digest(record)
    (tmp_path / "results").mkdir()
    good = _good(digest, "a")
    assert rundir.result_problem(_write(tmp_path / "results" / "a.json", good), record, _path_of(tmp_path)) is None
    bad = _write(tmp_path / "results" / "c.json", _good(digest, "c") | change)
    said: list[str] = []
    moved = rundir.set_aside(tmp_path, record, _path_of(tmp_path), say=said.append)
    assert len(moved) == 1 and not bad.exists() and moved[0].parent == tmp_path / "rejected"
    assert len(said) == 1 and "c.json" in said[0] and words in said[0] and "computed again" in said[0], said
    assert words in (tmp_path / "rejected" / "reasons.txt").read_text()
    assert json.loads(moved[0].read_text())["id"] == good["id"] if change.get("id") == "a" else True
    assert (tmp_path / "results" / "a.json").exists() and rundir.set_aside(tmp_path, record, _path_of(tmp_path)) == []


def _write(path, obj):
    path.write_text(json.dumps(obj))
    return path


def test_a_run_moves_a_swapped_or_edited_result_aside_and_computes_it_again(tmp_path):
    """A result replaced by another image's, and a hand-edited p_target of 90: the merge names the file;
    --resume moves both to rejected/ and recomputes them, giving the untouched run's results."""
    import jax.numpy as jnp
    import numpy as np

    import undesirable_jax as uj
    from undesirable_jax import evaluate as ev
    from undesirable_jax.data import Example
    from undesirable_jax.evaluate import runner

    def toy(x):
        return jnp.stack([x[:, :2].mean((1, 2, 3)), 2 * x[:, 2:].mean((1, 2, 3)), x[..., 1].mean((1, 2))], -1)

    rng = np.random.default_rng(0)
    images = [Example(id=f"img/{i}", image=rng.uniform(size=(4, 4, 3)).astype(np.float32), label=i % 3)
              for i in range(3)]
    config = ev.EvalConfig(model="toy", window=2, stride=2, num_samples=1, methods=("random",), perturbation="constant",
                           percents=(25.0,), curve_steps=2, num_seeds=1, scoring_draws=1)
    sampler = uj.samplers.constant(0.0)
    ids = ev.run(tmp_path, images, toy, config, sampler, progress=False)
    first, second = (runner.result_path(tmp_path, i) for i in ids[:2])
    reference = {p: json.loads(p.read_text()) for p in (first, second)}
    first.write_text(second.read_text())                         # image 1's result under image 0's name
    with pytest.raises(ValueError, match=f"(?s)1 ids missing: img/0.*{first.name} holds the result of image "
                                         f"'img/1', whose file is {second.name}.*--resume"):
        runner.merge(tmp_path, ids)
    edited = reference[second] | {"p_target": 90}
    second.write_text(json.dumps(edited))
    ev.run(tmp_path, images, toy, config, sampler, progress=False)
    assert {p: json.loads(p.read_text()) for p in (first, second)} == reference
    reasons = (tmp_path / "rejected" / "reasons.txt").read_text()
    assert f"{first.name} -> " in reasons and "p_target = 90" in reasons and len(list((tmp_path / "rejected").glob("*.json"))) == 2


def test_a_cli_run_is_refused_early_while_an_overlapping_share_runs(tmp_path, capsys):
    """`evaluate --process-index 1 --process-count 2` while a 1-of-1 run holds the folder: one error line
    naming the other process, before any model is loaded."""
    from undesirable_jax import cli

    with rundir.RunLock(tmp_path, 0, 1):
        code = cli.main(["evaluate", "--dataset", "digits", "--model", "missing.onnx", "--window", "2",
                         "--stride", "2", "--out", str(tmp_path), "--resume", "--process-index", "1",
                         "--process-count", "2", "--no-progress"])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and f"process {os.getpid()}" in lines[0] and "share 0 of 1" in lines[0], err
