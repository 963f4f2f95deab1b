"""An ImageNet-style folder (WordNet-id class folders) with a 1000-class model: ILSVRC labels, `evaluate`
end to end in one process and in two processes joined by jax.distributed, and `explain DIR`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from undesirable_jax import cli, data
from undesirable_jax.data.imagenet import ilsvrc_labels, ilsvrc_wnids

#: Three ILSVRC classes: tench (0), tabby (281), toilet tissue (999).
WNIDS = {"n01440764": 0, "n02123045": 281, "n15075141": 999}

MODEL = '''
import numpy as np
import jax.numpy as jnp
import undesirable_jax as uj
from undesirable_jax.data import IMAGENET_CLASSES, Preprocessor
from undesirable_jax.models import LoadedModel


def _apply(w, images):
    return images.reshape(images.shape[0], -1) @ w


def load(weights=None):
    w = np.random.default_rng(0).normal(size=(8 * 8 * 3, 1000)).astype(np.float32) * 0.3
    return LoadedModel(name="wnid_linear", classifier=uj.from_function(_apply, jnp.asarray(w)),
                       class_names=IMAGENET_CLASSES, input_shape=(8, 8, 3), weights="random",
                       preprocess=Preprocessor(size=(8, 8), resize=None, mean=(127.0,) * 3, std=(64.0,) * 3))
'''


@pytest.fixture()
def imagenet_folder(tmp_path, monkeypatch) -> tuple[Path, str]:
    """A val folder with 2 + 1 + 2 images in three WordNet-id folders, and a 1000-class linear model module."""
    root = tmp_path / "val"
    rng = np.random.default_rng(1)
    for wnid, count in zip(WNIDS, (2, 1, 2)):
        (root / wnid).mkdir(parents=True)
        for j in range(count):
            Image.fromarray(rng.integers(0, 256, size=(12, 10, 3), dtype=np.uint8)).save(root / wnid / f"v{j}.JPEG")
    name = f"wnid_model_{os.getpid()}_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODEL))
    monkeypatch.chdir(tmp_path)
    yield root, f"{name}:load"
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_wordnet_folders_get_ilsvrc_labels(imagenet_folder):
    root, _ = imagenet_folder
    wnids = ilsvrc_wnids()
    assert len(wnids) == 1000 == len(set(wnids)) and wnids[0] == "n01440764" and wnids == tuple(sorted(wnids))
    folder = data.from_spec(f"folder:{root}", "validation", None, name="--dataset")[0]
    assert folder.labels == (0, 0, 1, 2, 2)             # sorted folder order: not the ILSVRC classes
    relabelled = ilsvrc_labels(folder, data.IMAGENET_CLASSES)
    assert relabelled.labels == (0, 0, 281, 999, 999) and relabelled.ids == folder.ids
    data.check_model_classes(relabelled.class_names, data.IMAGENET_CLASSES, dataset="val", model="m")
    assert data.IMAGENET_CLASSES[281].startswith("tabby")
    assert ilsvrc_labels(folder, ("a", "b", "c")) is folder   # not a 1000-class model: unchanged
    (root / "n00000001").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "n00000001" / "x.png")
    other = data.from_spec(f"folder:{root}", "validation", None, name="--dataset")[0]
    with pytest.raises(ValueError, match="n00000001.*not ILSVRC-2012"):
        ilsvrc_labels(other, data.IMAGENET_CLASSES)


EVAL = ["--window", "4", "--stride", "4", "--sampler", "constant", "--methods", "pda", "occlusion", "random",
        "--thresholds", "10", "20", "--no-progress"]


def _results(out: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_evaluate_imagenet_folder_one_and_two_processes(imagenet_folder, tmp_path, capsys):
    root, model = imagenet_folder
    code = cli.main(["evaluate", "--dataset", f"folder:{root}", "--model", model, "--out", str(tmp_path / "one"), *EVAL])
    out, err = capsys.readouterr()
    assert code == 0, err
    one = _results(tmp_path / "one")
    assert len(one) == 5
    labels = sorted(int(r["label"]) for r in one.values())
    assert labels == [0, 0, 281, 999, 999]

    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=os.pathsep.join(
        [str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    env.pop("XLA_FLAGS", None)
    argv = [sys.executable, "-m", "undesirable_jax", "evaluate", "--dataset", f"folder:{root}", "--model", model,
            "--out", str(tmp_path / "two"), *EVAL, "--distributed", "--coordinator-address", f"127.0.0.1:{port}",
            "--num-processes", "2"]
    procs = [subprocess.Popen(argv + ["--process-id", str(i)], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    runs = [(p.wait(timeout=500), p.stdout.read()) for p in procs]
    for rc, text in runs:
        assert rc == 0, text[-3000:]
    assert _results(tmp_path / "two") == one
    assert (tmp_path / "two" / "summary.csv").read_text() == (tmp_path / "one" / "summary.csv").read_text()


def test_explain_imagenet_folder(imagenet_folder, tmp_path, capsys):
    root, model = imagenet_folder
    code = cli.main(["explain", str(root), "--model", model, "--window", "4", "--stride", "2", "--sampler",
                     "constant", "--batch-images", "2", "--out-dir", str(tmp_path / "maps"), "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 0, err
    files = sorted(p.name for p in (tmp_path / "maps").glob("*.npz"))
    assert files == ["n01440764__v0-wnid_linear.npz", "n01440764__v1-wnid_linear.npz",
                     "n02123045__v0-wnid_linear.npz", "n15075141__v0-wnid_linear.npz",
                     "n15075141__v1-wnid_linear.npz"]
    z = np.load(tmp_path / "maps" / files[2])
    assert z["evidence"].shape == (1000, 8, 8) and z["probs"].shape == (1000,)
