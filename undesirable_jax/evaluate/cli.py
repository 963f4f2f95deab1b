"""One command for an evaluation run: ``python -m undesirable_jax.evaluate --model … --out …``.

Examples (nothing is downloaded; the data must be on disk)::

    # ImageNet validation from a prepared tfds directory (array_record format)
    python -m undesirable_jax.evaluate --model efficientnet_lite0 --tfds imagenet2012 --split validation \\
        --data-dir ~/tensorflow_datasets --out runs/lite0 --window 16 --stride 8 --samples 1 --sampler blur
    # a folder of images, one sub-folder per class (ImageNet synset folders sort into class order)
    python -m undesirable_jax.evaluate --model resnet50 --weights resnet50.pth --image-folder val/ \\
        --out runs/r50 --window 10 --stride 5 --samples 4 --sampler marginal --pool 16

Re-running the same command resumes; ``--process-index/--process-count`` split the images over
processes (then run once more with ``--merge-only`` to check completeness and write the summary).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Sequence

import jax
import numpy as np

from .. import samplers
from .metrics import DEFAULT_PERCENTS
from .runner import METHODS, EvalConfig, merge, run

SAMPLERS = ("constant", "blur", "marginal", "conditional")


class Subset:
    """The first ``limit`` examples of ``dataset`` (random access when the set has it)."""

    def __init__(self, dataset: Any, limit: int):
        self.dataset, self.limit = dataset, min(limit, len(dataset))
        self.class_names = getattr(dataset, "class_names", ())

    def __len__(self) -> int:
        return self.limit

    def __iter__(self):
        for i, ex in enumerate(self.dataset):
            if i >= self.limit:
                return
            yield ex


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m undesirable_jax.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a name from undesirable_jax.models.MODEL_NAMES")
    p.add_argument("--weights", default=None, help="local weights file (default: the model's own)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--tfds", help="a prepared tfds data set, e.g. imagenet2012")
    src.add_argument("--image-folder", help="root/<class>/<images>")
    src.add_argument("--builtin", choices=("digits", "lfw"), help="a built-in labelled set")
    p.add_argument("--split", default=None, help="tfds split (default validation) or built-in split (test)")
    p.add_argument("--data-dir", default=None, help="tfds data directory (default $TFDS_DATA_DIR)")
    p.add_argument("--limit", type=int, default=None, help="only the first N images")
    p.add_argument("--out", required=True, help="output folder (resumes when it holds a run)")
    p.add_argument("--window", type=int, required=True)
    p.add_argument("--stride", type=int, required=True)
    p.add_argument("--samples", type=int, default=4, help="PDA samples per window")
    p.add_argument("--sampler", choices=SAMPLERS, default="blur")
    p.add_argument("--fill-value", type=float, default=0.0, help="constant sampler and occlusion fill")
    p.add_argument("--sigma", type=float, default=5.0, help="blur sampler sigma in pixels")
    p.add_argument("--pool", type=int, default=16,
                   help="marginal/conditional: the first N images of the set form the pool / fit data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {METHODS}")
    p.add_argument("--percents", default=",".join(f"{q:g}" for q in DEFAULT_PERCENTS))
    p.add_argument("--rise-masks", type=int, default=500)
    p.add_argument("--removal-samples", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=None)
    p.add_argument("--process-index", type=int, default=0)
    p.add_argument("--process-count", type=int, default=1)
    p.add_argument("--merge-only", action="store_true", help="check completeness and write the summary")
    p.add_argument("--no-progress", action="store_true")
    return p


def load_dataset(args: argparse.Namespace) -> tuple[Any, str]:
    """The data set and its label for the configuration."""
    from .. import data

    if args.tfds:
        split = args.split or "validation"
        ds, label = data.tfds_source(args.tfds, split, args.data_dir), f"tfds:{args.tfds}:{split}"
    elif args.image_folder:
        ds, label = data.image_folder(args.image_folder), f"folder:{args.image_folder}"
    else:
        split = args.split or "test"
        ds, label = getattr(data, args.builtin)(split), f"{args.builtin}:{split}"
    if args.limit is not None:
        if args.limit < 1:
            raise SystemExit(f"--limit: expected a positive number of images, got {args.limit}")
        ds, label = Subset(ds, args.limit), f"{label}:first{args.limit}"
    return ds, label


def make_sampler(args: argparse.Namespace, dataset: Any, preprocess) -> samplers.Sampler:
    """The sampler the flags ask for (pool and fit images: the first ``--pool`` images of the set)."""
    if args.sampler == "constant":
        return samplers.constant(args.fill_value)
    if args.sampler == "blur":
        return samplers.blur(args.sigma)
    pool = np.stack([preprocess(ex.image) for ex in Subset(dataset, args.pool)])
    if args.sampler == "marginal":
        return samplers.marginal(pool)
    from ..conditional import conditional_gaussian

    return conditional_gaussian(pool, window=args.window, key=jax.random.key(args.seed),
                                preprocessing=f"{args.model} preprocessing")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from .. import models

    loaded = models.load(args.model, weights=args.weights)
    dataset, label = load_dataset(args)

    def preprocess(raw):
        return np.asarray(loaded.preprocess(raw).image, np.float32)

    config = EvalConfig(
        model=args.model if args.weights is None else f"{args.model}:{args.weights}", window=args.window,
        stride=args.stride, num_samples=args.samples, seed=args.seed, dataset=label,
        methods=tuple(m for m in args.methods.split(",") if m),
        percents=tuple(float(q) for q in args.percents.split(",") if q), rise_masks=args.rise_masks,
        removal_samples=args.removal_samples, occlusion_value=args.fill_value)
    if args.merge_only:
        paths = merge(args.out, [ex.id for ex in dataset])
    else:
        sampler = make_sampler(args, dataset, preprocess)
        run(args.out, dataset, loaded.classifier, config, sampler, preprocess=preprocess,
            process_index=args.process_index, process_count=args.process_count, chunk_size=args.chunk_size,
            batch_size=args.batch_size, progress=not args.no_progress)
        if args.process_count > 1:
            print(f"process {args.process_index}/{args.process_count} done; when all are, run again with "
                  "--merge-only to write the summary")
            return 0
        paths = {k: v for k, v in zip(("markdown", "csv", "plot"),
                                      (f"{args.out}/summary.md", f"{args.out}/summary.csv",
                                       f"{args.out}/removal_gain.png"))}
    with open(paths["markdown"], encoding="utf-8") as f:
        print(f.read())
    print("written:", ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
