"""Black boxes a user can hand over without reading the source (issue 21).

``outputs="auto"`` decided from the untouched image and stated; one ``error:`` line (exit 2) for every
model file or torch function that cannot be loaded or called; half-precision torch modules; absurd
sizes a model file declares refused before allocation (peaks measured in a child process); a 2048²
input within a stated memory budget; a changed model refused on resume; torchvision's preprocessing.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import undesirable_jax as uj
from undesirable_jax import samplers
from undesirable_jax.black_boxes import MAX_CLASSES

ROOT = Path(__file__).resolve().parents[1]
H, W, C, K = 8, 8, 3, 5
RNG = np.random.default_rng(0)
WEIGHTS = (RNG.normal(size=(C * H * W, K)) * 0.05).astype(np.float32)
BIAS = (RNG.normal(size=K) * 0.3).astype(np.float32)
IMAGE = np.random.default_rng(1).normal(size=(H, W, C)).astype(np.float32)


def logits_np(x: np.ndarray) -> np.ndarray:
    """A linear model on NHWC batches (NumPy)."""
    return x.reshape(x.shape[0], -1) @ WEIGHTS + BIAS


def logits_jax(x):
    return jnp.dot(x.reshape(x.shape[0], -1), WEIGHTS, precision=jax.lax.Precision.HIGHEST) + BIAS


def torch_linear() -> torch.nn.Module:
    """The same linear model on NCHW batches (its weights permuted to C, H, W order)."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(C * H * W, K))
    w = WEIGHTS.reshape(H, W, C, K).transpose(2, 0, 1, 3).reshape(-1, K)
    with torch.no_grad():
        net[1].weight.copy_(torch.from_numpy(w.T.copy()))
        net[1].bias.copy_(torch.from_numpy(BIAS))
    return net


def onnx_graph(path: Path, *, head: str | None = None, in_shape=("N", C, H, W), out_shape=("N", K),
               weights=WEIGHTS, extra_nodes=(), external: bool = False) -> Path:
    """Flatten + Gemm (NCHW input), optionally ending in ``head`` (Softmax / LogSoftmax)."""
    w = weights.reshape(H, W, C, K).transpose(2, 0, 1, 3).reshape(-1, K)
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Gemm", ["f", "w", "b"], ["z" if head else "y"]), *extra_nodes]
    if head:
        nodes.append(helper.make_node(head, ["z"], ["y"], axis=-1))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(BIAS, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return path


def mean_graph(path: Path, in_shape, axes=(2, 3)) -> Path:
    """The channel means (ReduceMean over ``axes``) times a [C, K] matrix: valid for any image size."""
    nodes = [helper.make_node("ReduceMean", ["x"], ["m"], axes=list(axes), keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["y"])]
    graph = helper.make_graph(nodes, "mean", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", K])],
                              [numpy_helper.from_array(WEIGHTS[:C], "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def explain(clf, image=IMAGE, **kw):
    return uj.explain(clf, image, window=4, stride=2, sampler=samplers.constant(0.0), num_samples=1,
                      key=jax.random.key(0), **kw)


# ------------------------------------------------------------------------------------ outputs="auto"


@pytest.fixture(scope="module")
def reference():
    return explain(uj.from_function(logits_jax))


@pytest.mark.parametrize("kind", ["jax", "numpy", "torch", "onnx"])
def test_auto_outputs_equal_the_right_explicit_value(kind, reference, tmp_path):
    """Probability and log-probability models: "auto" gives the explicit value's evidence (1e-5)."""
    for head, outputs in (("Softmax", "probs"), ("LogSoftmax", "log_probs")):
        if kind == "jax":
            f = jax.nn.softmax if head == "Softmax" else jax.nn.log_softmax
            make = lambda o: uj.from_function(lambda x: f(logits_jax(x)), outputs=o)  # noqa: E731
        elif kind == "numpy":
            f = jax.nn.softmax if head == "Softmax" else jax.nn.log_softmax
            make = lambda o: uj.black_box(lambda x: np.asarray(f(logits_np(x))), num_classes=K, outputs=o)  # noqa: E731
        elif kind == "torch":
            layer = torch.nn.Softmax(-1) if head == "Softmax" else torch.nn.LogSoftmax(-1)
            make = lambda o: uj.from_torch(torch.nn.Sequential(torch_linear(), layer), outputs=o)  # noqa: E731
        else:
            path = onnx_graph(tmp_path / f"{head}.onnx", head=head)
            make = lambda o: uj.from_onnx(path, outputs=o)  # noqa: E731
        auto, explicit = explain(make("auto")), explain(make(outputs))
        assert auto.outputs == explicit.outputs == outputs
        np.testing.assert_allclose(auto.evidence, explicit.evidence, atol=1e-5)
        np.testing.assert_allclose(auto.evidence, reference.evidence, atol=1e-4)   # and the logits model's
        wrong = "logits" if outputs == "probs" else "probs"
        with pytest.raises(ValueError, match=f"outputs='{wrong}' was given, but .* looks like {outputs}"):
            explain(make(wrong))
    assert explain(uj.from_function(logits_jax, outputs="auto")).outputs == "logits"
    with pytest.raises(ValueError, match="outputs='log_probs' was given, but .* looks like logits"):
        explain(uj.from_function(logits_jax, outputs="log_probs"))


def test_auto_is_decided_once_per_image_without_a_new_compile():
    """The decision is made on the untouched image before the jitted work; a second image of the same
    shape reuses every compiled step (the jit caches do not grow)."""
    from undesirable_jax import classifiers

    clf = uj.black_box(lambda x: np.asarray(jax.nn.softmax(logits_np(x))), num_classes=K)
    explain(clf)
    size = classifiers.raw_output._cache_size()
    explain(clf, IMAGE * 0.5)
    assert classifiers.raw_output._cache_size() == size
    decided = uj.resolve_outputs(clf, IMAGE)
    assert (clf.outputs, decided.outputs) == ("auto", "probs")
    with pytest.raises(ValueError, match="resolve_outputs"):
        clf.probs(jnp.asarray(IMAGE)[None])
    with pytest.raises(ValueError, match="ambiguous|cannot tell"):   # a row summing to 1 within 1e-2 only
        explain(uj.black_box(lambda x: np.full((x.shape[0], K), 1.004 / K), num_classes=K))


def test_a_batch_decides_outputs_like_each_image_alone():
    """``decide_batch_outputs`` / ``check_batch_probs`` (vectorised) accept and refuse exactly what
    :func:`decide_outputs` / :func:`check_probs` row by row do, and name the first image that fails."""
    from undesirable_jax.classifiers import check_batch_probs, check_probs, decide_batch_outputs, decide_outputs

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, K)) * 3
    probs = np.asarray(jax.nn.softmax(logits))
    kinds = {"logits": logits, "probs": probs, "log_probs": np.log(probs), "near_probs": probs * 1.004,
             "inf": np.where(np.arange(K) == 2, np.inf, logits), "negative": probs - 0.5}
    for first in ("logits", "probs", "log_probs"):
        for other, rows in kinds.items():
            batch = np.concatenate([kinds[first][:2], rows[:3]])
            for outputs in ("auto", "logits", "probs", "log_probs"):
                try:   # the slow reference: the one-row rule on every row, decided on the first
                    want = decide_outputs(batch[0], outputs)
                    bad = [i for i in range(1, 5) if _refuses(decide_outputs, batch[i], want)]
                except ValueError:
                    want, bad = None, []
                if want is None:
                    with pytest.raises(ValueError):
                        decide_batch_outputs(batch, outputs)
                elif bad:
                    with pytest.raises(ValueError, match=rf"^images\[{bad[0]}\]: classifier: "):
                        decide_batch_outputs(batch, outputs)
                else:
                    assert decide_batch_outputs(batch, outputs) == want, (first, other, outputs)
            for outputs in ("logits", "probs"):
                bad = [i for i in range(5) if _refuses(check_probs, batch[i], outputs)]
                if bad:
                    with pytest.raises(ValueError, match=rf"images\[{bad[0]}\]: classifier: |^classifier: "):
                        check_batch_probs(batch, outputs)
                else:
                    assert check_batch_probs(batch, outputs) == K


def _refuses(check, *args) -> bool:
    try:
        check(*args)
    except ValueError:
        return True
    return False


def test_cli_prints_the_decision_and_records_it(tmp_path, capsys):
    from undesirable_jax import cli

    path = onnx_graph(tmp_path / "soft.onnx", head="Softmax")
    base = ["explain", "chelsea", "--model", str(path), "--window", "4", "--stride", "4", "--sampler", "constant",
            "--top-k", "2", "--no-progress", "--out-dir", str(tmp_path)]
    assert cli.main(base) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "model outputs: probs (auto: decided from its output on chelsea)" in out
    assert str(np.load(tmp_path / "chelsea-soft.npz")["outputs"]) == "probs"
    assert cli.main(base + ["--outputs", "logits"]) == 2
    err = capsys.readouterr().err
    assert "outputs='logits' was given, but" in err and "looks like probs" in err and len(err.splitlines()) == 1


# ------------------------------------------------------------------------------ one line, exit code 2


CUDA_ONLY = """
import torch
def build():
    return torch.nn.Linear(3, 2).cuda()
"""
BROKEN_IMPORT = """
import torch
raise RuntimeError("this module needs a GPU driver at import")
def build():
    return torch.nn.Linear(3, 2)
"""
INTERRUPTED = """
import torch
class Stop(torch.nn.Module):
    def forward(self, x):
        raise KeyboardInterrupt
def build():
    return Stop()
"""


def _bad_models(tmp: Path) -> dict[str, tuple[str, str]]:
    """name → (--model value, a word the error line must hold)."""
    (tmp / "empty.onnx").write_bytes(b"")
    (tmp / "garbage.onnx").write_bytes(os.urandom(300))
    (tmp / "text.onnx").write_text("this is not a model\n")
    good = onnx_graph(tmp / "good.onnx").read_bytes()
    (tmp / "truncated.onnx").write_bytes(good[: len(good) // 2])
    custom = helper.make_node("NoSuchOp", ["z"], ["y"], domain="my.domain")
    graph = onnx_graph(tmp / "custom.onnx", extra_nodes=(), head=None)
    model = onnx.load(str(graph))
    model.graph.node[-1].output[0] = "z"
    model.graph.node.append(custom)
    model.opset_import.append(helper.make_opsetid("my.domain", 1))
    onnx.save(model, str(tmp / "custom.onnx"))
    reshape = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Reshape", ["f", "s"], ["y"])]
    g = helper.make_graph(reshape, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", C, H, W])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", K])],
                          [numpy_helper.from_array(np.array([-1, 7], np.int64), "s")])   # 192 values: not 7s
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(tmp / "fails.onnx"))
    onnx_graph(tmp / "external.onnx", external=True)
    (tmp / "external.onnx.data").unlink()
    for name, text in (("cuda_only", CUDA_ONLY), ("broken_import", BROKEN_IMPORT), ("interrupted", INTERRUPTED)):
        (tmp / f"{name}.py").write_text(textwrap.dedent(text))
    return {"empty": (str(tmp / "empty.onnx"), "empty.onnx"), "garbage": (str(tmp / "garbage.onnx"), "garbage.onnx"),
            "text": (str(tmp / "text.onnx"), "text.onnx"), "truncated": (str(tmp / "truncated.onnx"), "truncated.onnx"),
            "unknown op": (str(tmp / "custom.onnx"), "operator"),
            "external data missing": (str(tmp / "external.onnx"), "external-data"),
            "graph fails at run time": (str(tmp / "fails.onnx"), "ONNX Runtime failed"),
            "torch import fails": ("torch:broken_import:build", "broken_import"),
            "torch needs CUDA": ("torch:cuda_only:build", "CUDA"),
            "Ctrl-C in a torch call": ("torch:interrupted:build", "interrupted")}


BAD_CASES = ["empty", "garbage", "text", "truncated", "unknown op", "external data missing", "graph fails at run time",
             "torch import fails", "torch needs CUDA", "Ctrl-C in a torch call"]


def _run_bad_model(model: str, tmp: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "undesirable_jax", "explain", "chelsea", "--model", model,
                           "--input-size", "8", "--window", "4", "--stride", "4", "--sampler", "constant",
                           "--top-k", "1", "--no-progress", "--out-dir", str(tmp / "out"), "--compile-cache", "off"],
                          capture_output=True, text=True, cwd=tmp, env=env, timeout=300)


@pytest.fixture(scope="module")
def bad_model_runs(tmp_path_factory):
    """case → (the CLI's finished process, the word its error line must hold), each case in its own fresh
    process as a user would start it. The processes run a few at a time: each is mostly Python, JAX
    and torch start-up on one core, so one after another left the other cores idle."""
    tmp = tmp_path_factory.mktemp("bad_models")
    cases = _bad_models(tmp)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", CUDA_VISIBLE_DEVICES="")

    def run(case):  # a run past its deadline fails its own case only
        try:
            return _run_bad_model(cases[case][0], tmp, env)
        except subprocess.TimeoutExpired as e:
            return e

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 2)) as pool:
        procs = dict(zip(BAD_CASES, pool.map(run, BAD_CASES)))
    return {case: (procs[case], cases[case][1]) for case in BAD_CASES}


@pytest.mark.parametrize("case", BAD_CASES)
def test_every_bad_model_is_one_error_line_exit_2(bad_model_runs, case):
    proc, word = bad_model_runs[case]
    assert not isinstance(proc, subprocess.TimeoutExpired), proc
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("undesirable-jax explain: error: ") and word in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_wrong_input_size_names_the_expected_size(tmp_path):
    clf = uj.from_onnx(onnx_graph(tmp_path / "fixed.onnx"))
    with pytest.raises(ValueError, match=r"takes images of shape \[3, 8, 8\] .* got \[3, 16, 16\]; preprocess"):
        explain(clf, np.zeros((16, 16, 3), np.float32))


def test_cuda_device_and_misuse_messages():
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            uj.from_torch(torch_linear(), device="cuda")
    with pytest.raises(ValueError, match=r"without a channel axis; add one: image\[..., None\]"):
        explain(uj.from_function(logits_jax), np.zeros((8, 8), np.float32))


def test_gradient_methods_on_a_black_box_are_refused_before_work():
    from types import SimpleNamespace

    from undesirable_jax.cli import UsageError, _check_methods_run

    model = SimpleNamespace(name="m.onnx", classifier=uj.black_box(logits_np, num_classes=K))
    with pytest.raises(UsageError, match=r"--methods: none of \['gradient_input'\] can run on m.onnx.*pick from"):
        _check_methods_run(["gradient_input"], model)
    _check_methods_run(["gradient_input", "pda"], model)   # pda runs: gradient_input is skipped as before


# ------------------------------------------------------------------------------------ half precision


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
def test_half_precision_modules_match_float32(dtype, atol):
    """The batch is cast to the module's dtype; probabilities agree with the float32 module to ``atol``
    (float16 keeps 11 significant bits, bfloat16 8)."""
    net = torch_linear()
    want = explain(uj.from_torch(net))
    got = explain(uj.from_torch(copy.deepcopy(net).to(dtype)))
    assert got.window_probs.dtype == jnp.float32
    np.testing.assert_allclose(got.probs, want.probs, atol=atol)
    np.testing.assert_allclose(got.window_probs, want.window_probs, atol=atol)


# ------------------------------------------------------------------------------ sizes and memory

MEMORY_CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import undesirable_jax as uj
    from undesirable_jax.models import resolve

    results = {}
    for path in sys.argv[1:]:
        try:
            resolve(path)
            results[path] = "accepted"
        except ValueError as e:
            results[path] = str(e)
    try:
        uj.black_box(lambda x: x, num_classes=2**40)
        results["2**40"] = "accepted"
    except ValueError as e:
        results["2**40"] = str(e)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"results": results, "peak": peak}))
""")


def test_absurd_declared_sizes_are_refused_within_500_mb(tmp_path):
    wide = onnx_graph(tmp_path / "wide.onnx", out_shape=("N", 2**31))
    huge_batch = onnx_graph(tmp_path / "batch.onnx", in_shape=(2**31 - 1, C, H, W), out_shape=(2**31 - 1, K))
    big_input = mean_graph(tmp_path / "big.onnx", ("N", C, 5000, 5000))
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(wide), str(huge_batch), str(big_input)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    r = report["results"]
    assert "wide.onnx" in r[str(wide)] and f"{MAX_CLASSES:,}" in r[str(wide)], r
    assert "batch.onnx" in r[str(huge_batch)] and "2,147,483,647 images per call" in r[str(huge_batch)], r
    assert "big.onnx" in r[str(big_input)] and "5000x5000" in r[str(big_input)], r
    assert "1,099,511,627,776 classes" in r["2**40"], r
    print(f"peak of the refusing process: {report['peak'] / 2**20:.0f} MiB")
    assert report["peak"] < 500 * 2**20, f"peak {report['peak'] / 2**20:.0f} MiB"


LARGE_CHILD = textwrap.dedent("""
    import json
    import jax, numpy as np
    import undesirable_jax as uj
    from undesirable_jax import samplers
    from undesirable_jax.engine import plan_chunk

    image = np.random.default_rng(0).random((2048, 2048, 3), dtype=np.float32)
    calls = []
    def fn(x):
        calls.append(x.shape[0])
        m = x.mean(axis=(1, 2))
        return np.stack([m[:, 0], m[:, 1] - m[:, 2]], axis=1)
    e = uj.explain(uj.black_box(fn, num_classes=2, outputs="logits"), image, window=256, stride=256,
                   sampler=samplers.constant(0.0), num_samples=1, key=jax.random.key(0))
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    print(json.dumps({"peak": peak, "calls": calls, "finite": bool(np.isfinite(np.asarray(e.evidence)).all())}))
""")


def test_a_2048_input_runs_within_a_memory_budget():
    """64 windows of a 2048² RGB image (48 MiB each): the default chunk holds 10 (512 MiB), not 64 (3 GiB),
    and the process peaks under a 2.5 GiB budget (the 64-image chunk alone would be 6 GiB with its host copy)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", LARGE_CHILD], capture_output=True, text=True, env=env, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"2048² input: peak {report['peak'] / 2**20:.0f} MiB, calls of {sorted(set(report['calls']))} images")
    assert report["finite"] and max(report["calls"]) <= 11 and sum(report["calls"]) >= 65
    assert report["peak"] < 2.5 * 2**30


def test_chunk_plans_respect_memory_and_fixed_batches():
    from undesirable_jax.engine import plan_chunk

    mb48 = 2048 * 2048 * 3 * 4
    assert plan_chunk(None, 64, 1, item_bytes=mb48) == 10                       # 512 MiB, not 256 images
    assert plan_chunk(None, 1000, 1, item_bytes=8 * 8 * 12) == 250            # 4 balanced steps of <= 256
    assert plan_chunk(None, 1000, 1, item_bytes=8 * 8 * 12, fixed_batch=500) == 500   # full calls, no padding
    assert plan_chunk(None, 1000, 1, item_bytes=8 * 8 * 12, fixed_batch=40) == 240     # six calls a chunk
    assert plan_chunk(None, 1000, 2, item_bytes=8 * 8 * 12, fixed_batch=40) == 480     # per device
    with pytest.raises(ValueError, match=r"chunk_size=100000000: .* use chunk_size=10 or less"):
        plan_chunk(100_000_000, 10**9, 1, item_bytes=mb48)


def test_fixed_batch_graph_is_called_full(tmp_path):
    """A graph taking exactly 40 images: the engine's default chunk is 40, so no call is mostly padding."""
    path = onnx_graph(tmp_path / "fixed40.onnx", in_shape=(40, C, H, W), out_shape=(40, K))
    clf = uj.from_onnx(path)
    calls = []
    forward = clf.fn.fn
    clf.fn.fn = lambda x: calls.append(x.shape[0]) or forward(x)
    e = uj.explain(clf, IMAGE, window=2, stride=1, sampler=samplers.constant(0.0), num_samples=2,
                   key=jax.random.key(0))    # 49 windows × 2 = 98 pairs: one chunk of 120, three full calls
    np.testing.assert_allclose(e.evidence, explain_twin(), atol=1e-5)
    assert calls[1:] == [40, 40, 40]          # calls[0]: the untouched image (padded to the fixed batch)


def explain_twin():
    return uj.explain(uj.from_function(logits_jax), IMAGE, window=2, stride=1, sampler=samplers.constant(0.0),
                      num_samples=2, key=jax.random.key(0)).evidence


def test_input_layout_option(tmp_path, capsys):
    """A graph whose input shape does not show its layout: refused with advice the CLI can follow."""
    from undesirable_jax import cli

    mean_graph(tmp_path / "nhwc.onnx", ["N", "h", "w", "c"], axes=(1, 2))
    base = ["explain", "chelsea", "--model", str(tmp_path / "nhwc.onnx"), "--input-size", "8", "--window", "4",
            "--stride", "4", "--sampler", "constant", "--top-k", "1", "--no-progress", "--out-dir", str(tmp_path)]
    assert cli.main(base) == 2
    assert "--input-layout" in capsys.readouterr().err
    assert cli.main(base + ["--input-layout", "NHWC"]) == 0, capsys.readouterr().err


# ------------------------------------------------------------------------------------ model identity


def test_a_changed_model_is_refused_on_resume(tmp_path):
    from undesirable_jax.evaluate import EvalConfig, runner

    config = EvalConfig(model="m", window=4, stride=4, methods=("random",))
    sampler = samplers.constant(0.0)
    path = onnx_graph(tmp_path / "m.onnx")
    first = runner.config_record(config, uj.from_onnx(path), sampler)
    (tmp_path / "run").mkdir()
    runner.check_config(tmp_path / "run", first)                                    # the first run's record
    assert runner.config_record(config, uj.from_onnx(path), sampler) == first       # same file, same record
    onnx_graph(path, weights=WEIGHTS * 2)                                           # replaced by another model
    with pytest.raises(ValueError, match="model_sha256: stored"):
        runner.check_config(tmp_path / "run", runner.config_record(config, uj.from_onnx(path), sampler))
    ext = onnx_graph(tmp_path / "e.onnx", external=True)
    a = runner.config_record(config, uj.from_onnx(ext), sampler)["model_sha256"]
    onnx_graph(tmp_path / "e.onnx", external=True, weights=WEIGHTS * 3)            # only the .data file differs
    assert runner.config_record(config, uj.from_onnx(ext), sampler)["model_sha256"] != a
    net = torch_linear()
    t1 = runner.config_record(config, uj.from_torch(net), sampler)
    with torch.no_grad():
        net[1].bias.add_(1.0)
    t2 = runner.config_record(config, uj.from_torch(net), sampler)
    assert t1["model_sha256"] != t2["model_sha256"] and t1["outputs"] == "auto"


# ------------------------------------------------------------------------------------ preprocessing


def torchvision_reference(raw: np.ndarray, short: int, crop: int) -> np.ndarray:
    """torchvision's Resize(short) + CenterCrop(crop) on a PIL image, written out from its source:
    ``_compute_resized_output_size`` (long side truncated), PIL bilinear, ``center_crop``'s rounding."""
    im = Image.fromarray(raw)
    w, h = im.size
    s, l = (w, h) if w <= h else (h, w)
    new_s, new_l = short, int(short * l / s)
    new_w, new_h = (new_s, new_l) if w <= h else (new_l, new_s)
    im = im.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - crop) / 2.0)), int(round((new_w - crop) / 2.0))
    return np.asarray(im.crop((left, top, left + crop, top + crop)), np.float32)


@pytest.mark.parametrize("shape", [(112, 112), (240, 320), (320, 240), (333, 500)])
def test_preprocessing_matches_torchvision(shape):
    raw = np.random.default_rng(shape[0]).integers(0, 256, (*shape, 3), dtype=np.uint8)
    prep = uj.data.Preprocessor(size=(100, 100), resize=114, mean=(0.0,) * 3, std=(1.0,) * 3, resample="bilinear")
    got = prep(raw).image
    np.testing.assert_array_equal(got, torchvision_reference(raw, 114, 100))
    try:
        from torchvision import transforms as T
    except Exception:   # noqa: BLE001 - absent, or a build that does not match the installed torch
        return
    want = np.asarray(T.CenterCrop(100)(T.Resize(114)(Image.fromarray(raw))), np.float32)
    np.testing.assert_array_equal(got, want)


def test_cli_default_preprocessing_keeps_the_aspect_ratio_and_warns_on_0_1_scale(tmp_path, capsys):
    from undesirable_jax.models.external import ExternalOptions, preprocessor

    prep = preprocessor(ExternalOptions(input_size=(112,)), None)
    assert (prep.size, prep.resize) == ((112, 112), 128)
    raw = uj.data.sample_image("chelsea")    # 451×300: short side 128, long int(128·451/300) = 192
    out = prep(raw)
    assert out.resized_shape == (128, 192) and out.crop_box == (8, 40, 112, 112)
    with pytest.raises(ValueError, match=r"at least 25,000,000 pixels.*at most 4096"):   # no crash in the message
        uj.data.Preprocessor(size=(5000, 5000), resize=None, mean=(0.0,) * 3, std=(1.0,) * 3)
    with pytest.warns(uj.data.PreprocessWarning, match="0..1 scale"):
        uj.data.Preprocessor(size=(8, 8), resize=None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    from undesirable_jax import cli

    path = onnx_graph(tmp_path / "m.onnx")
    code = cli.main(["explain", "chelsea", "--model", str(path), "--mean", "0.485", "0.456", "0.406", "--std",
                     "0.229", "0.224", "0.225", "--window", "4", "--stride", "4", "--sampler", "constant",
                     "--top-k", "1", "--no-progress", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 0
    assert [line for line in err.splitlines() if "warning:" in line] == [
        line for line in err.splitlines() if "0..1 scale" in line] and "0..1 scale" in err


def test_imagenet_classes_is_public():
    names = uj.data.imagenet_classes()
    assert len(names) == 1000 and names[281].startswith("tabby")


def test_evaluate_resume_with_a_replaced_onnx_file_is_refused(tmp_path, capsys):
    """`evaluate --model m.onnx`, then m.onnx replaced by another model, then `--resume`: refused naming
    model_sha256 (before, 38 of 60 results came from the second model without a word)."""
    from undesirable_jax import cli

    rng = np.random.default_rng(3)

    def digits_graph(scale: float) -> None:
        w = (rng.normal(size=(64, 10)) * 0.01 * scale).astype(np.float32)
        nodes = [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("Gemm", ["f", "w", "b"], ["z"]),
                 helper.make_node("Softmax", ["z"], ["y"], axis=-1)]
        graph = helper.make_graph(nodes, "digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
                                  [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(10, np.float32), "b")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.save(model, str(tmp_path / "m.onnx"))

    names = tmp_path / "digits.txt"
    names.write_text("\n".join(str(i) for i in range(10)) + "\n")
    args = ["evaluate", "--dataset", "digits", "--limit", "1", "--model", str(tmp_path / "m.onnx"), "--class-names",
            str(names), "--mean", "0", "--std", "16", "--window", "4", "--stride", "4", "--methods", "random",
            "--seeds", "1", "--scoring-draws", "1", "--thresholds", "10", "--out", str(tmp_path / "run"),
            "--no-progress", "--compile-cache", "off"]
    digits_graph(1.0)
    assert cli.main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "model outputs: probs (auto: decided from its output on image" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["outputs"] == "probs" and len(config["model_sha256"]) == 64
    digits_graph(2.0)
    assert cli.main(args + ["--resume"]) == 2
    err = capsys.readouterr().err
    assert "model_sha256: stored" in err and len(err.strip().splitlines()) == 1
