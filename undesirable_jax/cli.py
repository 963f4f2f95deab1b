"""The ``undesirable-jax`` command line: ``explain``, ``evaluate`` and ``benchmark``.

    undesirable-jax explain                      # the embedded default: EfficientNet-Lite0 on a cat
    undesirable-jax explain photo.jpg --window 16 --stride 8 --sampler conditional
    undesirable-jax explain 0.png --model mypkg.models:load --weights my.safetensors
    undesirable-jax explain photo.jpg --model resnet.onnx --class-names classes.txt --window 16 --stride 8
    undesirable-jax evaluate --dataset digits --model digits_cnn --limit 50 --out runs/digits
    undesirable-jax benchmark --model lfw_cnn

Bad input (a missing file, an unknown model, a window larger than the image, …) ends with a one-line
``error:`` message and exit code 2; ``--traceback`` shows the full Python traceback instead. This module
only reads options and prints: models come from :func:`undesirable_jax.models.resolve`, images and data
sets from :mod:`undesirable_jax.data.specs`, samplers from :func:`undesirable_jax.samplers.from_name`,
and an evaluation's processes from :mod:`undesirable_jax.evaluate.orchestrate`.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from . import _cli_options as options, _cli_report as report, checks
from ._cli_options import UsageError

__all__ = ["UsageError", "build_parser", "load_raw_image", "main", "resolve_target", "top_classes"]
_WINDOW = ("--window", "--stride")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its three subcommands (every option has a help text)."""
    return options.build_parser({"explain": run_explain, "evaluate": run_evaluate, "benchmark": run_benchmark})


# ------------------------------------------------------------------------------------------ helpers


def load_raw_image(spec: str, what: str = "image") -> tuple[Any, str]:
    """An image file or offline sample name → (``uint8`` pixels, a short name for outputs)."""
    from .data import resolve_image

    return resolve_image(spec, what)


def resolve_target(target: str | None, class_names: Sequence[str]) -> int | None:
    """``--target``: None, a class id, or a class name (full or its first synonym, case-insensitive)."""
    if target is None:
        return None
    k = len(class_names)
    try:
        t = int(target)
    except ValueError:
        want = target.strip().lower()
        hits = [i for i, n in enumerate(class_names) if want in (n.lower(), n.split(",")[0].strip().lower())]
        if len(hits) != 1:
            close = [n for n in class_names if want in n.lower()][:5]
            raise UsageError(f"--target: {target!r} {'is ambiguous' if hits else 'is not a class name'}"
                             + (f"; did you mean one of {close}?" if close else f"; pass a class id in [0, {k})"))
        return hits[0]
    if not 0 <= t < k:
        raise UsageError(f"--target: class id {t} is outside [0, {k}) for this model")
    return t


def top_classes(probs: Any, class_names: Sequence[str], k: int) -> list[tuple[int, str, float]]:
    """The ``k`` most probable classes as ``(id, name, p)``, ties broken by the lower id."""
    import numpy as np

    from .classifiers import rank_classes

    p = np.asarray(probs, np.float64)
    return [(int(i), str(class_names[i]), float(p[i])) for i in rank_classes(p)[:k]]


def _model(args: argparse.Namespace) -> Any:
    from .models import ExternalOptions, resolve

    return resolve(args.model, args.weights, ExternalOptions(
        class_names=args.class_names, preprocess=args.preprocess, input_size=args.input_size,
        resize=args.resize, mean=args.mean, std=args.std, outputs=args.outputs, input_layout=args.input_layout))


def _outputs_line(declared: str, decided: str, where: str) -> str:
    """What the CLI prints about the classifier's outputs: the given value, or what "auto" decided."""
    return (f"model outputs: {decided} (auto: decided from its output on {where})" if declared == "auto"
            else f"model outputs: {decided}")


def _sampler(args: argparse.Namespace, pool: Callable[[], Any], key: Any) -> Any:
    from .samplers import from_name

    return from_name(args.sampler, pool=pool, window=args.window, key=key, blur_sigma=args.blur_sigma,
                     fill_value=args.fill_value, sampler_file=args.sampler_file)


def _preprocessed(model: Any, raw: Any) -> Any:
    import numpy as np

    return np.asarray(model.preprocess(raw).image, np.float32)


def _status(msg: str, args: argparse.Namespace) -> None:
    if not args.no_progress:
        print(msg, file=sys.stderr, flush=True)


def _mesh(args: argparse.Namespace) -> str | None:
    return None if args.mesh == "none" else "local"


# ------------------------------------------------------------------------------------------ explain


def _explain_setup(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """Checks every ``explain`` option, loads the image and the model; fills the default window/stride."""
    options.check_common(args)
    checks.positive_int("--dpi", args.dpi, maximum=checks.MAX_DPI)
    checks.positive_number("--laplace-n", args.laplace_n)
    checks.output_dir(args.out_dir, "--out-dir")
    folder = Path(args.image).is_dir()
    if folder and (args.budget is not None or args.alpha is not None or args.name is not None):
        raise UsageError("--budget, --alpha, --name: not used when explaining a folder (arrays only, one .npz an "
                         "image); drop them or explain one image")
    raw, image_name = (None, Path(args.image).name) if folder else load_raw_image(args.image)
    model = _model(args)
    args.window = max(1, round(min(model.input_shape[:2]) / 7)) if args.window is None else args.window
    if args.budget is not None and args.stride is not None:
        raise UsageError("--stride: not used with --budget (adaptive windows give a stride-1 map); drop one of them")
    if args.stride is None:
        args.stride = 1 if args.budget is not None else max(1, args.window // 2)
    checks.window(args.window, args.stride, model.input_shape, _WINDOW)
    options.check_budget_alpha(args.budget, args.alpha, args.samples)
    if args.budget is not None:   # it must cover the window grid's corners (the one rule: adaptive.check_budget)
        from .adaptive import check_budget
        from .windows import WindowGrid

        try:
            check_budget(args.budget, *WindowGrid(*model.input_shape[:2], args.window, 1).shape, name="--budget")
        except ValueError as err:
            raise UsageError(str(err)) from None
    args.target = resolve_target(args.target, model.class_names)
    args.top_k = min(3, len(model.class_names) - 1) if args.top_k is None else args.top_k
    if args.top_k > len(model.class_names) - 1:
        raise UsageError(f"--top-k: {args.top_k} competitors asked for, but the model has only "
                         f"{len(model.class_names)} classes; pick --top-k <= {len(model.class_names) - 1}")
    return raw, model, image_name


def _explain(args: argparse.Namespace, classifier: Any, image: Any, sampler: Any, key: Any) -> Any:
    """``explain`` with ``--stride``, or ``explain_adaptive`` with ``--budget``."""
    from .adaptive import explain_adaptive
    from .engine import explain

    common = dict(window=args.window, sampler=sampler, num_samples=args.samples, key=key, chunk_size=args.chunk_size,
                  laplace_n=args.laplace_n, mesh=_mesh(args), progress=not args.no_progress)
    if args.budget is None:
        return explain(classifier, image, stride=args.stride, **common)
    return explain_adaptive(classifier, image, budget=args.budget, **common)


def run_explain(args: argparse.Namespace) -> int:
    """``undesirable-jax explain``: see the subcommand's ``--help``."""
    import jax
    import numpy as np

    from .factors import factors

    t0 = time.perf_counter()
    raw, model, image_name = _explain_setup(args)
    if raw is None:
        return _explain_folder(args, model, t0)
    stem = args.name or f"{image_name}-{model.name.replace(':', '-').replace('.', '-')}"
    paths = [checks.output_file(args.out_dir / f"{stem}.{ext}", "--out-dir") for ext in ("png", "npz")]
    image = _preprocessed(model, raw)
    k_sampler, k_explain = jax.random.split(jax.random.key(args.seed))
    pool_specs = args.pool if args.pool is not None else [s for s in options.sample_names() if s != image_name]
    pool = lambda: np.stack([_preprocessed(model, load_raw_image(s, "--pool")[0]) for s in pool_specs])  # noqa: E731
    _status(f"model {model.name} ({len(model.class_names)} classes, input {model.input_shape}); image {image_name}; "
            f"sampler {args.sampler}, window {args.window}, stride {args.stride}, S={args.samples}", args)
    expl = _explain(args, model.classifier, image, _sampler(args, pool, k_sampler), k_explain)
    f, masked = (factors(expl, target=args.target, top_k=args.top_k, decouple=not args.plain, alpha=alpha)
                 for alpha in (None, args.alpha))
    report.save_explained(args, model, raw, image, expl, f, None if args.alpha is None else masked, image_name, paths)
    report.explained(model, image_name, expl, f, top_classes(expl.probs, model.class_names, args.top_k + 1))
    print(_outputs_line(model.classifier.outputs, expl.outputs, image_name))
    print(f"figure: {paths[0]}\narrays: {paths[1]}\ntime: {time.perf_counter() - t0:.1f} s")
    return 0


def _explain_folder(args: argparse.Namespace, model: Any, t0: float) -> int:
    """``explain DIR``: every image of the folder, ``--batch-images`` per engine call (see ``_cli_folder``)."""
    import jax
    import numpy as np

    from ._cli_folder import explain_folder

    k_sampler, k_explain = jax.random.split(jax.random.key(args.seed))
    pool_specs = args.pool if args.pool is not None else list(options.sample_names())
    pool = lambda: np.stack([_preprocessed(model, load_raw_image(s, "--pool")[0]) for s in pool_specs])  # noqa: E731
    _status(f"model {model.name}; folder {args.image}; sampler {args.sampler}, window {args.window}, stride "
            f"{args.stride}, S={args.samples}, {args.batch_images} images a batch", args)
    written = explain_folder(args, model, _sampler(args, pool, k_sampler), k_explain,
                             lambda raw: _preprocessed(model, raw))
    print(f"arrays: {len(written)} new .npz files in {args.out_dir}\ntime: {time.perf_counter() - t0:.1f} s")
    return 0


# ------------------------------------------------------------------------------------------ evaluate


def run_evaluate(args: argparse.Namespace) -> int:
    """``undesirable-jax evaluate``: see the subcommand's ``--help``."""
    import jax
    import numpy as np

    from . import data
    from .classifiers import resolve_outputs
    from .data.imagenet import ilsvrc_labels
    from .evaluate import orchestrate

    out = options.check_evaluate_args(args)
    share = (orchestrate.join(args.coordinator_address, args.num_processes, args.process_id) if args.distributed
             else orchestrate.Share(args.process_index, args.process_count))
    full, pool_set = data.from_spec(args.dataset, args.split, args.data_dir, name="--dataset")
    dataset = data.Subset(full, args.limit, spread=args.spread)
    if len(dataset) == 0:
        raise UsageError(f"--dataset: {args.dataset!r} split {args.split!r} has no images")
    if args.merge_only:
        paths = orchestrate.merge_only(out, dataset)
        print(f"merged {len(dataset)} results in {out / 'results'}: " + ", ".join(str(p) for p in paths.values()))
        return 0
    orchestrate.claim(out, args.resume, share)
    model = _model(args)
    dataset = data.Subset(ilsvrc_labels(full, model.class_names), args.limit,  # WordNet-id folders: ILSVRC labels
                          spread=args.spread)
    data.check_model_classes(dataset.class_names, model.class_names, dataset=args.dataset, model=model.name,
                             name="--dataset")
    checks.window(args.window, args.stride, model.input_shape, _WINDOW)
    _check_methods_run(args.methods, model)
    pool = lambda: np.stack([_preprocessed(model, pool_set[i].image)  # noqa: E731
                             for i in range(min(args.pool_size, len(pool_set)))])
    sampler = _sampler(args, pool, jax.random.fold_in(jax.random.key(args.seed), 1))
    config, t0 = options.eval_config(args, model.name, pool), time.perf_counter()
    clf = resolve_outputs(model.classifier, _preprocessed(model, dataset[0].image))   # once, for the config record
    print(_outputs_line(model.classifier.outputs, clf.outputs, f"image {dataset[0].id!r}"))
    merged = orchestrate.run_share(out, dataset, clf, config, sampler, share,
                                   preprocess=lambda raw: _preprocessed(model, raw), chunk_size=args.chunk_size,
                                   batch_size=args.batch_size, batch_images=args.batch_images,
                                   progress=not args.no_progress, mesh=_mesh(args))
    report.evaluated(out, config, model.name, time.perf_counter() - t0, merged, share.joined)
    return 0


def _check_methods_run(methods: Sequence[str] | None, model: Any) -> None:
    """Refuse ``--methods`` of which none can run on the model (gradients of a black box), before any work."""
    from .evaluate import METHODS
    from .evaluate.methods import usable

    reasons = [usable(m, model.classifier) for m in (methods or METHODS)]
    if reasons and all(r is not None for r in reasons):
        usable_ones = [m for m in METHODS if usable(m, model.classifier) is None]
        raise UsageError(f"--methods: none of {list(methods or METHODS)} can run on {model.name}: {reasons[0]}; a "
                         f"black box (ONNX, torch) gives no gradients, pick from {usable_ones}")


# ------------------------------------------------------------------------------------------ benchmark


def run_benchmark(args: argparse.Namespace) -> int:
    """``undesirable-jax benchmark``: see the subcommand's ``--help``."""
    import jax
    import numpy as np

    from .throughput import engine_throughput

    options.check_common(args)
    if args.json is not None:
        checks.output_file(args.json, "--json")
    model = _model(args)
    checks.window(args.window, args.stride, model.input_shape, _WINDOW)
    raw, image_name = load_raw_image(args.image, "--image")
    key = jax.random.key(args.seed)
    pool = lambda: np.stack([_preprocessed(model, load_raw_image(s)[0])  # noqa: E731
                             for s in options.sample_names() if s != image_name])
    sampler = _sampler(args, pool, jax.random.fold_in(key, 1))
    _status(f"benchmark: {model.name}, input {model.input_shape}, window {args.window}, stride {args.stride}, "
            f"{args.sampler} ×{args.samples}, chunk {args.chunk_size}, {args.rounds} rounds", args)
    r = engine_throughput(model.classifier, _preprocessed(model, raw), sampler, window=args.window,
                          stride=args.stride, num_samples=args.samples, chunk_size=args.chunk_size,
                          rounds=args.rounds, key=key, progress=not args.no_progress)
    return report.benchmarked(args, model, r)


# ------------------------------------------------------------------------------------------ main


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input (files, options, models): one ``error:`` line, exit code 2.

    ``OSError`` covers unreadable, unwritable and missing files (Pillow's ``UnidentifiedImageError``
    is one); ``DecompressionBombError`` is Pillow's refusal of a huge image.
    """
    from PIL import Image

    return (UsageError, ValueError, TypeError, OSError, ImportError, pickle.UnpicklingError,
            Image.DecompressionBombError)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``undesirable-jax`` and ``python -m undesirable_jax``; returns the exit code."""
    from . import compile_cache

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        compile_cache.enable(compile_cache.folder_option(args.compile_cache))
        with _one_line_warnings(args.command):
            return int(args.run(args))
    except _input_errors() as e:
        if args.traceback:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"undesirable-jax {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.traceback:
            raise
        print(f"undesirable-jax {args.command}: interrupted", file=sys.stderr)
        return 130


def _one_line_warnings(command: str) -> Any:
    """A context in which the package's preprocessing warnings print as one ``warning:`` line."""
    import contextlib
    import warnings

    from .data.preprocess import PreprocessWarning

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if issubclass(category, PreprocessWarning):
            print(f"undesirable-jax {command}: warning: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    return stack


if __name__ == "__main__":
    sys.exit(main())
