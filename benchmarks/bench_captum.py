"""The engine against Captum's Occlusion on the same small CNN with the same weights (issue 8).

The Flax small CNN (benchmarks/_common.py) is ported to PyTorch weight by weight (HWIO → OIHW
kernels, transposed dense), and its outputs are checked to agree. Captum's ``Occlusion`` with a
constant baseline slides a (C, k, k) window with strides (C, s, s) and, for one target class, gives
each pixel the mean over the windows covering it of p_t(x) − p_t(x with the window set to the
baseline). Our engine with ``constant`` fill and S = 1 gives ``window_probs``; the same per-pixel
quantity is ``grid.to_pixels(p_t − window_probs_t)``, checked against Captum's attribution.
Captum's windows sit at 0, s, 2s, … ≤ H − k only, so the script requires (H − k) divisible by s
(then both use the same windows). Captum attributes one target class per run; the engine gives
every class at once.

Rates: perturbed images per second (Captum: windows / seconds per ``attribute`` call, with
``perturbations_per_eval`` = 1, Captum's default, and = the chunk size; engine: windows / seconds per ``explain`` call), and
the raw JAX and PyTorch classifiers' images/s on batches of the chunk size.

torch and captum are optional: ``.venv/bin/pip install torch==2.13.0 captum==0.9.0``.

    .venv/bin/python benchmarks/bench_captum.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np

import undesirable_jax as uj

from _common import (TORCH_HINT, block, cast_classifier, load_note, random_resnet, report, small_cnn, table,
                     wall_cpu)

TARGET = 3.0  # engine ≥ 3× Captum's perturbations/s on CPU (≥ 5× on a GPU)


def import_torch():
    """``(torch, captum.attr)`` or exit with the install command."""
    try:
        import torch
        from captum import attr
    except ImportError as e:
        raise SystemExit(f"bench_captum needs torch and captum ({e}).\n{TORCH_HINT}")
    return torch, attr


def torch_small_cnn(torch, variables: Any, widths=(16, 32, 64)):
    """The PyTorch twin of ``_common.small_cnn`` carrying the Flax ``variables``' weights (NCHW)."""
    nn = torch.nn
    params = variables["params"]
    layers: list[Any] = []
    cin = np.asarray(params["Conv_0"]["kernel"]).shape[2]
    for i, w in enumerate(widths):
        conv = nn.Conv2d(cin, w, 3, stride=1 if i == 0 else 2, padding=1)
        conv.weight.data = torch.from_numpy(np.asarray(params[f"Conv_{i}"]["kernel"]).transpose(3, 2, 0, 1).copy())
        conv.bias.data = torch.from_numpy(np.asarray(params[f"Conv_{i}"]["bias"]).copy())
        layers += [conv, nn.ReLU()]
        cin = w
    dense = nn.Linear(cin, np.asarray(params["Dense_0"]["kernel"]).shape[1])
    dense.weight.data = torch.from_numpy(np.asarray(params["Dense_0"]["kernel"]).T.copy())
    dense.bias.data = torch.from_numpy(np.asarray(params["Dense_0"]["bias"]).copy())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.head = dense

        def forward(self, x):
            return self.head(self.features(x).mean(dim=(2, 3)))

    return Net().eval()


def torch_resnet(torch, variables: Any, depth: int = 50):
    """A torchvision-layout ResNet in PyTorch (no torchvision needed) carrying the Flax ``variables``
    of :mod:`undesirable_jax.models.resnet` (names mapped with its torchvision naming)."""
    from flax import traverse_util

    from undesirable_jax.models import resnet as R

    nn = torch.nn
    stages, bottleneck = R.DEPTHS[depth]

    class Block(nn.Module):
        def __init__(self, cin, features, stride):
            super().__init__()
            out = features * (4 if bottleneck else 1)
            if bottleneck:
                self.conv1 = nn.Conv2d(cin, features, 1, bias=False)
                self.conv2 = nn.Conv2d(features, features, 3, stride, 1, bias=False)
                self.conv3 = nn.Conv2d(features, out, 1, bias=False)
                self.bn3 = nn.BatchNorm2d(out)
            else:
                self.conv1 = nn.Conv2d(cin, features, 3, stride, 1, bias=False)
                self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
            self.bn1, self.bn2 = nn.BatchNorm2d(features), nn.BatchNorm2d(features)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))
                               if stride != 1 or cin != out else None)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            if bottleneck:
                y = torch.relu(self.bn2(self.conv2(y)))
                y = self.bn3(self.conv3(y))
            else:
                y = self.bn2(self.conv2(y))
            return torch.relu((x if self.downsample is None else self.downsample(x)) + y)

    class Net(nn.Module):
        def __init__(self, num_classes):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            cin = 64
            for s, blocks in enumerate(stages):
                layers = []
                for i in range(blocks):
                    layers.append(Block(cin, 64 * 2 ** s, 2 if (i == 0 and s > 0) else 1))
                    cin = 64 * 2 ** s * (4 if bottleneck else 1)
                setattr(self, f"layer{s + 1}", nn.Sequential(*layers))
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.nn.functional.max_pool2d(x, 3, 2, 1)
            for s in range(len(stages)):
                x = getattr(self, f"layer{s + 1}")(x)
            return self.fc(x.mean(dim=(2, 3)))

    flat = traverse_util.flatten_dict({k: v for k, v in variables.items()})
    sd = {}
    for path, w in flat.items():
        w = np.asarray(w, np.float32)
        if path[-1] == "kernel":
            w = w.transpose(3, 2, 0, 1) if w.ndim == 4 else w.T
        sd[R._torch_name(path[0], path[1:])] = torch.from_numpy(np.array(w))
    net = Net(int(np.asarray(variables["params"]["fc"]["bias"]).shape[0]))
    missing, unexpected = net.load_state_dict(sd, strict=False)
    if unexpected or any(not m.endswith("num_batches_tracked") for m in missing):
        raise SystemExit(f"ResNet port: missing {missing[:5]}, unexpected {unexpected[:5]}")
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = R.BN_EPS
    return net.eval()


def main(argv: list[str] | None = None) -> list[list[Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cnn", help="cnn (small CNN) or resnet18/34/50 (random weights)")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16 (both frameworks)")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--window", type=int, default=4)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--chunk", type=int, default=256, help="engine chunk = Captum perturbations_per_eval")
    p.add_argument("--captum-ppe", type=int, nargs="+", default=None,
                   help="Captum perturbations_per_eval values (default: 1, Captum's default, and the chunk)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best kept)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args(argv)
    torch, captum_attr = import_torch()
    if args.threads:
        torch.set_num_threads(args.threads)
    if (args.size - args.window) % args.stride:
        raise SystemExit(f"--size {args.size} − --window {args.window} must be divisible by --stride "
                         f"{args.stride} so Captum and the engine use the same windows")

    key = jax.random.key(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    if args.model == "cnn":
        module = small_cnn(args.classes)
        variables = module.init(key, jnp.zeros((1, args.size, args.size, args.channels)))
        clf32 = uj.flax_linen(module, variables)
        clf = cast_classifier(clf32, args.dtype)
        net32 = torch_small_cnn(torch, variables)
        desc = f"small CNN 16-32-64 ({args.size}²×{args.channels}, K={args.classes})"
    elif args.model.startswith("resnet"):
        from undesirable_jax.models import resnet as R

        depth = int(args.model[len("resnet"):])
        args.channels = 3
        variables = random_resnet(depth, key, args.classes, args.size)
        clf32 = uj.from_function(R.ResNetApply(depth, args.classes), variables)
        clf = uj.from_function(R.ResNetApply(depth, args.classes, args.dtype), variables)
        net32 = torch_resnet(torch, variables, depth)
        desc = f"ResNet-{depth}, random weights ({args.size}²×3, K={args.classes})"
    else:
        raise SystemExit(f"--model: cnn or resnet18/34/50, got {args.model!r}")
    import copy

    net32 = net32.to(device=device)
    net = copy.deepcopy(net32).to(dtype=tdtype)
    image = np.asarray(jax.random.normal(jax.random.fold_in(key, 1), (args.size, args.size, args.channels)))
    x32 = torch.from_numpy(image.transpose(2, 0, 1)[None].copy()).to(device=device)
    x_t = x32.to(dtype=tdtype)
    grid = uj.WindowGrid(args.size, args.size, args.window, args.stride)
    n_win = grid.num_windows
    chunk = min(args.chunk, n_win)
    sampler = uj.samplers.constant(0.0)
    explain = lambda c: uj.explain(c, jnp.asarray(image), window=args.window, stride=args.stride,
                                   sampler=sampler, num_samples=1, key=jax.random.key(0), chunk_size=chunk)
    run_engine = lambda: explain(clf)

    def occlusion(model, x, target, ppe):
        occ = captum_attr.Occlusion(lambda v: torch.softmax(model(v).float(), dim=-1))
        with torch.inference_mode():
            out = occ.attribute(x, sliding_window_shapes=(args.channels, args.window, args.window),
                                strides=(args.channels, args.stride, args.stride), baselines=0.0,
                                target=target, perturbations_per_eval=ppe)
            if device == "cuda":
                torch.cuda.synchronize()
            return out

    # Correctness, in float32 whatever --dtype (bf16 rounding swamps small probability differences):
    # same logits, and Captum's attribution = the engine's per-window differences spread to pixels.
    with torch.inference_mode():
        logits_t = net32(x32).cpu().numpy()[0]
    logits_j = np.asarray(clf32(jnp.asarray(image)[None]))[0]
    model_err = float(np.abs(logits_t - logits_j).max() / max(1.0, np.abs(logits_j).max()))
    ex = block(explain(clf32))
    target = int(np.argmax(np.asarray(ex.probs)))
    ppes = sorted({1, chunk}) if args.captum_ppe is None else args.captum_ppe
    ours = np.asarray(grid.to_pixels(ex.probs[target] - ex.window_probs[target]))
    attr_err = 0.0
    for ppe in ppes:
        cap = occlusion(net32, x32, target, ppe).cpu().numpy()[0].transpose(1, 2, 0)  # [H, W, C]
        attr_err = max(attr_err, float(np.abs(cap - ours[..., None]).max()))
    attr_scale = float(np.abs(ours).max())
    ok = model_err <= 1e-4 and attr_err <= 1e-5 + 1e-4 * attr_scale
    block(run_engine())

    def forward(x):
        return torch.softmax(net(x).float(), dim=-1)

    def run_captum(ppe: int):
        return occlusion(net, x_t, target, ppe)

    f = jax.jit(lambda c, b: c.probs(b))
    batch_j = jax.random.normal(jax.random.fold_in(key, 2), (chunk, args.size, args.size, args.channels))
    batch_t = torch.from_numpy(np.asarray(batch_j).transpose(0, 3, 1, 2).copy()).to(device=device, dtype=tdtype)
    n_batches = -(-n_win // chunk)
    block(f(clf, batch_j))

    def raw_torch():
        with torch.inference_mode():
            for _ in range(n_batches):
                out = forward(batch_t)
            if device == "cuda":
                torch.cuda.synchronize()
        return None

    names = [f"captum{ppe}" for ppe in ppes] + ["engine", "raw_jax", "raw_torch"]
    t = {k: np.full(2, np.inf) for k in names}
    for _ in range(args.rounds):
        for ppe in ppes:
            t[f"captum{ppe}"] = np.minimum(t[f"captum{ppe}"], wall_cpu(lambda: run_captum(ppe)))
        t["engine"] = np.minimum(t["engine"], wall_cpu(run_engine))
        t["raw_jax"] = np.minimum(t["raw_jax"], wall_cpu(lambda: [f(clf, batch_j) for _ in range(n_batches)][-1]))
        t["raw_torch"] = np.minimum(t["raw_torch"], wall_cpu(raw_torch))
    rate = {k: (n_win if k.startswith("captum") or k == "engine" else n_batches * chunk) / v
            for k, v in t.items()}
    rows = []
    for ppe in ppes:
        speed = rate["engine"] / rate[f"captum{ppe}"]
        verdict = (f"≥{TARGET:g}×: wall {'met' if speed[0] >= TARGET else 'MISSED'}, "
                   f"CPU {'met' if speed[1] >= TARGET else 'MISSED'}")
        rows.append([f"{desc} {args.dtype}", chunk, ppe, n_win,
                     f"f32: rel. logits Δ {model_err:.1e}; attribution Δ {attr_err:.1e} (max abs {attr_scale:.2g}) "
                     f"{'ok' if ok else 'FAIL'}",
                     rate["raw_torch"][0], rate[f"captum{ppe}"][0], rate["raw_jax"][0], rate["engine"][0],
                     rate[f"captum{ppe}"][0] / rate["raw_torch"][0], speed[0], speed[1], verdict])
    headers = ["model", "engine chunk", "Captum perturbations_per_eval", "windows",
               "same model, same attribution?", "raw torch img/s", "Captum Occlusion pert/s",
               "raw JAX img/s", "engine pert/s", "Captum ÷ raw torch", "engine ÷ Captum (wall)",
               "engine ÷ Captum (CPU time)", "target"]
    title = (f"bench_captum: engine vs Captum Occlusion ({args.size}², window {args.window}, stride "
             f"{args.stride}, constant 0, S=1, one target for Captum, all {args.classes} classes for the engine)")
    notes = (f"Best of {args.rounds} interleaved rounds ({load_note()} at the end); torch threads "
             f"{torch.get_num_threads()}, torch device {device}. Captum's attribution per pixel = mean over covering windows of "
             "p_t(x) − p_t(x with window = 0), compared with `grid.to_pixels(probs[t] − window_probs[t])`.")
    report(title, table(headers, rows), append=not args.no_append, extra_versions=("torch", "captum"),
           notes=notes)
    return rows


if __name__ == "__main__":
    main()
