"""``undesirable-jax explain --budget/--alpha``: same arrays as the API, one-line errors."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

import undesirable_jax as uj
from undesirable_jax import cli, data, models


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray(data.digits("test")[3].image).save(path)
    return path


def test_budget_and_alpha_match_the_api(digit_png, tmp_path, capsys):
    code = cli.main([str(a) for a in ["explain", digit_png, "--model", "digits_cnn", "--window", 3, "--budget", 0.5,
                                      "--alpha", 0.05, "--sampler", "constant", "--samples", 2, "--top-k", 2,
                                      "--out-dir", tmp_path, "--no-progress"]])
    out, err = capsys.readouterr()
    assert code == 0, err
    z = np.load(tmp_path / "digit-digits_cnn.npz")
    model = models.load("digits_cnn")
    image = model.preprocess(data.load_image(digit_png)).image
    ex = uj.explain_adaptive(model.classifier, image, window=3, sampler=uj.samplers.constant(0.0), num_samples=2,
                             key=jax.random.key(0), budget=0.5)
    np.testing.assert_allclose(z["evidence"], ex.evidence, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(z["window_samples"], ex.window_samples)
    assert 0 < (z["window_samples"] > 0).mean() <= 0.5
    np.testing.assert_array_equal(z["evidence_se"], 0.0)  # a constant fill: no sampling noise
    assert float(z["budget"]) == 0.5 and float(z["alpha"]) == 0.05
    assert z["significant_target"].all()
    assert "adaptive" in out or "figure:" in out


@pytest.mark.parametrize("extra,needle", [
    (["--budget", 0.5, "--stride", 1], "--stride"),
    (["--budget", 0.0], "--budget"),
    (["--alpha", 0.05, "--samples", 1], "--alpha"),
    (["--alpha", 1.5, "--samples", 2], "--alpha"),
    (["--budget", 1e-9], "use --budget 0."),    # below the grid's corners: suggests a budget, nothing else
])
def test_bad_budget_or_alpha_is_one_line_error(digit_png, tmp_path, capsys, extra, needle):
    code = cli.main([str(a) for a in ["explain", digit_png, "--model", "digits_cnn", "--window", 3,
                                      "--sampler", "constant", "--out-dir", tmp_path, "--no-progress", *extra]])
    _, err = capsys.readouterr()
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "error:" in lines[0] and needle in lines[0], err
    assert "coarse_stride" not in err
