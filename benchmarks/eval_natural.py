"""Our metric (after Kang et al.) on EfficientNet-Lite0 (ImageNet weights) over the offline natural images,
U_t (PDA) against every baseline.

    .venv/bin/python benchmarks/eval_natural.py            # appends the tables to benchmarks/HISTORY.md

The images (``data.SAMPLE_IMAGES``: chelsea, coffee, astronaut, rocket, china, flower, grace_hopper) carry
no ImageNet label, so the target t of each is the model's own top-1 class: every image counts as
"correct" and the correction rate is n/a. PDA: window 16, stride 16 on 224², blur sampler (σ = 10 px,
deterministic, so one sample). Occlusion: the same windows filled with 0 (mid-grey after the model's
normalisation), one sample. Scoring: ROAD with draws no method was built with (``--draws``, ``--seeds``),
and each method again under its own construction perturbation. With n = 7 this is a qualitative
example, not a test; one seed, one draw and curves at f = 0, ½, 1 keep it to minutes, since ROAD's
conjugate-gradient solve on 224² removed regions costs more than a forward pass. Settings are kept small so the run takes minutes on 2 CPU cores; a full PDA
(window 10, stride 1, conditional sampler) is a GPU job.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from undesirable_jax import data, models, samplers  # noqa: E402
from undesirable_jax import evaluate as ev  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/uj_eval_natural")
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--stride", type=int, default=16)
    p.add_argument("--sigma", type=float, default=10.0)
    p.add_argument("--samples", type=int, default=1)
    p.add_argument("--rise-masks", type=int, default=200)
    p.add_argument("--curve-steps", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--draws", type=int, default=1)
    p.add_argument("--perturbation", choices=ev.PERTURBATIONS, default="road")
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()

    model = models.load("efficientnet_lite0")

    def prep(raw):
        return np.asarray(model.preprocess(raw).image, np.float32)

    raws = {name: data.sample_image(name) for name in data.SAMPLE_IMAGES}
    x = np.stack([prep(r) for r in raws.values()])
    top1 = np.asarray(model.classifier.probs(x)).argmax(1)
    images = [data.Example(id=name, image=raw, label=int(t)) for (name, raw), t in zip(raws.items(), top1)]
    config = ev.EvalConfig(model="efficientnet_lite0", window=args.window, stride=args.stride,
                           num_samples=args.samples, seed=args.seed, rise_masks=args.rise_masks,
                           curve_steps=args.curve_steps, dataset="sample images (target = top-1 prediction)",
                           num_seeds=args.seeds, scoring_draws=args.draws, perturbation=args.perturbation)
    t0, c0 = time.perf_counter(), time.process_time()
    ev.run(args.out, images, model.classifier, config, samplers.blur(args.sigma), preprocess=prep, batch_size=32,
           chunk_size=196)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    body = (Path(args.out) / "summary.md").read_text()
    names = ", ".join(f"{e.id} → {model.class_names[e.label]}" for e in images)
    notes = (f"Targets (top-1): {names}. Wall {wall:.0f} s, CPU {cpu:.0f} s for this invocation "
             f"({_common.load_note()}). Output folder: {args.out}.")
    _common.report("Evaluation: EfficientNet-Lite0 on the sample images, independent ROAD scoring "
                   "(our metric, after Kang et al.)", body, append=not args.no_append, notes=notes)


if __name__ == "__main__":
    main()
