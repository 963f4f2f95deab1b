"""Resumable evaluation runs over a data set: one result file per image, a merge step, a summary.

Layout of an output folder::

    <out>/config.json              the run's configuration (refuses a resume that differs)
    <out>/results/<image>.json     one per finished image, written atomically as it finishes
    <out>/summary.md, summary.csv  means and 95 % confidence intervals per method and q
    <out>/removal_gain.png         removal gain against q, both orders
    <out>/comparisons.md, .csv     paired per-image differences: every method vs every other, zero, random
    <out>/sanity.md, .csv          sanity checks (parameter randomisation, random logit) of the sanity images

Every result file holds the image's ``cluster`` (its source image, the unit of the paired statistics)
and ``group`` (its kind, e.g. the corruption) from the data set's example (a record without them: its
own id and ``"all"``). Folders written before these fields existed are refused (``results_format`` in
``config.json`` differs, and :func:`~.rundir.read_result` names a result file that lacks them): rerun
into a new folder. The images that also run the sanity checks are chosen by :func:`sanity_ids`, a rule
over ids, clusters and groups only, so every process of a split run agrees.

Re-running the same command skips the images whose result file exists, so a crash loses nothing
finished. Work is split over processes by the image's position in the data set
(``index % process_count == process_index``), and every image's randomness comes from the run seed
and the image id through the disjoint streams of :mod:`.keys` (maps built from ``build``, scoring
draws from ``score``, tie-breaks from ``rank``), so any split gives exactly the results of one process; :func:`merge` then checks
that every expected id has exactly one result and writes the summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import checks, io
from ..black_boxes import model_identity
from ..classifiers import Classifier, as_classifier, rank_classes, raw_output, resolve_outputs
from ..samplers import Sampler
from ..windows import WindowGrid
from . import rundir, summary
from .keys import part_keys, stream_key
from .methods import BATCH_BUILDERS, BUILDERS, BuildContext, SignedMaps, usable
from .methods import check_settings as check_methods
from .passes import image_passes, score_passes
from .metrics import DEFAULT_PERCENTS, image_probs, rankings, score_own, score_rankings
from .ranking import positive_count
from .removal import Perturbation, fill_image

METHODS = tuple(BUILDERS)
"""``pda``: −R_t and U_c of the explanation; the others: :mod:`.baselines` (see :mod:`.methods`)."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What a run computes; stored as ``config.json`` and compared on resume.

    ``window``, ``stride``, ``num_samples``: the PDA settings (occlusion uses the same window and
    stride). ``dataset``: a label for the data set (checked on resume like everything else).
    Scoring: ``perturbation`` (``road``, ``constant`` or ``blur``; see :class:`.removal.Perturbation`)
    with ``road_noise``, ``scoring_value`` (the constant, usually the data mean) and ``scoring_sigma``
    (the blur); ``scoring_draws`` independent draws averaged per removal. ``num_seeds``: repeats of
    every method's construction and scoring, each from its own keys. ``sanity_images``: images (spread
    over clusters and groups by :func:`sanity_ids`) that also get the parameter-randomisation and
    random-logit checks.
    The methods' own settings (checked by :func:`.methods.check_settings`): ``ig_steps`` (integrated
    gradients' trapezoid steps), ``smoothgrad_samples`` and ``smoothgrad_sigma`` (noise σ as a fraction
    of the image's value range), ``sobol_grid`` (cells per side) and ``sobol_designs`` (a power of 2),
    ``control_sigma`` (the blurred −x control's blur).
    """

    model: str
    window: int
    stride: int
    num_samples: int = 10
    seed: int = 0
    dataset: str = ""
    methods: tuple[str, ...] = METHODS
    percents: tuple[float, ...] = DEFAULT_PERCENTS
    curve_steps: int = 10
    top_k: int = 3
    decouple: bool = True
    occlusion_value: float = 0.0
    rise_masks: int = 500
    rise_cells: int = 7
    laplace_n: float = 100_000
    perturbation: str = "road"
    road_noise: float = 0.01
    scoring_value: float = 0.0
    scoring_sigma: float = 1.0
    scoring_draws: int = 4
    num_seeds: int = 3
    sanity_images: int = 0
    ig_steps: int = 32
    smoothgrad_samples: int = 32
    smoothgrad_sigma: float = 0.15
    sobol_grid: int = 4
    sobol_designs: int = 32
    control_sigma: float = 1.0

    def __post_init__(self):
        for name in ("window", "stride", "num_samples", "curve_steps", "top_k", "rise_masks", "rise_cells",
                     "scoring_draws", "num_seeds"):
            checks.positive_int(name, getattr(self, name), maximum=None)
        for name in ("seed", "sanity_images"):
            checks.integer(name, getattr(self, name), minimum=0)
        methods = tuple(self.methods)
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown or len(set(methods)) != len(methods):
            raise ValueError(f"methods: expected distinct names from {METHODS}, got {self.methods!r}")
        object.__setattr__(self, "methods", methods)
        pct = tuple(float(q) for q in self.percents)
        if not pct or any(not (0 < q <= 100) for q in pct):
            raise ValueError(f"percents: expected percentages in (0, 100], got {self.percents!r}")
        object.__setattr__(self, "percents", pct)
        self.scoring()   # validates the perturbation's settings
        check_methods(self)

    def scoring(self) -> Perturbation:
        """The common scoring perturbation of this configuration."""
        return Perturbation(self.perturbation, value=float(self.scoring_value), sigma=float(self.scoring_sigma),
                            noise=float(self.road_noise))


def describe_sampler(sampler: Sampler) -> str:
    """A stable text for ``sampler``: its type, settings, and a hash of its arrays (e.g. a pool)."""
    if not isinstance(sampler, Sampler):
        raise TypeError(f"sampler: expected a sampler from undesirable_jax.samplers, got {type(sampler).__name__}")
    parts = []
    for f in dataclasses.fields(sampler):
        v = getattr(sampler, f.name)
        if isinstance(v, (jax.Array, np.ndarray)):
            arr = np.asarray(v)
            parts.append(f"{f.name}={arr.tolist()}" if arr.size <= 4 else f"{f.name}=sha256:{_hash_arrays([arr])}")
        else:
            parts.append(f"{f.name}={v!r}")
    return f"{type(sampler).__name__}({', '.join(parts)})"


def _hash_arrays(arrays: Iterable[Any]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def config_record(config: EvalConfig, classifier: Classifier, sampler: Sampler) -> dict:
    """The JSON-ready configuration: the fields, the sampler, a hash of the weights, the version."""
    from .. import __version__

    rec = dataclasses.asdict(config)
    rec["methods"], rec["percents"] = list(config.methods), list(config.percents)
    rec["sampler"] = describe_sampler(sampler)
    rec["scoring"] = config.scoring().describe()
    rec["model_params_sha256"] = _hash_arrays(jax.tree.leaves(classifier.params))
    rec["outputs"] = classifier.outputs
    rec.update(model_identity(classifier))   # black boxes: the ONNX file's / torch weights' SHA-256
    rec["version"] = __version__
    rec["results_format"] = RESULTS_FORMAT
    return rec


RESULTS_FORMAT = 3
"""Version of the result files' fields (2: ``cluster``, ``group``, U_t own-support scores; 3: ``passes``
per method); a folder of another format is refused on resume."""


def sanity_ids(ids: Sequence[str], clusters: Sequence[str], groups: Sequence[str], count: int,
               seed: int) -> frozenset[str]:
    """The ``count`` images that run the sanity checks, spread over groups and clusters.

    Images are ordered by ``sha256(f"{seed}:{id}")``; then the groups (sorted) take turns, each taking
    its next image whose cluster has not yet given an image; when no group can take one, each cluster
    may give one more, and so on, until ``count`` images (or all) are picked. A function of the ids,
    clusters, groups and seed alone: every process of a split run computes the same set. (Correct vs
    misclassified is not known before the model runs; the groups, e.g. the corruption kinds, differ
    in error rate, and the sanity table reports the two apart.)
    """
    checks.integer("count", count, minimum=0)
    if not len(ids) == len(clusters) == len(groups):
        raise ValueError(f"ids, clusters, groups: expected one each per image, got {len(ids)}, {len(clusters)}, "
                         f"{len(groups)}")
    order = sorted(range(len(ids)), key=lambda i: hashlib.sha256(f"{seed}:{ids[i]}".encode()).hexdigest())
    queues = {g: [i for i in order if groups[i] == g] for g in sorted(set(groups))}
    used: dict[str, int] = {}
    picked: list[str] = []
    level = 1
    while len(picked) < min(count, len(ids)):
        took = False
        for queue in queues.values():
            hit = next((k for k, i in enumerate(queue) if used.get(clusters[i], 0) < level), None)
            if hit is not None and len(picked) < count:
                i = queue.pop(hit)
                used[clusters[i]] = used.get(clusters[i], 0) + 1
                picked.append(ids[i])
                took = True
        level += 0 if took else 1
    return frozenset(picked)


def check_config(out_dir: str | Path, record: dict) -> None:
    """Write ``config.json`` or, when it exists, refuse a record that differs (naming the keys)."""
    path = Path(out_dir) / "config.json"
    if path.exists():
        stored = rundir.read_config(path)
        keys = sorted(k for k in set(stored) | set(record) if stored.get(k) != record.get(k))
        if keys:
            detail = "; ".join(f"{k}: stored {stored.get(k)!r}, now {record.get(k)!r}" for k in keys)
            raise ValueError(
                f"out_dir: {str(out_dir)!r} holds a run with a different configuration ({detail}). "
                "Resume with the stored settings, or pick a new output folder")
    else:
        io.write_json(path, record)


def result_path(out_dir: str | Path, image_id: str) -> Path:
    """``<out>/results/<id>.json``; ids with other characters than ``[A-Za-z0-9._-]`` get a safe name."""
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"image_id: expected a non-empty string, got {image_id!r}")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", image_id)
    if safe != image_id or safe.startswith("."):
        safe = f"{safe.lstrip('.')[:100]}-{hashlib.sha256(image_id.encode()).hexdigest()[:10]}"
    return Path(out_dir) / "results" / f"{safe}.json"


def build_maps(ctx: BuildContext, names: Sequence[str], key: jax.Array) -> dict[str, SignedMaps]:
    """Every method's maps for one repeat; method ``m`` builds with ``fold_in(key, METHODS.index(m))``."""
    return build_maps_batch([ctx], names, [key])[0]


def build_maps_batch(ctxs: Sequence[BuildContext], names: Sequence[str],
                     keys: Sequence[jax.Array]) -> list[dict[str, SignedMaps]]:
    """:func:`build_maps` for several images of one shape (a context and a key each).

    The methods of :data:`.methods.BATCH_BUILDERS` (PDA, occlusion) pack the windows of all the images
    into the engine's chunks; the others build one image at a time. Image i's maps do not depend on the
    other images (up to float32 summation order).
    """
    out: list[dict[str, SignedMaps]] = [{} for _ in ctxs]
    for n in names:
        own = [jax.random.fold_in(k, METHODS.index(n)) for k in keys]
        built = (BATCH_BUILDERS[n](list(ctxs), own) if n in BATCH_BUILDERS
                 else [BUILDERS[n](c, k) for c, k in zip(ctxs, own)])
        for maps, m in zip(out, built):
            maps[n] = m
    return out


def own_fills(own: str | float, ctx: BuildContext, keys: jax.Array) -> jnp.ndarray:
    """The fills ``[S, H, W, C]`` of a method's own construction perturbation (fresh scoring keys)."""
    if own == "sampler":
        return jnp.stack([fill_image(ctx.sampler, ctx.image, ctx.config.window, k) for k in keys])
    return jnp.full((1, *ctx.image.shape), float(own), jnp.float32)


def score_maps(ctx: BuildContext, maps: dict[str, SignedMaps], label: int, image_id: str, repeat: int) -> dict:
    """All scores of one repeat's maps, every draw from the ``score`` and ``rank`` streams."""
    cfg = ctx.config
    places = rankings(maps, stream_key(cfg.seed, "rank", image_id, repeat))
    score = stream_key(cfg.seed, "score", image_id, repeat)
    positives = {name: int(positive_count(m.against)) for name, m in maps.items()}   # |U_t|, ranking.py's rule
    common = score_rankings(ctx.classifier, ctx.image, places, ctx.target, ctx.competitor, label, cfg.percents,
                            cfg.curve_steps, cfg.scoring(), part_keys(jax.random.fold_in(score, 0), cfg.scoring_draws),
                            positives=positives, laplace_n=cfg.laplace_n, batch_size=ctx.batch_size)
    own_keys = part_keys(jax.random.fold_in(score, 1), cfg.scoring_draws)
    for name, m in maps.items():
        rec = common[name]
        fills = None if m.own is None else own_fills(m.own, ctx, own_keys)
        rec["own_gain"] = None if fills is None else score_own(
            ctx.classifier, ctx.image, places[name]["ut"], fills, ctx.target, cfg.percents,
            batch_size=ctx.batch_size).tolist()
        rec["score_passes"] = score_passes(cfg, len(places[name]) - 1, None if fills is None else fills.shape[0])
    return common


def evaluate_image(classifier: Any, image: Any, label: int, config: EvalConfig, sampler: Sampler,
                   image_id: str, *, chunk_size: int | None = None, batch_size: int = 64,
                   mesh: Any = None, sanity: bool = False) -> dict:
    """Every method's maps and scores for one preprocessed image ``[H, W, C]``, ``config.num_seeds`` times.

    :func:`evaluate_images` of one image (see there).
    """
    return evaluate_images(classifier, [image], [label], config, sampler, [image_id], chunk_size=chunk_size,
                           batch_size=batch_size, mesh=mesh, sanity=[sanity])[0]


def evaluate_images(classifier: Any, images: Sequence[Any], labels: Sequence[int], config: EvalConfig,
                    sampler: Sampler, image_ids: Sequence[str], *, chunk_size: int | None = None,
                    batch_size: int = 64, mesh: Any = None, sanity: Sequence[bool] | None = None) -> list[dict]:
    """Every method's maps and scores for preprocessed images ``[H, W, C]`` of one shape, one record each.

    The target t is the true label; the competitor c is the most probable other class (ties: the lower
    id), i.e. the wrong prediction when the model errs. Maps are built from the ``build`` key stream and
    scored with draws from the ``score`` stream (:mod:`.keys`), both keyed by the image id, so no method
    is scored with a realisation it was built with, and an image's record does not depend on which
    images it was evaluated with (PDA's and occlusion's windows of all the images share the engine's
    chunks: :func:`build_maps_batch`). ``sanity[i]``: also run the sanity checks on image i
    (:func:`sanity_record`). Each record's ``passes`` counts the images classified per method
    (:func:`.passes.image_passes`).
    """
    if not len(images) == len(labels) == len(image_ids) or not images:
        raise ValueError(f"images, labels, image_ids: expected one each per image (at least one), got "
                         f"{len(images)}, {len(labels)}, {len(image_ids)}")
    sanity = [False] * len(images) if sanity is None else list(sanity)
    imgs = [_one_image(im, i) for im, i in zip(images, image_ids)]
    clf = resolve_outputs(classifier, imgs[0])   # "auto" decided on the first image; an explicit value checked
    for img, image_id in zip(imgs[1:], image_ids[1:]):
        try:
            resolve_outputs(clf, img)                # every other image must agree with that decision
        except ValueError as e:
            raise ValueError(f"image {image_id!r}: {e}") from e
    ctxs, recs = zip(*[_image_context(clf, img, int(lab), config, sampler, chunk_size, batch_size, mesh)
                       for img, lab in zip(imgs, labels)])
    reasons = {m: usable(m, clf) for m in config.methods}
    skipped = {m: why for m, why in reasons.items() if why is not None}
    names = [m for m in config.methods if m not in skipped]
    seeds: list[list[dict]] = [[] for _ in imgs]
    for r in range(config.num_seeds):
        keys = [stream_key(config.seed, "build", i, r) for i in image_ids]
        for n, (ctx, maps) in enumerate(zip(ctxs, build_maps_batch(ctxs, names, keys))):
            seeds[n].append(score_maps(ctx, maps, ctx.target, image_ids[n], r))
    out = []
    for ctx, rec, image_seeds, image_id, check in zip(ctxs, recs, seeds, image_ids, sanity):
        rec = {**rec, "skipped": skipped, "seeds": image_seeds, "outputs": clf.outputs,
               "passes": image_passes(names, config, ctx.image.shape,
                                      {n: [seed[n]["score_passes"] for seed in image_seeds] for n in names})}
        if check:
            rec["sanity"] = sanity_record(ctx, names, image_id)
        out.append(rec)
    clf.raise_host_error()   # never store scores a failing black box turned into NaN
    return out


def _one_image(image: Any, image_id: str) -> jnp.ndarray:
    img = jnp.asarray(image, jnp.float32)
    if img.ndim != 3:
        raise ValueError(f"image {image_id!r}: expected one preprocessed image [H, W, C], got shape {img.shape}")
    return img


def _image_context(clf: Classifier, img: jnp.ndarray, label: int, config: EvalConfig, sampler: Sampler,
                   chunk_size: int | None, batch_size: int, mesh: Any) -> tuple[BuildContext, dict]:
    """One image's build context (t = label, c = the most probable other class) and its record's head."""
    probs = np.asarray(image_probs(clf, img))
    clf.raise_host_error()   # a black box's own error, not the NaN its callback returned
    k = probs.shape[0]
    if not 0 <= label < k:
        raise ValueError(f"label: {label} is outside the classifier's classes [0, {k})")
    others = np.where(np.arange(k) == label, -np.inf, probs)
    c = int(rank_classes(others)[0])
    rec = {"label": label, "target": label, "competitor": c, "prediction": int(np.argmax(probs)),
           "p_target": float(probs[label]), "p_competitor": float(probs[c]), "percents": list(config.percents),
           "fractions": np.linspace(0.0, 1.0, config.curve_steps + 1).tolist()}
    return BuildContext(clf, img, label, c, config, sampler, chunk_size, batch_size, mesh), rec


def sanity_record(ctx: BuildContext, names: Sequence[str], image_id: str) -> dict[str, dict[str, dict[str, float]]]:
    """The sanity checks of one image: per method and check, :func:`.sanity.compare_maps`'s measures.

    ``trained``: the trained model's ``against`` map (−R_t) against itself and the image (the image
    comparison is the reference for the stages). ``randomise:<layer>``: the ``against`` map after
    cascading parameter randomisation down to ``<layer>``, top layer first, against the trained map and
    the image (classifiers whose parameters are a pytree; none otherwise). ``random_logit``: the
    competitor map for c against the same method's map for a random class other than t and c, built
    with the same keys. Every map here is built from the ``sanity`` stream's keys.
    """
    from . import sanity

    key = stream_key(ctx.config.seed, "sanity", image_id)
    trained = build_maps(ctx, names, jax.random.fold_in(key, 0))
    out = {n: {"trained": sanity.compare_maps(trained[n].against, trained[n].against, ctx.image)} for n in names}
    if jax.tree.leaves(ctx.classifier.params):
        stages = sanity.cascading_randomisation(ctx.classifier, jax.random.fold_in(key, 1),
                                                input_shape=ctx.image.shape)
        for done, clf in list(stages)[1:]:
            other = build_maps(dataclasses.replace(ctx, classifier=clf), names, jax.random.fold_in(key, 0))
            for n in names:
                out[n][f"randomise:{done[-1]}"] = sanity.compare_maps(trained[n].against, other[n].against, ctx.image)
    c2 = _random_logit_class(ctx, jax.random.fold_in(key, 2))
    if c2 is not None:
        swapped = build_maps(dataclasses.replace(ctx, competitor=c2), names, jax.random.fold_in(key, 0))
        for n in names:
            out[n]["random_logit"] = sanity.compare_maps(trained[n].competitors["uc"], swapped[n].competitors["uc"])
    return out


def _random_logit_class(ctx: BuildContext, key: jax.Array) -> int | None:
    """A class drawn at random among those other than t and c (None when there is none)."""
    from . import sanity

    probs = image_probs(ctx.classifier, ctx.image)
    if probs.shape[0] <= 2:
        return None
    masked = probs.at[ctx.competitor].set(jnp.inf).at[ctx.target].set(-jnp.inf)
    c2 = int(sanity.random_other_class(masked, key))   # never c (top), redrawn if t
    k = 1
    while c2 == ctx.target:
        c2, k = int(sanity.random_other_class(masked, jax.random.fold_in(key, k))), k + 1
    return c2


def run(out_dir: str | Path, dataset: Iterable[Any], classifier: Any, config: EvalConfig, sampler: Sampler, *,
        preprocess: Callable[[np.ndarray], Any] | None = None, process_index: int = 0,
        process_count: int = 1, chunk_size: int | None = None, batch_size: int = 64, mesh: Any = None,
        batch_images: int = 8, progress: bool = True, summarize: bool = True) -> list[str]:
    """Evaluate every image of ``dataset`` (this process's share), resuming where a run stopped.

    Args:
      out_dir: the output folder (layout in the module docstring).
      dataset: iterates as records with ``id`` (str, unique), ``image`` and ``label`` (int).
      classifier, sampler: the model and the PDA sampler (also the meaning of removal in the metrics).
      config: :class:`EvalConfig`; must equal the stored one when ``out_dir`` already holds a run.
      preprocess: raw image → model input ``[H, W, C]`` (None: the image is already a model input).
      process_index, process_count: this process handles images with ``index % process_count ==
        process_index``; results are identical for any split.
      mesh: devices for each image's PDA and occlusion windows (see :func:`undesirable_jax.explain`);
        it changes where the work runs, not the results.
      batch_images: unfinished images evaluated together (:func:`evaluate_images`), fewer where PDA's
        accumulators would pass :data:`BATCH_BYTES` (:func:`images_per_batch`); changes the speed, not
        the results. A crash loses at most the batch in progress.
      summarize: with one process, run :func:`merge` at the end (with several, call it once all finished).

    Returns the ids of the whole data set, in order (for :func:`merge`).
    """
    _check_run_args(config, process_index, process_count)
    checks.positive_int("batch_images", batch_images, maximum=None)
    clf = as_classifier(classifier)
    out_dir = Path(out_dir)
    record = config_record(config, clf, sampler)
    rundir.restore_config(out_dir, record)   # config.json deleted by hand: back, if the results agree
    check_config(out_dir, record)
    digest = io.json_digest(record)

    known, total = _known_ids(dataset), (len(dataset) if hasattr(dataset, "__len__") else None)
    chosen = _sanity_choice(dataset, known, config)
    share = None if total is None else len(range(process_index, total, process_count))
    bar = tqdm(total=share, unit="img", desc=f"evaluate[{process_index}/{process_count}]", disable=not progress)
    writer = _Writer(out_dir, digest, chosen, bar, lambda *a, **k: evaluate_images(
        classifier, *a, **k, chunk_size=chunk_size, batch_size=batch_size, mesh=mesh))
    pending = _Pending(lambda batch: writer.finish(batch, config, sampler),
                       lambda shape: images_per_batch(batch_images, config, shape, clf))

    def work(index: int, image_id: str, example: Callable[[], Any]) -> None:
        if result_path(out_dir, image_id).exists():
            bar.update(1)
            return
        pending.add(index, *_load(index, image_id, example, preprocess))

    with rundir.RunLock(out_dir, process_index, process_count):   # one process per share of the work
        rundir.set_aside(out_dir, record, lambda i: result_path(out_dir, i))   # bad results: moved, redone
        try:
            ids = _walk_share(dataset, known, process_index, process_count, work)
            pending.flush()
        except Exception:
            pending.flush()   # a failing example (or its preprocessing): the images loaded before it finish first
            raise
        finally:
            bar.close()
    if summarize and process_count == 1:
        merge(out_dir, ids)
    return ids


def _load(index: int, image_id: str, example: Callable[[], Any],
          preprocess: Callable[[np.ndarray], Any] | None) -> tuple[Any, np.ndarray]:
    """The example at ``index`` and its model input, errors naming the image."""
    ex = example()
    if ex.id != image_id:
        raise ValueError(f"dataset: example {index} has id {ex.id!r} but dataset.ids says {image_id!r}")
    try:
        return ex, np.asarray(ex.image if preprocess is None else preprocess(ex.image), np.float32)
    except ValueError as e:   # e.g. an extreme aspect ratio: say which image of the set
        raise ValueError(f"dataset image {image_id!r} (index {index}): {e}") from e


@dataclasses.dataclass(frozen=True)
class _Writer:
    """Evaluates a batch of loaded images (``evaluate(images, labels, config, sampler, ids, sanity=)``) and
    writes one result file each, atomically."""

    out_dir: Path
    digest: str
    chosen: frozenset[str]
    bar: Any
    evaluate: Callable[..., list[dict]]

    def finish(self, batch: list[tuple[int, Any, np.ndarray]], config: EvalConfig, sampler: Sampler) -> None:
        recs = self.evaluate([img for _, _, img in batch], [int(ex.label) for _, ex, _ in batch], config, sampler,
                             [ex.id for _, ex, _ in batch], sanity=[ex.id in self.chosen for _, ex, _ in batch])
        for (index, ex, _), rec in zip(batch, recs):
            cluster, group = _cluster_group(ex)
            io.write_json(result_path(self.out_dir, ex.id), {"id": ex.id, "index": index, "cluster": cluster,
                                                              "group": group, "config_sha256": self.digest, **rec})
        self.bar.update(len(batch))


class _Pending:
    """Loaded, unfinished images of one shape, handed to ``finish`` together as soon as ``limit(shape)`` are
    waiting (or an image of another shape arrives, or :meth:`flush` is called)."""

    def __init__(self, finish: Callable[[list], None], limit: Callable[[tuple[int, ...]], int]):
        self.finish, self.limit, self.items = finish, limit, []
        self.limits: dict[tuple[int, ...], int] = {}

    def add(self, index: int, example: Any, image: np.ndarray) -> None:
        """Queue an image; a full batch is finished at once (not when the next image is loaded)."""
        if image.shape not in self.limits:
            self.limits[image.shape] = self.limit(image.shape)
        if self.items and image.shape != self.items[0][2].shape:
            self.flush()
        self.items.append((index, example, image))
        if len(self.items) >= self.limits[image.shape]:
            self.flush()

    def flush(self) -> None:
        """Finish the waiting images (taken first: a failing batch is not retried by a later flush)."""
        batch, self.items = self.items, []
        if batch:
            self.finish(batch)


BATCH_BYTES = 1 << 30
"""The most bytes a batch of images may hold in PDA's two all-class window accumulators (``[N · windows,
K]`` float32 each), which bounds ``batch_images``."""


def images_per_batch(batch_images: int, config: EvalConfig, shape: tuple[int, ...], classifier: Any) -> int:
    """``batch_images``, lowered so that the batch's PDA accumulators fit :data:`BATCH_BYTES` (at least 1).

    K, the classifier's class count, comes from its output shape for ``shape`` (``jax.eval_shape``:
    nothing runs).
    """
    windows = WindowGrid(int(shape[0]), int(shape[1]), config.window, config.stride).num_windows
    k = int(jax.eval_shape(raw_output, as_classifier(classifier),
                           jax.ShapeDtypeStruct(tuple(shape), jnp.float32)).shape[0])
    return max(1, min(int(batch_images), BATCH_BYTES // (2 * 4 * windows * k)))


def _walk_share(dataset: Any, known: list[str] | None, process_index: int, process_count: int,
                work: Callable[[int, str, Callable[[], Any]], None]) -> list[str]:
    """Calls ``work(index, id, load)`` for this process's images; returns every id of the set, in order.

    With ``known`` ids and random access only this process's images are loaded; a plain iterable is
    walked whole by every process, to learn all ids.
    """
    if known is not None:
        for index in range(process_index, len(known), process_count):
            work(index, known[index], lambda i=index: dataset[i])
        return known
    ids, seen = [], set()
    for index, ex in enumerate(dataset):
        if ex.id in seen:
            raise ValueError(f"dataset: image id {ex.id!r} occurs twice; ids must be unique")
        seen.add(ex.id)
        ids.append(ex.id)
        if index % process_count == process_index:
            work(index, ex.id, lambda e=ex: e)
    return ids


def _cluster_group(ex: Any) -> tuple[str, str]:
    """An example's ``cluster`` and ``group`` (own id and ``"all"`` for a record without them)."""
    return str(getattr(ex, "cluster", "") or ex.id), str(getattr(ex, "group", "") or "all")


def _sanity_choice(dataset: Any, known: list[str] | None, config: EvalConfig) -> frozenset[str]:
    """:func:`sanity_ids` over the whole data set (its ``clusters``/``groups`` accessors, else one walk)."""
    if config.sanity_images == 0:
        return frozenset()
    if known is not None and hasattr(dataset, "clusters") and hasattr(dataset, "groups"):
        clusters, groups = [str(c) for c in dataset.clusters], [str(g) for g in dataset.groups]
        if not len(clusters) == len(groups) == len(known):
            raise ValueError(f"dataset: has {len(known)} ids but {len(clusters)} clusters and {len(groups)} groups")
        return sanity_ids(known, clusters, groups, config.sanity_images, config.seed)
    if iter(dataset) is dataset:
        raise ValueError("dataset: a one-pass iterator cannot choose the sanity images (they are spread over the "
                         "whole set); pass a list or a set with ids, clusters and groups, or sanity_images=0")
    meta = [(str(ex.id), *_cluster_group(ex)) for ex in dataset]
    ids, clusters, groups = (list(col) for col in zip(*meta)) if meta else ([], [], [])
    return sanity_ids(ids, clusters, groups, config.sanity_images, config.seed)


def _check_run_args(config: Any, process_index: Any, process_count: Any) -> None:
    if not isinstance(config, EvalConfig):
        raise TypeError(f"config: expected an EvalConfig, got {type(config).__name__}")
    checks.integer("process_count", process_count)
    checks.integer("process_index", process_index)
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index, process_count: need 0 <= process_index < process_count, got "
                         f"{process_index} and {process_count}")


def _known_ids(dataset: Any) -> list[str] | None:
    """``dataset.ids`` when the set has them and random access (``__getitem__``), else None."""
    ids = getattr(dataset, "ids", None)
    if ids is None or not hasattr(dataset, "__getitem__"):
        return None
    ids = [str(i) for i in ids]
    if len(ids) != len(dataset):
        raise ValueError(f"dataset: has {len(dataset)} examples but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        counts: dict[str, int] = {}
        for i in ids:
            counts[i] = counts.get(i, 0) + 1
        raise ValueError(f"dataset: image ids must be unique, repeated: {sorted(i for i, n in counts.items() if n > 1)[:5]}")
    return ids


def load_results(out_dir: str | Path) -> list[dict]:
    """Every result file under ``<out>/results`` (sorted by file name)."""
    return [rundir.read_result(p) for p in sorted((Path(out_dir) / "results").glob("*.json"))]


def merge(out_dir: str | Path, dataset_ids: Sequence[str]) -> dict[str, Path]:
    """Check that each of ``dataset_ids`` has exactly one result, then write the summary files.

    Missing, duplicated or unexpected ids, and results whose configuration hash differs from
    ``config.json`` (a process started with other settings), raise ``ValueError`` listing them; no
    result is touched.
    Returns the paths written (``markdown``, ``csv``, ``plot``).
    """
    out_dir = Path(out_dir)
    cfg_path = out_dir / "config.json"
    if not cfg_path.exists():
        raise ValueError(f"out_dir: {str(out_dir)!r} has no config.json; run the evaluation first")
    config = rundir.read_config(cfg_path)
    expected = list(dataset_ids)
    if len(set(expected)) != len(expected):
        raise ValueError("dataset_ids: contains repeated ids")
    results = load_results(out_dir)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["id"]] = counts.get(r["id"], 0) + 1
    digest = io.json_digest(config)
    foreign = sorted(r["id"] for r in results if r.get("config_sha256") != digest)
    missing = [i for i in expected if i not in counts]
    doubled = sorted(i for i, n in counts.items() if n > 1)
    unexpected = sorted(set(counts) - set(expected))
    problems = []
    for what, lst in (("missing", missing), ("with more than one result", doubled),
                      ("not in the data set", unexpected),
                      ("computed under another configuration than config.json", foreign)):
        if lst:
            shown = ", ".join(lst[:20]) + (f", … ({len(lst)} in all)" if len(lst) > 20 else "")
            problems.append(f"{len(lst)} ids {what}: {shown}")
    bad = rundir.bad_results(out_dir, config, lambda i: result_path(out_dir, i))   # named by file
    problems += [f"{p.name} {why}" for p, why in bad]
    if problems:
        raise ValueError(f"merge: results in {str(out_dir)!r} are incomplete ({'; '.join(problems)}). "
                         "Finished results are kept; re-run the evaluation with --resume to fill in missing images "
                         "(result files named here are moved to rejected/ and computed again)")
    order = {i: n for n, i in enumerate(expected)}
    results.sort(key=lambda r: order[r["id"]])
    return summary.write_summary(out_dir, results, config)
