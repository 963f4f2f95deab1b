"""Options and library arguments checked where they are given (issue 24): one ``error:`` line naming the
option or file, exit code 2, before any model is loaded; NumPy and JAX scalars accepted alike."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import undesirable_jax as uj
from undesirable_jax import checks, cli, samplers
from undesirable_jax.data import specs


def one_line_error(argv, capsys, *needles):
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


# A model that does not exist: an error naming the option (not --model) shows it was checked first.
NO_MODEL = ["--model", "missing.onnx"]


@pytest.mark.parametrize("alpha", ["1e-17", "0", "0.6", "nan", "inf"])
def test_alpha_out_of_range_is_refused_before_the_model(alpha, capsys):
    one_line_error(["explain", *NO_MODEL, "--samples", 4, "--alpha", alpha], capsys, "--alpha", "(1e-12, 0.5]")


@pytest.mark.parametrize("content, needles", [
    ("[" * 100_000, ["nests brackets more than 4 deep"]),
    ('{"size": "ab"}', ["'size'", "[h, w]"]),
    ('{"resize": "big"}', ["'resize'", "null or an int"]),
    ('{"mean": null}', ["'mean'", "1 or 3 finite numbers"]),
    ('{"size": [32.5, 32]}', ["'size'", "two ints >= 1"]),
    ('{"mean": ["1", "2", "3"]}', ["'mean'"]),
    ('{"std": [1, 0, 1]}', ["'std'", "> 0"]),
    ('{"grayscale": "yes"}', ["'grayscale'"]),
    ('{"resample": "cubic"}', ["'resample'", "bicubic"]),
    ('{"sizes": [2, 2]}', ["unknown keys ['sizes']"]),
    ('{"size": [2, 2]', ["not valid JSON"]),
])
def test_a_bad_preprocess_file_is_named_with_the_field(content, needles, tmp_path, capsys):
    path = tmp_path / "prep.json"
    path.write_text(content)
    one_line_error(["explain", *NO_MODEL, "--preprocess", path], capsys, "--preprocess", str(path), *needles)


def test_a_good_preprocess_file_reads_as_tuples(tmp_path):
    path = tmp_path / "prep.json"
    path.write_text('{"size": [32, 30], "resize": null, "mean": [0], "std": [255], "grayscale": true}')
    assert specs.read_preprocess(path) == {"size": (32, 30), "resize": None, "mean": (0.0,), "std": (255.0,),
                                           "grayscale": True}
    assert specs.json_depth('{"a": "[[[[[\\" [", "b": [[1]]}', 4) == 3


@pytest.mark.parametrize("content, words", [
    (b"\xff\xfe\x00c\x00a\x00t", "not UTF-8 text"),
    (b"cat\x00dog\n", "NUL bytes"),
])
def test_a_binary_class_names_file_is_refused_naming_it(content, words, tmp_path, capsys):
    path = tmp_path / "names.txt"
    path.write_bytes(content)
    one_line_error(["explain", *NO_MODEL, "--class-names", path], capsys, "--class-names", str(path), words)


@pytest.mark.parametrize("extra, needle", [
    (["--input-size", 0], "--input-size"),
    (["--input-size", 2, 2, 2], "--input-size"),
    (["--std", 0], "--std"),
    (["--mean", "nan"], "--mean"),
    (["--mean", 1, 2], "--mean"),
])
def test_model_numbers_are_checked_before_the_model(extra, needle, capsys):
    one_line_error(["explain", *NO_MODEL, *extra], capsys, needle)


def test_an_empty_compile_cache_folder_is_refused():
    done = subprocess.run([sys.executable, "-m", "undesirable_jax", "explain", "--compile-cache", "",
                           "--model", "missing.onnx"], capture_output=True, text=True, timeout=300)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1 and "--compile-cache: an empty folder name" in lines[0], done.stderr


def test_top_k_defaults_to_what_a_two_class_model_has(tmp_path, capsys):
    code = cli.main(["explain", "--model", "lfw_cnn", "--window", "16", "--stride", "16", "--no-progress",
                     "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "competitors: face (0)" in out, out
    one_line_error(["explain", "--model", "lfw_cnn", "--top-k", 2, "--window", 16, "--out-dir", tmp_path], capsys,
                   "--top-k")


# ------------------------------------------------------------------------------ library arguments


def _toy(x):
    return jnp.stack([x[:, :2].mean((1, 2, 3)), x[:, 2:].mean((1, 2, 3)), x[..., 0].mean((1, 2))], -1)


IMAGE = np.random.default_rng(0).uniform(size=(6, 6, 3)).astype(np.float32)


@pytest.mark.parametrize("value", [0.05, np.float64(0.05), np.float32(0.05), jnp.float32(0.05), np.array(0.05)])
def test_numpy_and_jax_scalars_are_accepted_alike(value):
    assert checks.positive_number("target_se", value) == pytest.approx(0.05)
    assert checks.significance("alpha", value) == pytest.approx(0.05)
    assert checks.integer("n", jnp.int32(3)) == checks.integer("n", np.int64(3)) == 3
    uj.explain(_toy, IMAGE, window=3, stride=3, sampler=samplers.constant(0.0), num_samples=(1, 2),
               target_se=value, key=jax.random.key(0))


def test_non_scalars_and_bools_are_still_refused():
    for bad in (jnp.ones(2), np.bool_(True), True, "0.05"):
        with pytest.raises(TypeError, match="target_se"):
            checks.positive_number("target_se", bad)


def test_alpha_without_standard_errors_names_s():
    e = uj.explain(_toy, IMAGE, window=3, stride=3, sampler=samplers.constant(0.0), num_samples=1,
                   key=jax.random.key(0))
    with pytest.raises(ValueError, match="alpha: .*S = num_samples = 1"):
        uj.factors(e, top_k=1, alpha=0.05)


@pytest.mark.parametrize("kwargs, name", [
    (dict(magnitude_weight=float("nan")), "magnitude_weight"),
    (dict(se_weight=float("inf")), "se_weight"),
    (dict(se_weight=-1), "se_weight"),
    (dict(magnitude_weight="1"), "magnitude_weight"),
])
def test_adaptive_priority_weights_must_be_finite_and_non_negative(kwargs, name):
    with pytest.raises((TypeError, ValueError), match=name):
        uj.explain_adaptive(_toy, IMAGE, window=3, sampler=samplers.constant(0.0), num_samples=1,
                            key=jax.random.key(0), budget=0.5, **kwargs)


@pytest.mark.parametrize("extra, needle", [
    (["--thresholds", 0], "--thresholds"),
    (["--thresholds", 150], "--thresholds"),
    (["--road-noise", -1], "--road-noise"),
    (["--scoring-sigma", "nan"], "--scoring-sigma"),
    (["--occlusion-value", "inf"], "--occlusion-value"),
    (["--sanity-images", -1], "--sanity-images"),
])
def test_evaluate_numbers_are_checked_before_the_model(extra, needle, tmp_path, capsys):
    one_line_error(["evaluate", "--dataset", "digits", *NO_MODEL, "--window", 2, "--stride", 2,
                    "--out", tmp_path / "run", *extra], capsys, needle)


@pytest.mark.parametrize("command", [["explain", *NO_MODEL], ["evaluate", *NO_MODEL, "--dataset", "digits",
                                                             "--window", 2, "--stride", 2, "--out", "unused-out"]])
def test_batch_images_below_one_is_refused_before_the_model(command, capsys):
    one_line_error([*command, "--batch-images", 0], capsys, "--batch-images", ">= 1")
