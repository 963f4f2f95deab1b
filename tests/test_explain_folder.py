"""``undesirable-jax explain DIR``: one .npz per image, independent of --batch-images, resumable."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import undesirable_jax as uj
from undesirable_jax import cli, data, models


@pytest.fixture(scope="module")
def digit_folder(tmp_path_factory) -> Path:
    """Five real digits in two class folders and the root (sklearn digits, test split), as 8×8 PNGs."""
    root = tmp_path_factory.mktemp("digits")
    split = data.digits("test")
    for i, rel in enumerate(["a/0.png", "a/1.png", "b/2.png", "b/3.png", "4.png"]):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(split[i].image).save(root / rel)
    (root / "notes.txt").write_text("not an image")
    return root


def _run(argv, capsys):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


BASE = ["--model", "digits_cnn", "--window", 2, "--stride", 2, "--sampler", "marginal", "--samples", 2,
        "--seed", 4, "--no-progress"]


def test_folder_one_npz_per_image_equal_to_explain(digit_folder, tmp_path, capsys):
    code, out, err = _run(["explain", digit_folder, "--out-dir", tmp_path / "b2", "--batch-images", 2, *BASE], capsys)
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "b2").glob("*.npz"))
    assert names == ["4-digits_cnn.npz", "a__0-digits_cnn.npz", "a__1-digits_cnn.npz", "b__2-digits_cnn.npz",
                     "b__3-digits_cnn.npz"]
    assert "5 new .npz files" in out
    # Another batch size gives the same arrays (image i's key is fold_in(key, i), i its sorted position).
    code, _, err = _run(["explain", digit_folder, "--out-dir", tmp_path / "b3", "--batch-images", 3, *BASE], capsys)
    assert code == 0, err
    for name in names:
        a, b = np.load(tmp_path / "b2" / name), np.load(tmp_path / "b3" / name)
        np.testing.assert_allclose(a["window_probs"], b["window_probs"], atol=1e-6)
        np.testing.assert_allclose(a["probs"], b["probs"], atol=1e-6)

    # b/2.png: image 3 in sorted order (4.png, a/0, a/1, b/2, b/3) against the single-image API with the same keys and pool.
    z = np.load(tmp_path / "b2" / "b__2-digits_cnn.npz")
    assert int(z["index"]) == 3 and z["source"].item().endswith("b/2.png")
    model = models.load("digits_cnn")
    pool = np.stack([model.preprocess(data.resolve_image(s, "pool")[0]).image
                     for s in cli.options.sample_names()]).astype(np.float32)
    k_sampler, k_explain = jax.random.split(jax.random.key(4))
    one = uj.explain(model.classifier, z["image"], window=2, stride=2, sampler=uj.samplers.marginal(pool),
                     num_samples=2, key=jax.random.fold_in(k_explain, 3))
    np.testing.assert_allclose(z["window_probs"], one.window_probs, atol=1e-6)
    np.testing.assert_allclose(z["evidence"], one.evidence, rtol=1e-5, atol=1e-5)
    assert z["target"].shape == (8, 8) and z["evidence"].shape == (10, 8, 8)


def test_folder_resumes_and_refuses_single_image_options(digit_folder, tmp_path, capsys):
    out_dir = tmp_path / "run"
    assert _run(["explain", digit_folder, "--out-dir", out_dir, *BASE], capsys)[0] == 0
    gone = out_dir / "a__1-digits_cnn.npz"
    before = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.npz")}
    first = np.load(gone)["window_probs"]
    gone.unlink()
    code, out, err = _run(["explain", digit_folder, "--out-dir", out_dir, *BASE], capsys)
    assert code == 0, err
    assert "1 new .npz files" in out
    after = {p.name: p.stat().st_mtime_ns for p in out_dir.glob("*.npz")}
    assert {n for n in after if after[n] != before.get(n)} == {gone.name}
    np.testing.assert_allclose(np.load(gone)["window_probs"], first, atol=1e-6)
    code, _, err = _run(["explain", digit_folder, "--out-dir", out_dir, "--budget", 0.5, *BASE], capsys)
    assert code == 2 and "--budget" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(["explain", empty, "--out-dir", out_dir, *BASE], capsys)
    assert code == 2 and "no image files" in err
