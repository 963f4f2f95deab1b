"""What the ``undesirable-jax`` subcommands write and print once their work is done."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def save_explained(args: argparse.Namespace, model: Any, raw: Any, image: Any, expl: Any, f: Any, masked: Any,
                   image_name: str, paths: list[Path]) -> None:
    """The factor figure (PNG) and every array (npz) of one ``explain`` run; ``masked``: the factors
    with the not-significant pixels set to 0 (``--alpha``), hatched in the figure."""
    import numpy as np

    from . import io
    from .data import Preprocessor
    from .visualize import factor_figure, save_figure

    shown = model.preprocess.display(raw) if isinstance(model.preprocess, Preprocessor) else image
    fig = factor_figure(shown, f if masked is None else masked, [n.split(",")[0].strip() for n in model.class_names],
                        unmasked=None if masked is None else f,
                        title=f"{model.name} on {image_name}: {_settings_title(args, expl)}")
    save_figure(fig, paths[0], dpi=args.dpi)
    io.save_npz(paths[1], **explanation_arrays(args, model, image, expl, f),
                non_target_probs=f.non_target_probs,
                budget=np.nan if args.budget is None else args.budget,
                alpha=np.nan if args.alpha is None else args.alpha,
                significant_target=np.full(f.target.shape, True) if masked is None else
                np.asarray(masked.target) >= np.asarray(f.target))


def explanation_arrays(args: argparse.Namespace, model: Any, image: Any, expl: Any, f: Any) -> dict[str, Any]:
    """The arrays and settings every ``explain`` ``.npz`` holds (one image, or each image of a folder)."""
    import numpy as np

    return dict(image=image, evidence=expl.evidence, probs=expl.probs, classes=expl.classes,
                coverage=expl.coverage, window_probs=expl.window_probs, evidence_se=expl.evidence_se,
                window_samples=expl.window_samples, target_class=f.target_class, target=f.target,
                non_target_classes=f.non_target_classes, non_target=f.non_target, combined=f.combined,
                window=args.window, stride=args.stride, num_samples=args.samples, seed=args.seed,
                decoupled=not args.plain, model=model.name, sampler=args.sampler,
                class_names=np.asarray(model.class_names), outputs=expl.outputs)


def _settings_title(args: argparse.Namespace, expl: Any) -> str:
    import numpy as np

    how = (f"stride {args.stride}" if args.budget is None else
           f"adaptive {int(np.sum(np.asarray(expl.window_samples) > 0))}/{expl.grid.num_windows} positions")
    hatch = "" if args.alpha is None else f"; hatched: not significant at {args.alpha:g}"
    return f"window {args.window}, {how}, {args.sampler} ×{args.samples}{hatch}"


def explained(model: Any, image_name: str, expl: Any, f: Any, top: list[tuple[int, str, float]]) -> None:
    """The top classes, the target and its competitors of one ``explain`` run."""
    import numpy as np

    print(f"{model.name} on {image_name}: top classes")
    for rank, (cid, name, p) in enumerate(top, 1):
        print(f"  {rank}. {name} (class {cid}): p = {p:.4g}")
    t = int(f.target_class)
    print(f"target: {model.class_names[t]} (class {t}); competitors: "
          + ", ".join(f"{model.class_names[c].split(',')[0]} ({c})" for c in np.asarray(f.non_target_classes)))


def evaluated(out: Path, config: Any, model_name: str, seconds: float, merged: bool, joined: bool) -> None:
    """Where an ``evaluate`` run's results and summary are, or what is left to do."""
    done = len(list((out / "results").glob("*.json")))
    print(f"evaluated {config.dataset} with {model_name}: {done} result files in {out / 'results'} "
          f"({seconds:.1f} s)")
    if merged:
        print(f"summary: {out / 'summary.md'}, {out / 'summary.csv'}, {out / 'removal_gain.png'}, "
              f"{out / 'comparisons.md'}, {out / 'sanity.md'}")
    elif not joined:
        print("several processes: once all have finished, run the same command with --merge-only")


def benchmarked(args: argparse.Namespace, model: Any, r: Any) -> int:
    """The throughput table (and JSON); exit code 1 when the engine failed its correctness check."""
    import jax

    from . import io

    print(f"| {model.name} {model.input_shape[0]}×{model.input_shape[1]} | value |\n|---|---|")
    for k, v in r.rows():
        print(f"| {k} | {v} |")
    if args.json is not None:
        io.write_json(args.json, r.record() | {"model": model.name, "window": args.window, "stride": args.stride,
                                               "samples": args.samples, "sampler": args.sampler,
                                               "device": str(jax.devices()[0])})
        print(f"json: {args.json}")
    if not r.ok:
        print(f"error: the engine disagrees with hand-built perturbed images (max |Δp| = {r.check_error:.1e})",
              file=sys.stderr)
        return 1
    return 0
