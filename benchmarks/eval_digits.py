"""Our metric (after Kang et al.) on the shipped digits CNN: all misclassified held-out digits plus the
first N correctly classified ones, U_t (PDA) against every baseline.

    .venv/bin/python benchmarks/eval_digits.py            # appends the tables to benchmarks/RESULTS.md

The held-out split is ``data.digits("test")`` (every fifth digit, never trained on). PDA: window 2,
stride 1, 10 samples from a conditional Gaussian fitted on the training digits (padding 2); removal in
the metrics fills with the same sampler (tiles of 2×2 conditioned on their surround). Occlusion: the
same windows filled with 0 (the background), one sample. The run resumes if interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

from undesirable_jax import data, models  # noqa: E402
from undesirable_jax import evaluate as ev  # noqa: E402
from undesirable_jax.conditional import conditional_gaussian  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="/tmp/uj_eval_digits")
    p.add_argument("--num-correct", type=int, default=200)
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--rise-masks", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()

    model = models.load("digits_cnn")

    def prep(raw):
        return np.asarray(model.preprocess(raw).image, np.float32)

    test = data.digits("test")
    x = np.stack([prep(ex.image) for ex in test])
    pred = np.asarray(model.classifier.probs(x)).argmax(1)
    wrong = [ex for ex, p_ in zip(test, pred) if p_ != ex.label]
    right = [ex for ex, p_ in zip(test, pred) if p_ == ex.label][: args.num_correct]
    subset = wrong + right
    train = np.stack([prep(ex.image) for ex in data.digits("train")])
    sampler = conditional_gaussian(train, window=args.window, key=jax.random.key(args.seed),
                                   preprocessing="digits_cnn: grey /255")
    config = ev.EvalConfig(model="digits_cnn", window=args.window, stride=args.stride,
                           num_samples=args.samples, seed=args.seed, rise_masks=args.rise_masks,
                           rise_cells=4, top_k=3,
                           dataset=f"digits:test:{len(wrong)} misclassified + first {len(right)} correct")
    t0, c0 = time.perf_counter(), time.process_time()
    ev.run(args.out, subset, model.classifier, config, sampler, preprocess=prep)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    body = (Path(args.out) / "summary.md").read_text()
    notes = (f"{len(subset)} images ({len(wrong)} misclassified of {len(test)} held-out digits); "
             f"wall {wall:.0f} s, CPU {cpu:.0f} s for this invocation ({_common.load_note()}; a resumed run "
             f"counts only the images it computed). Output folder: {args.out}.")
    _common.report("Evaluation: digits CNN, U_t vs baselines (our metric, after Kang et al.)", body,
                   append=not args.no_append, notes=notes)


if __name__ == "__main__":
    main()
