"""Black boxes (NumPy, PyTorch, ONNX) through the jitted engine equal the same network written in JAX.

Each black box carries the same weights as a JAX twin; the engine's ``window_probs`` must agree to
1e-5 for the constant, marginal and conditional samplers, whatever the chunk and batch sizes, and on
four devices. A black box that raises, returns NaN or the wrong shape ends in one clear error.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import traceback

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import undesirable_jax as uj
from undesirable_jax import samplers
from undesirable_jax.black_boxes import BlackBoxError

H, W, C, K, F = 8, 8, 3, 5, 4  # image, classes, conv features
HIGH = jax.lax.Precision.HIGHEST


def weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Conv 3×3 (OIHW) + bias, dense [F·H·W, K] + bias; scaled so the probabilities are not one-hot."""
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(F, C, 3, 3)).astype(np.float32) * 0.3,
            "b": rng.normal(size=F).astype(np.float32) * 0.1,
            "gw": rng.normal(size=(F * H * W, K)).astype(np.float32) * 0.05,
            "gb": rng.normal(size=K).astype(np.float32) * 0.1}


def jax_net(p, x):
    """The twin in JAX: NHWC in, conv on NCHW (padding 1), ReLU, flatten in C, H, W order, dense."""
    y = jax.lax.conv_general_dilated(jnp.moveaxis(x, -1, 1), p["w"], (1, 1), ((1, 1), (1, 1)), precision=HIGH)
    y = jax.nn.relu(y + p["b"][None, :, None, None])
    return jnp.dot(y.reshape(y.shape[0], -1), p["gw"], precision=HIGH) + p["gb"]


def numpy_net(p):
    """The same network in plain NumPy on NHWC batches (the conv as nine shifted products)."""
    def fn(x):
        xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
        y = sum(np.einsum("nhwc,fc->nfhw", xp[:, i:i + H, j:j + W], p["w"][:, :, i, j])
                for i in range(3) for j in range(3))
        y = np.maximum(y + p["b"][None, :, None, None], 0.0)
        return y.reshape(x.shape[0], -1) @ p["gw"] + p["gb"]
    return fn


def torch_net(p):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(C, F, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(F * H * W, K))
    with torch.no_grad():
        net[0].weight.copy_(torch.from_numpy(p["w"]))
        net[0].bias.copy_(torch.from_numpy(p["b"]))
        net[3].weight.copy_(torch.from_numpy(p["gw"].T.copy()))
        net[3].bias.copy_(torch.from_numpy(p["gb"]))
    return net


def onnx_file(p, path, batch="N"):
    """Conv + Relu + Flatten + Gemm with the weights as initializers; batch axis symbolic or fixed."""
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["y"])]
    graph = helper.make_graph(
        nodes, "twin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, C, H, W])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, K])],
        [numpy_helper.from_array(v, k) for k, v in p.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    p = weights()
    rng = np.random.default_rng(1)
    image = rng.normal(size=(H, W, C)).astype(np.float32)
    pool = rng.normal(size=(6, H, W, C)).astype(np.float32)
    path = onnx_file(p, tmp_path_factory.mktemp("onnx") / "twin.onnx")
    boxes = {"numpy": uj.black_box(numpy_net(p), num_classes=K, name="numpy twin"),
             "torch": uj.from_torch(torch_net(p)),
             "onnx": uj.from_onnx(path)}
    return p, image, pool, boxes


def run(clf, image, sampler, chunk=None, num_samples=3):
    return uj.explain(clf, image, window=3, stride=2, sampler=sampler, num_samples=num_samples,
                      key=jax.random.key(7), chunk_size=chunk)


@pytest.mark.parametrize("box", ["numpy", "torch", "onnx"])
def test_black_box_equals_jax_twin_for_each_sampler(setup, box):
    p, image, pool, boxes = setup
    twin = uj.from_function(jax_net, jax.tree.map(jnp.asarray, p))
    fits = {"constant": samplers.constant(0.5), "marginal": samplers.marginal(pool),
            "conditional": samplers.conditional_gaussian(pool, window=3, key=jax.random.key(2), num_patches=500)}
    for name, sampler in fits.items():
        ours, ref = run(boxes[box], image, sampler), run(twin, image, sampler)
        err = float(np.abs(np.asarray(ours.window_probs) - np.asarray(ref.window_probs)).max())
        spread = float(np.ptp(np.asarray(ref.window_probs)))
        assert err <= 1e-5, (box, name, err)
        assert spread > 1e-3, (box, name, spread)  # the windows matter: the comparison is not vacuous
        np.testing.assert_allclose(ours.probs, ref.probs, atol=1e-6)


@pytest.mark.parametrize("box", ["numpy", "torch", "onnx"])
def test_chunk_and_batch_size_do_not_change_the_result(setup, box):
    p, image, pool, boxes = setup
    sampler = samplers.marginal(pool)
    base = run(boxes[box], image, sampler)  # 16 windows × 3 samples in one chunk (compiled above)
    other = run(boxes[box], image, sampler, chunk=5)  # ten chunks, the last one padded
    np.testing.assert_allclose(other.window_probs, base.window_probs, atol=1e-6)
    if box == "numpy":  # pieces of 2 images per call of the function
        small = uj.black_box(numpy_net(p), num_classes=K, batch_size=2)
        np.testing.assert_allclose(run(small, image, sampler).window_probs, base.window_probs, atol=2e-6)


def test_torch_dlpack_hand_over_equals_the_twin(setup):
    """transfer="dlpack": torch reads JAX's buffer and writes JAX's output (here both on CPU)."""
    p, image, _, _ = setup
    twin = uj.from_function(jax_net, jax.tree.map(jnp.asarray, p))
    clf = uj.from_torch(torch_net(p), transfer="dlpack", batch_size=4)
    s = samplers.constant(0.5)
    err = np.abs(np.asarray(run(clf, image, s, chunk=10).window_probs) - np.asarray(run(twin, image, s).window_probs))
    assert err.max() <= 1e-5

    class Picky(torch.nn.Module):
        def forward(self, x):
            if bool((x == 7.0).any()):
                raise RuntimeError("pixel value 7 is out of range")
            return torch_net(p)(x)

    with pytest.raises(ValueError, match=r"black box 'Picky' raised RuntimeError: pixel value 7 is out of range"):
        run(uj.from_torch(Picky(), transfer="dlpack"), image, samplers.constant(7.0), chunk=10)
    with pytest.raises(ValueError, match="transfer"):
        uj.from_torch(torch_net(p), transfer="zero-copy")


def test_onnx_fixed_batch_and_declared_facts(setup, tmp_path):
    p, image, _, _ = setup
    fixed = uj.from_onnx(onnx_file(p, tmp_path / "b1.onnx", batch=4))  # exactly 4 images a call
    assert (fixed.fn.layout, fixed.fn.num_classes, fixed.fn.batch_size) == ("NCHW", K, 4)
    twin = uj.from_function(jax_net, jax.tree.map(jnp.asarray, p))
    s = samplers.constant(0.0)
    err = np.abs(np.asarray(run(fixed, image, s, chunk=7).window_probs) - np.asarray(run(twin, image, s).window_probs))
    assert err.max() <= 1e-5
    with pytest.raises(ValueError, match="contradicts"):
        uj.from_onnx(tmp_path / "b1.onnx", input_layout="NHWC")
    with pytest.raises(FileNotFoundError, match="no ONNX file"):
        uj.from_onnx(tmp_path / "missing.onnx")


def test_black_boxes_are_not_differentiable(setup):
    _, _, _, boxes = setup
    assert all(b.differentiable is False for b in boxes.values())
    assert uj.probabilities(boxes["numpy"]).differentiable is False
    assert uj.from_function(lambda x: x.reshape(x.shape[0], -1)).differentiable is True
    assert uj.classifiers.as_classifier(lambda x: x).differentiable is True


def test_vmap_and_probabilities_outputs(setup):
    p, image, _, _ = setup
    fn = numpy_net(p)
    probs = uj.black_box(lambda x: jax.nn.softmax(fn(x)), num_classes=K, outputs="probs")
    logits = uj.black_box(fn, num_classes=K, outputs="logits")   # .probs directly: no image to decide "auto" on
    x = jnp.asarray(np.stack([image, image * 0.5, -image]))[None].repeat(2, axis=0)  # [2, 3, H, W, C]
    a = jax.vmap(probs.probs)(x)
    b = jax.vmap(logits.probs)(x)
    assert a.shape == (2, 3, K)
    np.testing.assert_allclose(a, b, atol=1e-6)


# ---------------------------------------------------------------------------------------- errors


def boom(x):
    raise ZeroDivisionError("the model server is down")


def test_a_raising_black_box_gives_one_clean_error(setup, caplog):
    _, image, _, _ = setup
    clf = uj.black_box(boom, num_classes=K)
    with pytest.raises(BlackBoxError) as info:
        run(clf, image, samplers.constant(0.0))
    text = "".join(traceback.format_exception(info.value))
    last = text.strip().splitlines()[-1]
    assert last.startswith("undesirable_jax.black_boxes.BlackBoxError: black box 'boom' raised ZeroDivisionError: "
                           "the model server is down"), last
    assert isinstance(info.value.__cause__, ZeroDivisionError)  # the user's own traceback is kept
    for noise in ("JaxRuntimeError", "XlaRuntimeError", "INTERNAL", "pure_callback", "jax/_src"):
        assert noise not in text, noise
    assert not [r for r in caplog.records if "callback" in r.getMessage()]


def test_errors_on_perturbed_images_only(setup):
    """The untouched image passes; a fill the function cannot take fails after the jitted steps."""
    p, image, _, _ = setup
    fn = numpy_net(p)

    def picky(x):
        if np.any(x == 7.0):
            raise RuntimeError("pixel value 7 is out of range")
        return fn(x)

    def nan_on_fill(x):
        out = fn(x)
        out[np.any(x == 7.0, axis=(1, 2, 3))] = np.nan
        return out

    fill = samplers.constant(7.0)
    with pytest.raises(ValueError, match=r"black box 'picky' raised RuntimeError: pixel value 7 is out of range"):
        run(uj.black_box(picky, num_classes=K), image, fill, chunk=5)
    with pytest.raises(ValueError, match=r"black box 'nan_on_fill': returned NaN or inf for 5 of 5 images"):
        run(uj.black_box(nan_on_fill, num_classes=K), image, fill, chunk=5)
    clf = uj.black_box(picky, num_classes=K)
    with pytest.raises(ValueError):
        run(clf, image, fill)
    run(clf, image, samplers.constant(0.0))  # the error was raised once; the classifier works again


def test_host_boxes_are_called_between_the_jitted_steps(setup, monkeypatch):
    """A NumPy, ONNX or host-transfer torch box is called by the engine between its jitted steps (the
    device perturbs chunk k+1 while the host classifies chunk k), never through a callback inside a
    step; a DLPack torch box stays inside. A box that fails on chunk 2 of 8 ends the run there: the
    device has perturbed at most one chunk past it, and the function sees no later chunk."""
    from undesirable_jax import engine

    from undesirable_jax.black_boxes import HostFunction

    p, image, pool, boxes = setup
    handed, real_call = [], HostFunction.call_shards
    monkeypatch.setattr(HostFunction, "call_shards", lambda self, b: handed.append(b.shape[0]) or real_call(self, b))
    for name, box in boxes.items():
        assert box.fn.outside_jit(), name
        handed.clear()
        run(box, image, samplers.marginal(pool), chunk=7)   # 16 windows × 3 samples: 7 chunks of 7
        assert handed == [7] * 7, (name, handed)
    dlpack = uj.from_torch(torch_net(p), transfer="dlpack")
    handed.clear()
    run(dlpack, image, samplers.marginal(pool), chunk=7)
    assert not dlpack.fn.outside_jit() and not handed

    perturbed, calls, fn = [], [], numpy_net(p)
    real_step = engine._host_step
    monkeypatch.setattr(engine, "_host_step", lambda *a, **k: perturbed.append(k["perturb"]) or real_step(*a, **k))

    def second_chunk_fails(x):
        calls.append(x.shape[0])
        if len(calls) == 3:   # the untouched image, chunk 1, then chunk 2
            raise RuntimeError("chunk 2 is one too many")
        return fn(x)

    with pytest.raises(BlackBoxError, match="chunk 2 is one too many"):
        run(uj.black_box(second_chunk_fails, num_classes=K), image, samplers.marginal(pool), chunk=6)
    assert calls == [1, 6, 6] and sum(perturbed) == 3, (calls, perturbed)   # 48 pairs: 8 chunks of 6


@pytest.mark.parametrize("bad, message", [
    (lambda x: np.zeros((x.shape[0], K + 1)), r"returned shape \[1, 6\] for 1 images; expected \[1, 5\]"),
    (lambda x: np.zeros((1, K)) if x.shape[0] > 1 else np.zeros((x.shape[0], K)),
     r"returned shape \[1, 5\] for 8 images; expected \[8, 5\]"),
    (lambda x: np.zeros((x.shape[0], K, 1)), r"returned shape \[1, 5, 1\]"),
    (lambda x: np.full((x.shape[0], K), np.inf), r"returned NaN or inf for 1 of 1 images"),
    (lambda x: np.full((x.shape[0], K), "a"), r"returned dtype <U1"),
])
def test_bad_outputs_give_clear_errors(setup, bad, message):
    _, image, _, _ = setup
    with pytest.raises(ValueError, match=r"black box 'shaky': " + message):
        run(uj.black_box(bad, num_classes=K, name="shaky"), image, samplers.constant(0.0), chunk=9,
            num_samples=1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        uj.black_box(boom, num_classes=0)
    with pytest.raises(ValueError, match="batch_size"):
        uj.black_box(boom, num_classes=3, batch_size=0)
    with pytest.raises(ValueError, match="outputs"):
        uj.black_box(boom, num_classes=3, outputs="softmax")
    with pytest.raises(TypeError, match="fn"):
        uj.black_box("not a function", num_classes=3)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        uj.from_torch(lambda x: x)
    with pytest.raises(ValueError, match="input_layout"):
        uj.from_torch(torch.nn.Linear(2, 2), input_layout="CHW")


# ---------------------------------------------------------------------------------------- devices

DEVICES = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import undesirable_jax as uj
    sys.path.insert(0, sys.argv[1])
    import test_black_box as t

    assert jax.local_device_count() == 4, jax.devices()
    p = t.weights()
    rng = np.random.default_rng(1)
    image = rng.normal(size=(t.H, t.W, t.C)).astype(np.float32)
    pool = rng.normal(size=(6, t.H, t.W, t.C)).astype(np.float32)
    boxes = {"numpy": uj.black_box(t.numpy_net(p), num_classes=t.K), "torch": uj.from_torch(t.torch_net(p)),
             "onnx": uj.from_onnx(t.onnx_file(p, sys.argv[2]))}
    out = {}
    for name, clf in boxes.items():
        kw = dict(window=3, stride=2, sampler=uj.samplers.marginal(pool), num_samples=3, key=jax.random.key(7))
        one = uj.explain(clf, image, chunk_size=8, **kw)
        for chunk in (4, 12):
            many = uj.explain(clf, image, chunk_size=chunk, mesh="local", **kw)
            out[f"{name}/{chunk}"] = float(np.abs(np.asarray(many.window_probs) - np.asarray(one.window_probs)).max())
    try:
        uj.explain(uj.black_box(t.boom, num_classes=t.K), image, chunk_size=8, mesh="local", **kw)
    except ValueError as e:
        out["error"] = str(e)
    print("RESULT" + json.dumps(out))
""")


def test_four_devices_equal_one(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", DEVICES, os.path.dirname(__file__), str(tmp_path / "t.onnx")],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads([line for line in proc.stdout.splitlines() if line.startswith("RESULT")][0][len("RESULT"):])
    errs = {k: v for k, v in out.items() if "/" in k}
    assert len(errs) == 6 and max(errs.values()) < 1e-6, errs
    assert out["error"].startswith("black box 'boom' raised ZeroDivisionError"), out["error"]
    assert "INTERNAL" not in proc.stderr and "callback" not in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------------------------------- CLI

CLI_ARGS = ["explain", "chelsea", "--input-size", "8", "--window", "4", "--stride", "4", "--sampler", "constant",
            "--top-k", "2", "--no-progress"]


def test_cli_explains_with_an_onnx_file(setup, tmp_path, capsys):
    from undesirable_jax import cli

    p = setup[0]
    path = onnx_file(p, tmp_path / "twin.onnx")
    names = tmp_path / "names.txt"
    names.write_text("ant\nbee\ncat\ndog\neel\n")
    code = cli.main(CLI_ARGS[:2] + ["--model", str(path), "--class-names", str(names), "--out-dir", str(tmp_path)]
                    + CLI_ARGS[4:])  # the graph declares 8×8×3: no --input-size needed
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "twin on chelsea: top classes" in out and any(n in out for n in ("ant", "bee", "cat", "dog", "eel"))
    saved = np.load(tmp_path / "chelsea-twin.npz")
    twin = uj.from_function(jax_net, jax.tree.map(jnp.asarray, p))
    np.testing.assert_allclose(saved["probs"], twin.probs(jnp.asarray(saved["image"])[None])[0], atol=1e-6)
    assert saved["window_probs"].shape == (K, 2, 2)

    names.write_text("ant\nbee\n")
    code = cli.main(CLI_ARGS[:2] + ["--model", str(path), "--class-names", str(names), "--out-dir", str(tmp_path)]
                    + CLI_ARGS[4:])
    err = capsys.readouterr().err
    assert code == 2 and "--class-names" in err and "K = 5" in err and len(err.strip().splitlines()) == 1


MODULE = """
import torch


def build():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 8 * 8, 5))
"""


def test_cli_explains_with_a_torch_function(tmp_path, capsys, monkeypatch):
    from undesirable_jax import cli

    (tmp_path / "my_torch_model.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    code = cli.main(CLI_ARGS + ["--model", "torch:my_torch_model:build", "--mean", "127", "127", "127",
                                "--std", "64", "64", "64", "--out-dir", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "class_" in out
    saved = np.load(next(tmp_path.glob("chelsea-*.npz")))
    x = saved["image"]
    raw = uj.data.sample_image("chelsea")
    np.testing.assert_allclose(x, uj.data.Preprocessor(size=(8, 8), resize=9, mean=(127.0,) * 3,  # int(8 / 0.875)
                                                       std=(64.0,) * 3, resample="bilinear")(raw).image)
    sys.modules.pop("my_torch_model", None)
    import my_torch_model

    with torch.inference_mode():
        want = torch.softmax(my_torch_model.build()(torch.from_numpy(x.transpose(2, 0, 1)[None].copy())), -1)
    np.testing.assert_allclose(saved["probs"], want.numpy()[0], atol=1e-6)

    code = cli.main(["explain", "--model", "digits_cnn", "--class-names", "x.txt", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--class-names: only for --model *.onnx or torch:MODULE:FUNCTION" in err


def test_cli_preprocessing_options(tmp_path):
    from undesirable_jax.models.external import ExternalOptions, preprocessor

    spec = tmp_path / "prep.json"
    spec.write_text('{"size": [32, 40], "resize": null, "mean": [0.5], "std": [2.0], "grayscale": true}')
    prep = preprocessor(ExternalOptions(preprocess=spec), None)
    assert (prep.size, prep.resize, prep.mean, prep.std, prep.grayscale) == ((32, 40), None, (0.5,), (2.0,), True)
    over = preprocessor(ExternalOptions(preprocess=spec, input_size=(16,), std=(4.0,)), None)
    assert (over.size, over.std, over.mean) == ((16, 16), (4.0,), (0.5,))
    default = preprocessor(ExternalOptions(), None)
    assert default == uj.data.TORCHVISION
    assert preprocessor(ExternalOptions(), (8, 8, 3)).input_shape == (8, 8, 3)
    with pytest.raises(ValueError, match="declares"):
        preprocessor(ExternalOptions(input_size=(16,)), (8, 8, 3))
    spec.write_text('{"sise": [32, 32]}')
    with pytest.raises(ValueError, match="unknown keys"):
        preprocessor(ExternalOptions(preprocess=spec), None)
