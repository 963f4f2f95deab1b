"""The ``undesirable-jax`` command line on small inputs: outputs, exit codes, one-line errors.

Most tests call ``cli.main(argv)`` in-process (one JAX start for the whole file); one test runs the
installed console script and ``python -m undesirable_jax`` as real processes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import undesirable_jax as uj
from undesirable_jax import cli, data, models

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def digit_png(tmp_path_factory) -> tuple[Path, int]:
    """A real handwritten digit (sklearn digits, test split) written as an 8×8 grey PNG, and its label."""
    ex = data.digits("test")[3]
    path = tmp_path_factory.mktemp("img") / "digit.png"
    Image.fromarray(ex.image).save(path)
    return path, ex.label


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "error:" in lines[0]
    for n in needles:
        assert n in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ explain


def test_explain_digits_writes_figure_and_arrays_equal_to_the_api(digit_png, tmp_path, capsys):
    path, label = digit_png
    code, out, err = run_cli(["explain", path, "--model", "digits_cnn", "--window", 3, "--stride", 1,
                              "--sampler", "constant", "--fill-value", 0.0, "--top-k", 2,
                              "--out-dir", tmp_path, "--no-progress"], capsys)
    assert code == 0, err
    png, npz = tmp_path / "digit-digits_cnn.png", tmp_path / "digit-digits_cnn.npz"
    assert f"figure: {png}" in out and f"arrays: {npz}" in out
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1] > 100
    z = np.load(npz)

    # The same computation through the API (constant fill: the key does not matter).
    model = models.load("digits_cnn")
    image = model.preprocess(data.load_image(path)).image
    ex = uj.explain(model.classifier, image, window=3, stride=1, sampler=uj.samplers.constant(0.0),
                    num_samples=1, key=jax.random.key(0))
    f = uj.factors(ex, top_k=2)
    np.testing.assert_allclose(z["image"], image)
    np.testing.assert_allclose(z["evidence"], ex.evidence, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(z["probs"], ex.probs, rtol=1e-6)
    np.testing.assert_allclose(z["target"], f.target, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(z["non_target_classes"], f.non_target_classes)
    assert z["evidence"].shape == (10, 8, 8) and z["non_target"].shape == (2, 8, 8)
    assert int(z["target_class"]) == int(np.argmax(ex.probs))

    # The printed top classes are the model's, in order, with their probabilities.
    order = np.argsort(-np.asarray(ex.probs))[:3]
    for rank, c in enumerate(order, 1):
        assert f"  {rank}. {model.class_names[c]} (class {c}): p = " in out
    assert int(z["target_class"]) == label  # the shipped CNN reads this digit correctly


@pytest.mark.slow
def test_embedded_default_is_efficientnet_on_chelsea(tmp_path, monkeypatch, capsys):
    """`undesirable-jax explain` with no arguments: the real ImageNet model on the offline cat.

    Its wall time is measured in benchmarks/, not asserted here (a loaded machine would fail it)."""
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["explain", "--no-progress"], capsys)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "efficientnet_lite0 on chelsea: top classes"
    assert lines[1].startswith("  1. tiger cat (class 282): p = ")
    assert {ln.split(" (class")[0].split(". ", 1)[1] for ln in lines[1:4]} == {
        "tiger cat", "Egyptian cat", "tabby, tabby cat"}
    png = tmp_path / "undesirable-jax-out" / "chelsea-efficientnet_lite0.png"
    with Image.open(png) as im:
        assert im.size[0] > 1000
    z = np.load(png.with_suffix(".npz"))
    assert z["evidence"].shape == (1000, 224, 224) and int(z["window"]) == 32 and int(z["stride"]) == 16


@pytest.mark.slow
def test_explain_target_by_name_plain_and_file_names(digit_png, tmp_path, capsys):
    path, label = digit_png
    other = (label + 1) % 10
    code, out, err = run_cli(["explain", path, "--model", "digits_cnn", "--window", 4, "--stride", 2,
                              "--target", str(other), "--plain", "--out-dir", tmp_path, "--name", "x",
                              "--no-progress"], capsys)
    assert code == 0, err
    z = np.load(tmp_path / "x.npz")
    assert int(z["target_class"]) == other and not bool(z["decoupled"])
    assert other not in z["non_target_classes"].tolist()
    # U_t is max(0, -R_t) of the target's row
    np.testing.assert_allclose(z["target"], np.maximum(0.0, -z["evidence"][other]), atol=1e-6)
    assert (tmp_path / "x.png").is_file()


def test_explain_random_samplers_are_reproducible_by_seed(digit_png, tmp_path, capsys):
    path, _ = digit_png
    base = ["explain", path, "--model", "digits_cnn", "--window", 4, "--stride", 2, "--sampler", "marginal",
            "--samples", 3, "--no-progress"]
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        code, _, err = run_cli(base + ["--seed", seed, "--out-dir", tmp_path, "--name", name], capsys)
        assert code == 0, err
        runs[name] = np.load(tmp_path / f"{name}.npz")["evidence"]
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.allclose(runs["a"], runs["c"])


@pytest.mark.slow
def test_explain_conditional_fitted_and_from_file(digit_png, tmp_path, capsys):
    path, _ = digit_png
    pool = [data.digits("train")[i].image for i in range(40)]
    model = models.load("digits_cnn")
    images = np.stack([model.preprocess(im).image for im in pool])
    fitted = uj.samplers.conditional_gaussian(images, window=2, key=jax.random.key(1), padding=1,
                                              num_patches=2000)
    sfile = uj.samplers.save_conditional_gaussian(tmp_path / "cond.safetensors", fitted)
    code, out, err = run_cli(["explain", path, "--model", "digits_cnn", "--window", 2, "--stride", 2,
                              "--sampler", "conditional", "--sampler-file", sfile, "--samples", 2,
                              "--out-dir", tmp_path, "--name", "file", "--no-progress"], capsys)
    assert code == 0, err
    z = np.load(tmp_path / "file.npz")
    assert np.all(np.isfinite(z["evidence"])) and z["num_samples"] == 2
    # A sampler file fitted for another window is refused with a one-line error.
    code, _, err = run_cli(["explain", path, "--model", "digits_cnn", "--window", 4, "--stride", 2,
                            "--sampler", "conditional", "--sampler-file", sfile, "--out-dir", tmp_path,
                            "--no-progress"], capsys)
    assert_one_line_error(code, err, "window")
    # Fitted on the default pool (the offline sample photographs, preprocessed for the model).
    code, _, err = run_cli(["explain", path, "--model", "digits_cnn", "--window", 2, "--stride", 2,
                            "--sampler", "conditional", "--samples", 2, "--out-dir", tmp_path, "--name", "fit",
                            "--no-progress"], capsys)
    assert code == 0, err
    assert np.all(np.isfinite(np.load(tmp_path / "fit.npz")["evidence"]))


TINY_MODEL = '''
import numpy as np
import jax.numpy as jnp
import undesirable_jax as uj
from undesirable_jax.data import Preprocessor
from undesirable_jax.models import LoadedModel


def _apply(params, images):
    return images.reshape(images.shape[0], -1) @ params["w"] + params["b"]


def load(weights=None):
    if weights is None:
        raise ValueError("weights: the tiny model needs --weights")
    z = np.load(weights)
    params = {"w": jnp.asarray(z["w"]), "b": jnp.asarray(z["b"])}
    return LoadedModel(name="tiny", classifier=uj.from_function(_apply, params), class_names=("sky", "sea", "sand"),
                       input_shape=(6, 6, 1), weights=str(weights),
                       preprocess=Preprocessor(size=(6, 6), resize=None, mean=(0.0,), std=(255.0,), grayscale=True))


def not_a_model(weights=None):
    return 42
'''


@pytest.fixture()
def tiny_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """A user model in the current folder: ``<module>:load`` plus a weights file (a linear map)."""
    name = f"tiny_uj_model_{os.getpid()}_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(TINY_MODEL))
    rng = np.random.default_rng(0)
    weights = tmp_path / "tiny.npz"
    np.savez(weights, w=rng.normal(size=(36, 3)).astype(np.float32), b=np.zeros(3, np.float32))
    monkeypatch.chdir(tmp_path)
    yield name, weights
    sys.modules.pop(name, None)
    if str(tmp_path) in sys.path:
        sys.path.remove(str(tmp_path))


def test_explain_user_model_module_function_with_weights(tiny_module, digit_png, tmp_path, capsys):
    module, weights = tiny_module
    path, _ = digit_png
    code, out, err = run_cli(["explain", path, "--model", f"{module}:load", "--weights", weights, "--window", 3,
                              "--stride", 3, "--top-k", 2, "--target", "sea", "--sampler", "constant",
                              "--out-dir", tmp_path / "o", "--no-progress"], capsys)
    assert code == 0, err
    z = np.load(tmp_path / "o" / "digit-tiny.npz")
    assert z["evidence"].shape == (3, 6, 6) and int(z["target_class"]) == 1
    # A linear model: p(c|x) is the softmax of x·w, as printed.
    w = np.load(weights)["w"]
    p = np.asarray(jax.nn.softmax(jnp.asarray(z["image"]).reshape(-1) @ w))
    np.testing.assert_allclose(z["probs"], p, rtol=1e-5)
    top = int(np.argmax(p))
    assert f"  1. {('sky', 'sea', 'sand')[top]} (class {top})" in out

    code, _, err = run_cli(["explain", path, "--model", f"{module}:not_a_model", "--out-dir", tmp_path,
                            "--no-progress"], capsys)
    assert_one_line_error(code, err, "LoadedModel")
    code, _, err = run_cli(["explain", path, "--model", f"{module}:nothing_here", "--no-progress"], capsys)
    assert_one_line_error(code, err, "--model", "nothing_here")
    code, _, err = run_cli(["explain", path, "--model", "no_such_module_xyz:load", "--no-progress"], capsys)
    assert_one_line_error(code, err, "--model", "no_such_module_xyz")


@pytest.mark.parametrize("argv, needles", [
    (["explain", "no/such/file.png", "--model", "digits_cnn"], ["image", "no/such/file.png"]),
    (["explain", "{digit}", "--model", "no_such_model"], ["--model", "no_such_model", "digits_cnn"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--window", "9"], ["--window", "8×8"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--window", "2", "--stride", "3"], ["--stride"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--window", "0"], ["--window", ">= 1"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--target", "12"], ["--target", "[0, 10)"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--target", "giraffe"], ["--target", "giraffe"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--top-k", "10"], ["--top-k"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--samples", "0"], ["--samples"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--weights", "missing.safetensors"], ["--weights"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--sampler-file", "x.safetensors"], ["--sampler-file"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--blur-sigma", "-1"], ["sigma"]),
    (["explain", "{digit}", "--model", "digits_cnn", "--pool", "nowhere.png", "--sampler", "marginal"],
     ["--pool", "nowhere.png"]),
    (["explain", "{digit}", "--model", "resnet50"], ["weights", "resnet50"]),
    (["evaluate", "--dataset", "mnist", "--model", "digits_cnn", "--window", "2", "--stride", "2", "--out", "o"],
     ["--dataset", "mnist"]),
    (["evaluate", "--dataset", "folder:/no/such/dir", "--model", "digits_cnn", "--window", "2", "--stride", "2",
      "--out", "o"], ["/no/such/dir"]),
    (["evaluate", "--dataset", "digits", "--model", "digits_cnn", "--window", "2", "--stride", "2", "--out", "o",
      "--methods", "magic"], ["methods"]),
    (["benchmark", "--model", "digits_cnn", "--window", "20"], ["--window"]),
])
def test_bad_input_gives_one_line_error_and_exit_2(argv, needles, digit_png, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{digit}", str(digit_png[0])) for a in argv]
    code, out, err = run_cli(argv + ["--no-progress"], capsys)
    assert_one_line_error(code, err, *needles)
    assert not list(tmp_path.glob("undesirable-jax-out/*")), "nothing is written on bad input"


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["explain", "--window", "big"])
    assert e.value.code == 2
    assert "--window" in capsys.readouterr().err
    assert cli.main([]) == 2  # no subcommand: help on stderr, exit 2
    assert "explain" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    parser = cli.build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"explain", "evaluate", "benchmark"}
    for name, sub in subparsers.choices.items():
        for action in sub._actions:
            assert action.help and action.help.strip(), f"{name} {action.option_strings or action.dest} has no help"
        with pytest.raises(SystemExit) as e:
            cli.main([name, "--help"])
        assert e.value.code == 0
        text = capsys.readouterr().out
        for action in sub._actions:
            for opt in action.option_strings:
                assert opt in text


def test_resolve_target_and_top_classes():
    names = ("tabby, tabby cat", "tiger cat", "Egyptian cat")
    assert cli.resolve_target(None, names) is None
    assert cli.resolve_target("2", names) == 2
    assert cli.resolve_target("Tabby", names) == 0
    assert cli.resolve_target("tiger cat", names) == 1
    with pytest.raises(cli.UsageError, match="did you mean"):
        cli.resolve_target("cat", names)
    assert cli.top_classes([0.2, 0.5, 0.2, 0.1], ("a", "b", "c", "d"), 3) == [
        (1, "b", 0.5), (0, "a", 0.2), (2, "c", 0.2)]


# ------------------------------------------------------------------------------------------ evaluate


def test_evaluate_digits_writes_results_summary_and_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["evaluate", "--dataset", "digits", "--model", "digits_cnn", "--limit", 3, "--window", 4, "--stride", 2,
            "--sampler", "constant", "--methods", "pda", "occlusion", "random", "--thresholds", 10, 50,
            "--plain", "--occlusion-value", 0.5, "--sanity-images", 1, "--out", out, "--no-progress"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    results = sorted((out / "results").glob("*.json"))
    assert len(results) == 3
    recs = [json.loads(p.read_text()) for p in results]
    assert {r["id"] for r in recs} == {f"digits/{i}" for i in (0, 5, 10)}  # test split: every 5th image
    assert all(len(r["seeds"]) == 3 and r["percents"] == [10.0, 50.0] for r in recs)
    assert all(set(s) == {"pda", "occlusion", "random"} for r in recs for s in r["seeds"])
    assert sum("sanity" in r for r in recs) == 1
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["window"] == 4 and cfg["model"] == "digits_cnn" and cfg["dataset"] == "digits:test[:3]"
    assert cfg["decouple"] is False and cfg["occlusion_value"] == 0.5 and cfg["percents"] == [10.0, 50.0]
    assert cfg["scoring"] == "road(noise=0.01)" and cfg["num_seeds"] == 3 and cfg["scoring_draws"] == 4
    summary = (out / "summary.md").read_text()
    assert "Our metric, after Kang et al." in summary and "| pda |" in summary
    assert (out / "removal_gain.png").is_file()
    assert "| pda | random |" in (out / "comparisons.md").read_text()
    assert "randomise:" in (out / "sanity.md").read_text() and "random_logit" in (out / "sanity.md").read_text()

    # Without --resume an existing run is refused; with it, finished images are kept as they are.
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, "--resume")
    stamps = {p: p.stat().st_mtime_ns for p in results}
    code, _, err = run_cli(argv + ["--resume"], capsys)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in results} == stamps
    # A resume with other settings is refused by the runner, naming the key.
    code, _, err = run_cli([a if a != 4 else 2 for a in argv] + ["--resume"], capsys)
    assert_one_line_error(code, err, "window")


def test_evaluate_spread_covers_every_corruption_type(tmp_path, capsys):
    out = tmp_path / "spread"
    argv = ["evaluate", "--dataset", "digits+corrupt", "--model", "digits_cnn", "--spread", 4, "--window", 4,
            "--stride", 4, "--sampler", "constant", "--methods", "random", "--thresholds", 50, "--seeds", 1,
            "--scoring-draws", 1, "--sanity-images", 0, "--out", out, "--no-progress"]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    ids = {json.loads(p.read_text())["id"] for p in (out / "results").glob("*.json")}
    kinds = {i.split("+")[1].rstrip("0123456789.") if "+" in i else "clean" for i in ids}
    assert len(ids) == 4 and kinds == {"clean", "noise", "blur", "occlusion"}, ids
    assert json.loads((out / "config.json").read_text())["dataset"].startswith("digits+corrupt:test[spread 4] {")
    with pytest.raises(SystemExit) as e:                   # --limit and --spread: one or the other
        run_cli(argv[:5] + ["--limit", 4] + argv[5:], capsys)
    assert e.value.code == 2 and "--spread: not allowed with argument --limit" in capsys.readouterr().err


def test_evaluate_split_over_two_processes_then_resume_merges(tmp_path, capsys):
    out = tmp_path / "split"
    argv = ["evaluate", "--dataset", "digits", "--model", "digits_cnn", "--limit", 2, "--window", 4, "--stride", 4,
            "--sampler", "constant", "--methods", "pda", "random", "--thresholds", 25, "--perturbation", "constant",
            "--seeds", 1, "--out", out, "--no-progress"]
    code, stdout, err = run_cli(argv + ["--process-index", 0, "--process-count", 2], capsys)
    assert code == 0, err
    assert "merge" in stdout and not (out / "summary.md").exists()
    code, _, err = run_cli(argv + ["--merge-only"], capsys)    # process 1 has not run: merge names what is missing
    assert code == 2 and "missing" in err and "digits/5" in err
    code, _, err = run_cli(argv + ["--process-index", 1, "--process-count", 2, "--resume"], capsys)
    assert code == 0, err
    assert len(list((out / "results").glob("*.json"))) == 2
    code, stdout, err = run_cli(argv + ["--merge-only"], capsys)
    assert code == 0, err
    assert (out / "summary.md").is_file() and "merged 2 results" in stdout
    code, stdout, err = run_cli(argv + ["--resume"], capsys)   # one process: nothing left to do, then merge
    assert code == 0, err
    assert (out / "summary.md").is_file() and "summary:" in stdout
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["scoring"].startswith("constant(value=") and cfg["scoring_value"] > 0   # the pool's mean


def test_evaluate_distributed_flags_need_distributed(tmp_path, capsys):
    argv = ["evaluate", "--dataset", "digits", "--window", 4, "--stride", 4, "--out", tmp_path, "--no-progress"]
    code, _, err = run_cli(argv + ["--num-processes", 2], capsys)
    assert code == 2 and "need --distributed" in err
    code, _, err = run_cli(argv + ["--distributed", "--process-count", 2], capsys)
    assert code == 2 and "drop --process-index/--process-count" in err


def test_explain_mesh_local_equals_default_device(digit_png, tmp_path, capsys):
    path, _ = digit_png
    base = ["explain", path, "--model", "digits_cnn", "--window", 2, "--stride", 2, "--sampler", "constant",
            "--chunk-size", 8, "--out-dir", tmp_path, "--no-progress"]
    for name, mesh in (("one", "none"), ("all", "local")):
        code, _, err = run_cli(base + ["--mesh", mesh, "--name", name], capsys)
        assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "all.npz")["evidence"], np.load(tmp_path / "one.npz")["evidence"],
                               rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ benchmark


def test_benchmark_digits_checks_and_reports(tmp_path, capsys):
    js = tmp_path / "bench.json"
    code, out, err = run_cli(["benchmark", "--model", "digits_cnn", "--window", 4, "--stride", 2, "--samples", 4,
                              "--chunk-size", 16, "--rounds", 1, "--json", js, "--no-progress"], capsys)
    assert code == 0, err
    rec = json.loads(js.read_text())
    # 3×3 windows on 8×8, S = 4: 36 pairs in at most 16 a step -> 3 balanced steps of 12
    assert rec["pairs"] == 9 * 4 and rec["chunk"] == 12
    assert rec["check_error"] < 1e-5
    assert rec["engine_rate"] > 0 and rec["raw_rate"] > 0
    assert abs(rec["ratio_wall"] - rec["raw_wall"] / rec["engine_wall"]) < 1e-9
    assert "engine img/s" in out and "(ok)" in out


def test_benchmark_check_catches_an_engine_that_disagrees(monkeypatch):
    """The correctness check compares against hand-built images; an engine using other keys fails it."""
    from undesirable_jax import throughput as benchmark

    model = models.load("digits_cnn")
    image = model.preprocess(data.digits("test")[0].image).image
    pool = np.stack([model.preprocess(data.digits("train")[i].image).image for i in range(8)])
    sampler = uj.samplers.marginal(pool)
    kw = dict(window=4, stride=4, num_samples=3, key=jax.random.key(0))
    assert benchmark.check_engine(model.classifier, image, sampler, **kw) < 1e-5
    real = benchmark.explain
    monkeypatch.setattr(benchmark, "explain", lambda *a, **k: real(*a, **{**k, "key": jax.random.key(7)}))
    assert benchmark.check_engine(model.classifier, image, sampler, **kw) > 1e-3


# ------------------------------------------------------------------------------------------ processes


def test_console_script_and_python_dash_m(digit_png, tmp_path, monkeypatch, capsys):
    import runpy

    script = VENV_BIN / "undesirable-jax"
    assert script.is_file(), "the console script is installed with the package (pip install -e .)"
    r = subprocess.run([str(script), "explain", str(tmp_path / "missing.png"), "--model", "digits_cnn"],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "error:" in r.stderr and "missing.png" in r.stderr
    assert not (tmp_path / "undesirable-jax-out").exists()
    # python -m undesirable_jax runs the same main (in-process here: one JAX start is enough)
    monkeypatch.setattr(sys, "argv", ["undesirable_jax", "--version"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("undesirable_jax", run_name="__main__")
    assert e.value.code == 0 and uj.__version__ in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ README

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(lang: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    parts = text.split(f"```{lang}\n")[1:]
    return [p.split("```", 1)[0] for p in parts]


def test_readme_starts_with_the_default_run_then_the_test_command():
    bash = _blocks("bash")
    assert bash[0].strip().endswith("&& undesirable-jax explain")
    assert ".[imagenet]" in bash[0]
    ci = (README.parent / ".ci" / "run").read_text()
    assert bash[1].strip() in ci, "the README's test command and .ci/run must stay the same line"


def test_readme_own_model_example_runs_through_the_cli(digit_png, tmp_path, monkeypatch, capsys):
    """The README's ``mymodel.py`` and its save line, used as documented with ``--model mymodel:load``."""
    from flax import traverse_util

    src = next(b for b in _blocks("python") if b.startswith("# mymodel.py"))
    module = f"mymodel_{os.getpid()}"
    (tmp_path / f"{module}.py").write_text(src)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        mod = __import__(module)
        variables = mod.Net().init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        models.save_safetensors(tmp_path / "mynet.safetensors",
                                {"/".join(k): v for k, v in traverse_util.flatten_dict(variables).items()})
        code, out, err = run_cli(["explain", digit_png[0], "--model", f"{module}:load", "--weights",
                                  "mynet.safetensors", "--window", 4, "--stride", 2, "--top-k", 2,
                                  "--out-dir", tmp_path, "--name", "mine", "--no-progress"], capsys)
        assert code == 0, err
        z = np.load(tmp_path / "mine.npz")
        assert z["evidence"].shape == (3, 32, 32)
        x = z["image"][None]
        np.testing.assert_allclose(z["probs"], jax.nn.softmax(mod.Net().apply(variables, x))[0], rtol=1e-5)
        assert "mynet on digit: top classes" in out
    finally:
        sys.modules.pop(module, None)
        if str(tmp_path) in sys.path:
            sys.path.remove(str(tmp_path))
