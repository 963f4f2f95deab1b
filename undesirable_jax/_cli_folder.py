"""``undesirable-jax explain DIR``: every image of a folder (and its subfolders), many images per step.

Images are listed recursively in sorted order of their paths relative to ``DIR``; image number ``i``
of that list is explained with the key ``fold_in(key, i)`` (:func:`undesirable_jax.explain_batch`'s
``indices``), so its result does not depend on ``--batch-images`` or on which images a resumed run still
had to do. Each image gets one ``.npz`` (arrays only, no figure: a figure per image of a data set costs
more than its PDA at coarse windows); an image whose ``.npz`` exists is skipped, so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def folder_images(root: Path) -> list[Path]:
    """The image files under ``root`` (recursively, :func:`.data.datasets.image_files`), sorted by path; an
    error when there are none."""
    from .data.datasets import IMAGE_SUFFIXES, image_files

    files = image_files(root)
    if not files:
        raise ValueError(f"image: the folder {str(root)!r} holds no image files ({', '.join(IMAGE_SUFFIXES)}); "
                         "pass a folder of images or one image file")
    return files


def output_name(root: Path, path: Path, model_name: str) -> str:
    """``<relative path with / as __, no suffix>-<model>.npz``: one distinct file per image."""
    rel = path.relative_to(root).with_suffix("")
    return "__".join(rel.parts) + "-" + model_name.replace(":", "-").replace(".", "-") + ".npz"


def explain_folder(args: argparse.Namespace, model: Any, sampler: Any, key: Any, preprocess: Any) -> list[Path]:
    """Explain every image of ``args.image`` not yet done; returns the ``.npz`` paths written."""
    import numpy as np
    from tqdm.auto import tqdm

    from .data import resolve_image
    from .engine import explain_batch

    root = Path(args.image)
    files = folder_images(root)
    outs = [args.out_dir / output_name(root, f, model.name) for f in files]
    todo = [i for i, o in enumerate(outs) if not o.exists()]
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    bar = tqdm(total=len(files), initial=len(files) - len(todo), desc="images", unit="image",
               disable=args.no_progress)
    for start in range(0, len(todo), args.batch_images):
        part = todo[start:start + args.batch_images]
        images = np.stack([preprocess(resolve_image(str(files[i]), "image")[0]) for i in part])
        expl = explain_batch(model.classifier, images, window=args.window, stride=args.stride, sampler=sampler,
                             num_samples=args.samples, key=key, chunk_size=args.chunk_size,
                             laplace_n=args.laplace_n, indices=part, mesh=None if args.mesh == "none" else "local")
        for i, image, one in zip(part, images, expl.unstack()):
            _save(args, model, files[i], image, one, outs[i], i)
            written.append(outs[i])
            bar.update(1)
    bar.close()
    return written


def _save(args: argparse.Namespace, model: Any, path: Path, image: Any, expl: Any, out: Path, index: int) -> None:
    """One image's arrays and its factors (no new forward pass), written atomically (a resumed run never
    finds half a file)."""
    from . import io
    from ._cli_report import explanation_arrays
    from .factors import factors

    f = factors(expl, target=args.target, top_k=args.top_k, decouple=not args.plain)
    io.save_npz(out, **explanation_arrays(args, model, image, expl, f), index=index, source=str(path))
