"""All benchmarks for ResNet-50 (random weights) at 224² in bfloat16 on one GPU, in about 5 minutes.

Runs, in this order, with settings sized for one GPU (each appends its table to RESULTS.md with the
device name): ``bench_engine`` (raw vs engine, constant / marginal / conditional fills),
``bench_plain_loop`` (original-style loop, same three fills), ``bench_captum`` (Captum Occlusion with a
PyTorch twin of the same ResNet-50 and weights; needs a CUDA build of torch, skipped with a message
otherwise) and ``bench_memory`` (1 000 vs 50 000 windows in fresh processes). Prints the wall time
of each part and of the whole run against the 5-minute budget.

``--smoke``: the same code paths at tiny sizes (ResNet-50 at 32², few windows, no RESULTS.md entry),
so the script can be checked on a CPU in a few minutes.

    .venv/bin/python benchmarks/gpu_all.py            # on a GPU machine
    .venv/bin/python benchmarks/gpu_all.py --smoke    # anywhere, as a check
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax

BUDGET_S = 300


def plan(smoke: bool, append: bool) -> list[tuple[str, list[str]]]:
    """``(module, argv)`` for each benchmark."""
    na = [] if append else ["--no-append"]
    if smoke:
        common = ["--size", "32", "--rounds", "1", *na]
        return [
            ("bench_engine", ["--models", "resnet50", "--dtypes", "bfloat16", "--samplers", "constant",
                              "marginal", "conditional", "--window", "4", "--stride", "4", "--samples", "2",
                              "--chunk", "16", *common]),
            ("bench_plain_loop", ["--model", "resnet50", "--dtype", "bfloat16", "--samplers", "constant",
                                  "marginal", "conditional", "--window", "4", "--stride", "4", "--samples", "2",
                                  "--windows-per-batch", "8", *common]),
            ("bench_captum", ["--model", "resnet50", "--dtype", "bfloat16", "--window", "4", "--stride", "4",
                              "--chunk", "16", *common]),
            ("bench_memory", ["--model", "resnet50", "--dtype", "bfloat16", "--size", "32", "--window", "4",
                              "--strides", "4", "1", "--chunk", "16", *na]),
        ]
    return [
        ("bench_engine", ["--models", "resnet50", "--size", "224", "--dtypes", "bfloat16", "--samplers",
                          "constant", "marginal", "conditional", "--window", "10", "--stride", "4",
                          "--samples", "4", "--chunk", "1024", "--rounds", "3", *na]),
        ("bench_plain_loop", ["--model", "resnet50", "--size", "224", "--dtype", "bfloat16", "--samplers",
                              "constant", "marginal", "conditional", "--window", "10", "--stride", "8",
                              "--samples", "10", "--windows-per-batch", "100", "--rounds", "2", *na]),
        ("bench_captum", ["--model", "resnet50", "--size", "224", "--dtype", "bfloat16", "--window", "16",
                          "--stride", "8", "--chunk", "1024", "--rounds", "2", *na]),
        ("bench_memory", ["--model", "resnet50", "--dtype", "bfloat16", "--size", "234", "--window", "10",
                          "--strides", "7", "1", "--chunk", "1024", *na]),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes, no RESULTS.md entries (a CPU check)")
    p.add_argument("--no-append", action="store_true", help="print only")
    p.add_argument("--only", nargs="+", default=None, help="run only these benchmarks (module names)")
    args = p.parse_args(argv)
    platform = jax.devices()[0].platform
    if platform != "gpu" and not args.smoke:
        print(f"warning: JAX runs on {platform}, not a GPU; the full sizes take long here (use --smoke)")
    t_all = time.perf_counter()
    timings, failures = [], []
    for name, sub_argv in plan(args.smoke, append=not (args.smoke or args.no_append)):
        if args.only and name not in args.only:
            continue
        if name == "bench_captum" and platform == "gpu":
            try:
                import torch
                cuda = torch.cuda.is_available()
            except ImportError:
                cuda = False
            if not cuda:
                print("skipping bench_captum: JAX is on a GPU but torch has no CUDA; install a CUDA build "
                      "of torch 2.13.0 and captum==0.9.0 to compare on the same card")
                continue
        print(f"\n=== {name} {' '.join(sub_argv)}", flush=True)
        t0 = time.perf_counter()
        try:
            __import__(name).main(sub_argv)
        except SystemExit as e:  # a missing optional dependency or a failed child
            failures.append(f"{name}: {e}")
            print(f"{name} stopped: {e}")
        timings.append((name, time.perf_counter() - t0))
    total = time.perf_counter() - t_all
    print("\n| benchmark | seconds |\n|---|---|")
    for name, secs in timings:
        print(f"| {name} | {secs:.1f} |")
    print(f"| total | {total:.1f} (budget {BUDGET_S} s on one GPU: "
          f"{'within' if total <= BUDGET_S else 'OVER'}) |")
    if failures:
        print("failures:\n  " + "\n  ".join(failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
