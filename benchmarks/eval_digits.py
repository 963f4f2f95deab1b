"""Our metric (after Kang et al.) on the shipped digits CNN: every held-out digit plus noisy, blurred and
occluded copies (``digits+corrupt``: 1440 images, 20-40 % errors on the copies), PDA against every baseline.

    .venv/bin/python benchmarks/eval_digits.py            # appends the tables to benchmarks/HISTORY.md
    .venv/bin/python benchmarks/eval_lfw.py               # the same on lfw+corrupt (this script, --set lfw)

The held-out split is ``data.digits("test")`` (every fifth digit, never trained on); the corruption
levels are ``data.CORRUPTIONS["digits"]``. PDA: window 2, stride 1, 10 samples from a conditional
Gaussian fitted on the training digits. Occlusion: the same windows filled with 0 (the background).
RISE: 500 masks of 4×4 cells over sampler fills. With ``--set lfw``: ``lfw+corrupt`` (160 faces and
non-faces), the lfw CNN, window 4, RISE cells 5, other settings alike. Scoring: ROAD (``--perturbation``) with 4 draws whose
keys no method was built with, 3 seeds averaged per image; every method is also scored under its own
construction perturbation. ``--sanity-images`` images, spread over source digits and corruption types
(:func:`undesirable_jax.evaluate.runner.sanity_ids`), run the sanity checks. The run resumes
if interrupted; the wall time of a resumed run counts only the images it computed.
"""

from __future__ import annotations

import argparse
import json
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


SETS = {"digits": dict(window=2, cells=4, sanity=50), "lfw": dict(window=4, cells=5, sanity=20)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=tuple(SETS), default="digits")
    p.add_argument("--out", default=None, help="default /tmp/uj_eval_<set>")
    p.add_argument("--limit", type=int, default=None, help="only the first LIMIT images (a quick look)")
    p.add_argument("--window", type=int, default=None, help="default: 2 for digits, 4 for lfw")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--rise-masks", type=int, default=500)
    p.add_argument("--perturbation", choices=ev.PERTURBATIONS, default="road")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--draws", type=int, default=4)
    p.add_argument("--sanity-images", type=int, default=None, help="default: 50 for digits, 20 for lfw")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-append", action="store_true")
    args = p.parse_args()
    spec = SETS[args.set]
    args.out = args.out or f"/tmp/uj_eval_{args.set}"
    args.window = args.window or spec["window"]
    args.sanity_images = spec["sanity"] if args.sanity_images is None else args.sanity_images
    model = models.load(f"{args.set}_cnn")
    loader = getattr(data, args.set)

    def prep(raw):
        return np.asarray(model.preprocess(raw).image, np.float32)

    dataset = data.corrupted(loader("test"), data.CORRUPTIONS[args.set])
    n = len(dataset) if args.limit is None else min(args.limit, len(dataset))
    subset = [dataset[i] for i in range(n)]
    train = np.stack([prep(ex.image) for ex in loader("train")])
    sampler = conditional_gaussian(train, window=args.window, key=jax.random.key(args.seed),
                                   preprocessing=f"{args.set}_cnn: grey /255")
    config = ev.EvalConfig(model=f"{args.set}_cnn", window=args.window, stride=args.stride, num_samples=args.samples,
                           seed=args.seed, rise_masks=args.rise_masks, rise_cells=spec["cells"],
                           top_k=min(3, len(loader("test").class_names) - 1),
                           perturbation=args.perturbation, scoring_value=float(train.mean()),
                           scoring_draws=args.draws, num_seeds=args.seeds, sanity_images=args.sanity_images,
                           dataset=f"{args.set}+corrupt:test {data.CORRUPTIONS[args.set]}" + (
                               f"[:{n}]" if args.limit else ""))
    t0, c0 = time.perf_counter(), time.process_time()
    ev.run(args.out, subset, model.classifier, config, sampler, preprocess=prep)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    out = Path(args.out)
    results = ev.runner.load_results(out)
    cfg = json.loads((out / "config.json").read_text())
    comp = ev.summary.comparison_rows(results, cfg)
    family = ev.summary.family_lines(comp, ev.summary.findings_family(cfg))
    pda_rows = ev.summary.comparisons_markdown(comp, cfg, only="pda", family=family)
    body = "\n".join([(out / "summary.md").read_text(), "Rows with PDA (all pairs: comparisons.md):\n",
                      pda_rows, (out / "sanity.md").read_text()])
    wrong = sum(1 for r in results if r["prediction"] != r["label"])
    notes = (f"{n} images ({wrong} misclassified); wall {wall:.0f} s, CPU {cpu:.0f} s for this invocation "
             f"({_common.load_note()} at the end; a resumed run counts only the images it computed). "
             f"Output folder: {args.out}.")
    scored = "" if args.perturbation == "road" else f" with the {args.perturbation} perturbation instead of ROAD"
    _common.report(f"Evaluation: {args.set} CNN on {args.set}+corrupt, independent scoring{scored} "
                   "(our metric, after Kang et al.)",
                   body, append=not args.no_append, notes=notes)


if __name__ == "__main__":
    main()
