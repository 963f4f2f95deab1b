"""Black boxes through the engine: what the host hand-over costs, and a torchvision ResNet-18 vs Captum.

(1) Overhead. The engine's perturbed images/s with ``uj.black_box(numpy_fn)`` (a NumPy MLP),
``uj.from_onnx(path)`` (a small CNN on 8×8 digits-sized images, written here with ``onnx.helper``) and
``uj.from_torch(module)`` (a small PyTorch CNN) ÷ the same function's own rate on ready batches of
the chunk size (NumPy array in its layout / torch tensor on its device), for the same number of images;
each for one image (``explain``) and for ``--batch-images`` images (``--digits-images`` for ONNX)
(``explain_batch``, one image's fixed costs shared by the batch). The chunk is the engine's default for
host boxes (``engine.default_chunk``: 32 MiB of images a step) unless ``--small-chunk`` says otherwise.
Target ≥ 0.8 on CPU. "Called inside the step" is the same box called through ``jax.pure_callback``
inside the jitted step, as the engine did before it called host boxes between its steps ("between ÷
inside": the gain, in one run). "Engine alone" is the same run around a function that returns zeros at once: the
engine's own work (perturbing, hand-over, accumulating, preparing and assembling); "ceiling without
overlap" = own ÷ (own + alone), what the ratio can reach where the engine's work and the function's
share the same cores (a CPU); on a GPU the device perturbs the next chunk while the host classifies.

(2) ResNet-18 (torchvision's architecture and parameter names, built by ``bench_captum.torch_resnet``:
the torchvision wheel on PyPI is linked against CUDA and does not load with the CPU build of torch;
random weights, the last layer scaled so logits on a random image have std ≈ 3) at 224², window 16, stride 8, constant 0 fill, through
``uj.from_torch`` against Captum's ``Occlusion`` (batched: ``perturbations_per_eval`` = chunk) on the
same module. Check: Captum's attribution for the top class = ``grid.to_pixels(p_t − window_probs_t)``
to 1e-5. Speed: Captum's wall time for one target class ÷ ours for all 1000 classes at once
(target ≥ 1.0; Captum needs one pass per class).

Rounds are interleaved and the best of each kept (the machine is shared). ``--device``: where torch
runs (auto: cuda when available); on a GPU JAX must run there too for the DLPack hand-over.
``--smoke``: the same code paths at tiny sizes, no HISTORY.md entry.

    .venv/bin/python benchmarks/bench_black_box.py               # CPU, appends to HISTORY.md
    .venv/bin/python benchmarks/bench_black_box.py --smoke        # a quick check
    .venv/bin/python benchmarks/bench_black_box.py --device cuda  # on a GPU machine
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np

import undesirable_jax as uj

from _common import TORCH_HINT, block, load_note, random_resnet, report, table, wall_cpu
from bench_captum import torch_resnet

OVERHEAD_TARGET, CAPTUM_TARGET = 0.8, 1.0


def import_torch(captum: bool):
    """``(torch, captum.attr or None)`` or exit with the install command (captum only for ``--parts captum``)."""
    try:
        import torch
        attr = None
        if captum:
            from captum import attr
    except ImportError as e:
        raise SystemExit(f"bench_black_box needs torch{' and captum' if captum else ''} ({e}).\n{TORCH_HINT}\n"
                         "(or: pip install -e '.[bench]')")
    return torch, attr


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_rounds(fns: dict[str, Any], rounds: int) -> dict[str, np.ndarray]:
    """Best (wall, CPU) seconds of each function over interleaved rounds."""
    best = {k: np.full(2, np.inf) for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            best[k] = np.minimum(best[k], np.asarray(wall_cpu(fn)))
    return best


def timed(fn: Any) -> tuple[Any, np.ndarray]:
    """``fn()``'s result (blocked) and its (wall, CPU) seconds."""
    c0, t0 = time.process_time(), time.perf_counter()
    out = block(fn())
    return out, np.asarray([time.perf_counter() - t0, time.process_time() - c0])


def numpy_mlp(size: int, hidden: int, classes: int, seed: int = 0):
    """A two-layer NumPy MLP on flattened [N, size, size, 3] images (the host function of row 1)."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(size * size * 3, hidden)).astype(np.float32) / np.sqrt(size * size * 3)
    w2 = rng.normal(size=(hidden, classes)).astype(np.float32) / np.sqrt(hidden)

    def mlp(x):
        return np.maximum(x.reshape(x.shape[0], -1) @ w1, 0.0) @ w2
    return mlp


def torch_cnn(torch, classes: int):
    """A small CNN (3×3 convs 16-32-64, stride 1-2-2, ReLU, mean pool, linear) in PyTorch."""
    nn = torch.nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(64, classes)).eval()


def digits_onnx(path: Path, seed: int = 0) -> Path:
    """A small ONNX CNN for 8×8 grey digits-sized images (conv 16, conv 32 stride 2, linear 10; random
    weights), written with ``onnx.helper``: the ONNX row's host model."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {"w1": rng.normal(size=(16, 1, 3, 3)) / 3, "w2": rng.normal(size=(32, 16, 3, 3)) / 12,
               "w3": rng.normal(size=(32 * 4 * 4, 10)) / 22}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h1"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["h2"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["h2"], ["r2"]), helper.make_node("Flatten", ["r2"], ["f"]),
             helper.make_node("MatMul", ["f", "w3"], ["y"])]
    graph = helper.make_graph(nodes, "digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def overhead_case(desc: str, clf: Any, own: Any, images: np.ndarray, args, *, window: int, stride: int,
                  chunk: int | None) -> list[Any]:
    """One row: the engine (``explain`` for one image, ``explain_batch`` for several) ÷ ``own(batch)``, the
    host function on ready batches of the engine's chunk (layout already the function's), same images."""
    n, size = images.shape[0], images.shape[1]
    grid = uj.WindowGrid(size, images.shape[2], window, stride)
    pairs = n * grid.num_windows * args.samples
    chunk = uj.engine.plan_chunk(chunk, pairs, 1, default=uj.engine.default_chunk(clf, images.shape[1:]))
    calls = -(-pairs // chunk)
    scale = pairs / (calls * chunk)
    batch = np.asarray(jax.random.normal(jax.random.key(2), (chunk, *images.shape[1:])))
    ready = own.prepare(batch)
    kw = dict(window=window, stride=stride, sampler=uj.samplers.marginal(images[:1].repeat(8, 0) * 0.5),
              num_samples=args.samples, key=jax.random.key(0), chunk_size=chunk)

    def run(box):
        if n == 1:
            return uj.explain(box, images[0], **kw).evidence
        return uj.explain_batch(box, images, **kw).evidence

    def raw():
        return [own(ready) for _ in range(calls)][-1]

    fns = {"raw": raw, "engine": lambda: run(clf)}
    host = clf.fn
    if host.outside_jit():   # the engine's own work: the same steps around a function that returns zeros at once
        k = host.classes_for(tuple(host.device_input(jnp.zeros((1, *images.shape[1:]))).shape[1:]))
        zeros = uj.black_boxes.HostFunction(lambda x: np.zeros((x.shape[0], k), np.float32), name="zeros",
                                            num_classes=k, layout=host.layout)
        alone = uj.black_boxes.host_classifier(zeros, "logits")
        fns["alone"] = lambda: run(alone)
        inside = copy.copy(host)   # the same function called through pure_callback inside the jitted step
        inside.outside_jit = lambda: False
        in_step = clf.replace(fn=inside)
        fns["inside"] = lambda: run(in_step)
    for fn in fns.values():
        block(fn())  # compile
    t = best_rounds(fns, args.rounds)
    ratio = t["raw"] * scale / t["engine"]
    own_s = t["raw"][0] * scale
    alone = [pairs / t["alone"][0], own_s / (own_s + t["alone"][0])] if "alone" in t else ["—", "—"]
    inside = [pairs / t["inside"][0], t["inside"][0] / t["engine"][0]] if "inside" in t else ["—", "—"]
    return [desc, f"{size}²", n, pairs, chunk, pairs / own_s, pairs / t["engine"][0], *inside, *alone, ratio[0],
            ratio[1], "met" if ratio[0] >= OVERHEAD_TARGET else "MISSED"]


class Own:
    """A host function's own call on a ready batch: ``prepare`` puts the batch in its layout (and device)."""

    def __init__(self, fn: Any, prepare: Any):
        self.fn, self.prepare = fn, prepare

    def __call__(self, batch: Any) -> Any:
        return self.fn(batch)


def overhead_rows(args, torch, device) -> list[list[Any]]:
    """Row set (1): engine ÷ the host function's own batched rate (one image, and a batch of images)."""
    import onnxruntime as ort

    size, window, stride = args.small_size, args.small_window, args.small_stride
    rgb = np.asarray(jax.random.normal(jax.random.key(1), (args.batch_images, size, size, 3)))
    grey = np.asarray(jax.random.normal(jax.random.key(3), (args.digits_images, 8, 8, 1)))
    mlp = numpy_mlp(size, args.hidden, 10)
    cnn = torch_cnn(torch, 10).to(device)
    onnx_path = digits_onnx(Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_digits_{os.getpid()}.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def torch_own(x):
        with torch.inference_mode():
            out = cnn(x)
        sync(torch, device)
        return out

    nchw = lambda b: np.ascontiguousarray(b.transpose(0, 3, 1, 2))  # noqa: E731
    own_mlp = Own(mlp, lambda b: b)
    own_onnx = Own(lambda x: session.run(None, {"x": x})[0], nchw)
    own_torch = Own(torch_own, lambda b: torch.from_numpy(nchw(b)).to(device))
    boxes = [(f"black_box(NumPy MLP {size * size * 3}-{args.hidden}-10)", uj.black_box(mlp, num_classes=10), own_mlp, rgb,
              window, stride),
             ("from_onnx(digits CNN 8×8, CPU)", uj.from_onnx(onnx_path, providers=["CPUExecutionProvider"]), own_onnx,
              grey, 2, 1),
             (f"from_torch(CNN 16-32-64, {device.type}, transfer=host)", uj.from_torch(cnn, transfer="host"), own_torch,
              rgb, window, stride)]
    if (jax.default_backend() == "gpu") == (device.type == "cuda"):  # DLPack needs both on the same kind
        boxes.append((f"from_torch(CNN 16-32-64, {device.type}, transfer=dlpack)", uj.from_torch(cnn, transfer="dlpack"),
                      own_torch, rgb, window, stride))
    rows = []
    for desc, clf, own, images, win, st in boxes:
        for n in (1, images.shape[0]):
            rows.append(overhead_case(desc, clf, own, images[:n], args, window=win, stride=st, chunk=args.small_chunk))
    onnx_path.unlink()
    return rows


def resnet18(torch, classes: int, size: int, device):
    """ResNet-18 in PyTorch, torchvision layout, random weights (``_common.random_resnet``), the last
    layer scaled ×3 so the probabilities of the 1000 classes differ between windows."""
    variables = random_resnet(18, jax.random.key(4), classes, size)
    net = torch_resnet(torch, variables, 18).to(device)
    with torch.inference_mode():
        net.fc.weight.mul_(3.0)
    return net


def captum_rows(args, torch, captum_attr, device) -> list[list[Any]]:
    """Row set (2): ResNet-18 through from_torch, all classes, against Captum Occlusion for one."""
    size, window, stride, chunk = args.size, args.window, args.stride, args.chunk
    if (size - window) % stride:
        raise SystemExit(f"--size {size} − --window {window} must be divisible by --stride {stride} so Captum "
                         "and the engine use the same windows")
    image = np.asarray(jax.random.normal(jax.random.key(3), (size, size, 3)))
    net = resnet18(torch, args.classes, size, device)
    x = torch.from_numpy(image.transpose(2, 0, 1)[None].copy()).to(device)
    clf = uj.from_torch(net)
    grid = uj.WindowGrid(size, size, window, stride)

    def ours():
        return uj.explain(clf, image, window=window, stride=stride, sampler=uj.samplers.constant(0.0),
                          num_samples=1, key=jax.random.key(0), chunk_size=chunk)

    occ = captum_attr.Occlusion(lambda v: torch.softmax(net(v), dim=-1))

    def captum(target: int):
        with torch.inference_mode():
            out = occ.attribute(x, sliding_window_shapes=(3, window, window), strides=(3, stride, stride),
                                baselines=0.0, target=target, perturbations_per_eval=chunk)
        sync(torch, device)
        return out

    # Compile our jitted steps first with a stand-in module of the same output shape (the JAX side does
    # not depend on what the module computes), so no ResNet pass is spent on warming up; then the
    # first run of each is timed too: on 2 shared cores every ResNet pass counts.
    forward = clf.fn.fn
    forward.module = lambda v: torch.zeros(v.shape[0], args.classes, device=v.device)
    block(ours())
    forward.module = net
    ex, first_ours = timed(ours)
    t = int(np.argmax(np.asarray(ex.probs)))
    cap, first_captum = timed(lambda: captum(t))
    mine = np.asarray(grid.to_pixels(ex.probs[t] - ex.window_probs[t]))
    theirs = cap.cpu().numpy()[0].transpose(1, 2, 0)  # [H, W, C], the same value in each channel
    err, scale = float(np.abs(theirs - mine[..., None]).max()), float(np.abs(mine).max())
    times = best_rounds({"captum": lambda: captum(t), "ours": ours}, args.rounds - 1)
    times = {"captum": np.minimum(times["captum"], first_captum), "ours": np.minimum(times["ours"], first_ours)}
    speed = times["captum"] / times["ours"]
    return [[f"ResNet-18 (torchvision layout, random) {size}², {device.type}", grid.num_windows, chunk, args.classes,
             f"{err:.1e} (max |attr| {scale:.2g}) {'ok' if err <= 1e-5 else 'FAIL'}", times["captum"][0],
             times["ours"][0], speed[0], speed[1], "met" if speed[0] >= CAPTUM_TARGET else "MISSED"]]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="torch device: auto (cuda when available), cpu or cuda")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one round, no HISTORY.md entry")
    p.add_argument("--parts", nargs="+", default=["overhead", "captum"], help="overhead and/or captum")
    p.add_argument("--size", type=int, default=224, help="ResNet-18 input side")
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--stride", type=int, default=8)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--chunk", type=int, default=64, help="engine chunk = Captum perturbations_per_eval")
    p.add_argument("--small-size", type=int, default=32, help="image side of the overhead rows")
    p.add_argument("--small-window", type=int, default=4)
    p.add_argument("--small-stride", type=int, default=2)
    p.add_argument("--small-chunk", type=int, default=None,
                   help="engine chunk = raw batch of the overhead rows (default: the engine's default for host boxes)")
    p.add_argument("--batch-images", type=int, default=16, help="images of the explain_batch overhead rows")
    p.add_argument("--digits-images", type=int, default=256,
                   help="images of the ONNX digits explain_batch row (8×8 images: cheap, so more of them)")
    p.add_argument("--samples", type=int, default=4, help="samples per window in the overhead rows")
    p.add_argument("--hidden", type=int, default=512, help="hidden width of the NumPy MLP")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best kept)")
    p.add_argument("--no-append", action="store_true", help="print only")
    args = p.parse_args(argv)
    if args.smoke:
        args.size, args.window, args.stride, args.classes, args.chunk = 64, 16, 16, 1000, 16
        args.small_size, args.samples, args.rounds, args.no_append, args.batch_images = 16, 2, 1, True, 3
        args.digits_images = 6
    torch, captum_attr = import_torch("captum" in args.parts)
    want = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device.replace("auto", "cpu")
    device = torch.device(want)
    tf32 = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    if device.type == "cuda":
        # JAX must not take 75 % of the GPU up front when torch shares it (read when JAX's backend starts),
        # and float32 means float32 (TF32 convolutions would differ by more than the 1e-5 check).
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        run_parts(args, torch, captum_attr, device)
    finally:  # gpu_all.py runs the benchmarks in one process: leave torch as it was
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def run_parts(args, torch, captum_attr, device) -> None:
    """Each part's table; an error in one ends the script as a SystemExit naming the part (its
    traceback printed), so that gpu_all.py records it and goes on with the other benchmarks."""
    import traceback

    if device.type == "cuda" and jax.default_backend() != "gpu":
        print(f"note: JAX runs on {jax.default_backend()}, so batches reach torch through host memory, not DLPack")
    notes = (f"Best of {args.rounds} interleaved rounds ({load_note()} at the end); torch threads "
             f"{torch.get_num_threads()}, torch device {device}, JAX backend {jax.default_backend()}.")
    versions = ("torch", "captum")
    parts = {"overhead": (overhead_rows, (torch, device)), "captum": (captum_rows, (torch, captum_attr, device))}
    for part in args.parts:
        if part not in parts:
            raise SystemExit(f"--parts: unknown part {part!r}; use overhead and/or captum")
        fn, extra = parts[part]
        try:
            rows = fn(args, *extra)
        except Exception as e:  # noqa: BLE001 - reported with its traceback, then a SystemExit
            traceback.print_exc()
            raise SystemExit(f"bench_black_box {part}: {type(e).__name__}: {e}") from e
        if part == "overhead":
            headers = ["host function", "image", "images", "pairs", "chunk", "own img/s", "engine img/s",
                       "called inside the step img/s", "between ÷ inside", "engine alone img/s",
                       "ceiling without overlap", "engine ÷ own (wall)", "engine ÷ own (CPU)",
                       f"≥ {OVERHEAD_TARGET} wall"]
            title = (f"bench_black_box: engine with a host black box ÷ the function's own batched rate "
                     f"(window {args.small_window}, stride {args.small_stride}, marginal ×{args.samples})")
        else:
            headers = ["model", "windows", "chunk = ppe", "classes (ours)", "attribution Δ vs Captum",
                       "Captum s (1 class)", "ours s (all classes)", "Captum ÷ ours (wall)", "Captum ÷ ours (CPU)",
                       f"≥ {CAPTUM_TARGET} wall"]
            title = (f"bench_black_box: from_torch ResNet-18 vs Captum Occlusion (window {args.window}, stride "
                     f"{args.stride}, constant 0, S=1)")
        report(title, table(headers, rows), append=not args.no_append, extra_versions=versions, notes=notes)


if __name__ == "__main__":
    main()
