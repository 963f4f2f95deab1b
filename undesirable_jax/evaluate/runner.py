"""Resumable evaluation runs over a data set: one result file per image, a merge step, a summary.

Layout of an output folder::

    <out>/config.json              the run's configuration (refuses a resume that differs)
    <out>/results/<image>.json     one per finished image, written atomically as it finishes
    <out>/summary.md, summary.csv  means and 95 % confidence intervals per method and q
    <out>/removal_gain.png         removal gain against q

Re-running the same command skips the images whose result file exists, so a crash loses nothing
finished. Work is split over processes by the image's position in the data set
(``index % process_count == process_index``), and every image's randomness comes from the run seed
and the image id, so any split gives exactly the results of one process; :func:`merge` then checks
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

from .. import io
from ..classifiers import Classifier, as_classifier
from ..engine import explain
from ..factors import factors
from ..samplers import Sampler
from . import baselines, summary
from .metrics import DEFAULT_PERCENTS, MethodMaps, evaluate_maps
from .removal import fill_image

METHODS = ("pda", "occlusion", "rise", "gradient_input", "random")
"""``pda``: U_t and (decoupled) U_c of the factors, support max(0, R_t); the others: :mod:`.baselines`."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What a run computes; stored as ``config.json`` and compared on resume.

    ``window``, ``stride``, ``num_samples``: the PDA settings (occlusion uses the same window and
    stride). ``removal_samples``: fills averaged per removal in the metrics. ``dataset``: a label
    for the data set (checked on resume like everything else).
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
    removal_samples: int = 1
    top_k: int = 3
    decouple: bool = True
    occlusion_value: float = 0.0
    rise_masks: int = 500
    rise_cells: int = 7
    laplace_n: float = 100_000

    def __post_init__(self):
        for name in ("window", "stride", "num_samples", "curve_steps", "removal_samples", "top_k",
                     "rise_masks", "rise_cells"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {v!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {self.seed!r}")
        methods = tuple(self.methods)
        unknown = [m for m in methods if m not in METHODS]
        if not methods or unknown or len(set(methods)) != len(methods):
            raise ValueError(f"methods: expected distinct names from {METHODS}, got {self.methods!r}")
        object.__setattr__(self, "methods", methods)
        pct = tuple(float(q) for q in self.percents)
        if not pct or any(not (0 < q <= 100) for q in pct):
            raise ValueError(f"percents: expected percentages in (0, 100], got {self.percents!r}")
        object.__setattr__(self, "percents", pct)


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
    rec["model_params_sha256"] = _hash_arrays(jax.tree.leaves(classifier.params))
    rec["version"] = __version__
    return rec


def check_config(out_dir: str | Path, record: dict) -> None:
    """Write ``config.json`` or, when it exists, refuse a record that differs (naming the keys)."""
    path = Path(out_dir) / "config.json"
    if path.exists():
        stored = json.loads(path.read_text())
        keys = sorted(k for k in set(stored) | set(record) if stored.get(k) != record.get(k))
        if keys:
            detail = "; ".join(f"{k}: stored {stored.get(k)!r}, now {record.get(k)!r}" for k in keys)
            raise ValueError(
                f"out_dir: {str(out_dir)!r} holds a run with a different configuration ({detail}). "
                "Resume with the stored settings, or pick a new output folder")
    else:
        io.write_json(path, record)


def config_digest(record: dict) -> str:
    """A short hash of a configuration record, stored in every result file and checked by :func:`merge`."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def result_path(out_dir: str | Path, image_id: str) -> Path:
    """``<out>/results/<id>.json``; ids with other characters than ``[A-Za-z0-9._-]`` get a safe name."""
    if not isinstance(image_id, str) or not image_id:
        raise ValueError(f"image_id: expected a non-empty string, got {image_id!r}")
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", image_id)
    if safe != image_id or safe.startswith("."):
        safe = f"{safe.lstrip('.')[:100]}-{hashlib.sha256(image_id.encode()).hexdigest()[:10]}"
    return Path(out_dir) / "results" / f"{safe}.json"


def image_key(seed: int, image_id: str) -> jax.Array:
    """The image's key: the run seed folded with a hash of its id (not its position or process)."""
    h = int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:4], "little") & 0x7FFFFFFF
    return jax.random.fold_in(jax.random.key(seed), h)


def evaluate_image(classifier: Any, image: Any, label: int, config: EvalConfig, sampler: Sampler,
                   key: jax.Array, *, chunk_size: int | None = None, batch_size: int = 64,
                   mesh: Any = None) -> dict:
    """Every method's maps and metrics for one preprocessed image ``[H, W, C]``: a JSON-ready dict.

    The target t is the true ``label``; the competitor c is the most probable other class (ties: the
    lower id), i.e. the wrong prediction when the model errs.
    """
    clf = as_classifier(classifier)
    img = jnp.asarray(image, jnp.float32)
    if img.ndim != 3:
        raise ValueError(f"image: expected one preprocessed image [H, W, C], got shape {img.shape}")
    probs = np.asarray(clf.probs(img[None])[0])
    k = probs.shape[0]
    if not 0 <= int(label) < k:
        raise ValueError(f"label: {label} is outside the classifier's classes [0, {k})")
    t = int(label)
    others = np.where(np.arange(k) == t, -np.inf, probs)
    order = np.lexsort((np.arange(k), -others))              # p descending, id ascending
    c = int(order[0])
    top_k = min(config.top_k, k - 1)
    h, w = img.shape[:2]
    keys = {name: jax.random.fold_in(key, i) for i, name in enumerate(("pda", "rise", "random", "fill"))}

    fills = jnp.stack([fill_image(sampler, img, config.window, keys["fill"], s)
                       for s in range(config.removal_samples)])
    maps = {}
    for name in config.methods:
        if name == "pda":
            expl = explain(clf, img, window=config.window, stride=config.stride, sampler=sampler,
                           num_samples=config.num_samples, key=keys["pda"], chunk_size=chunk_size,
                           classes=None, laplace_n=config.laplace_n, mesh=mesh)  # all rows: factors' stable q
            f = factors(expl, target=t, top_k=top_k, decouple=config.decouple)
            nt = np.asarray(f.non_target_classes)
            if nt[0] != c:
                raise RuntimeError(f"factors ranked competitor {nt[0]} first, the evaluation expected {c}")
            maps[name] = MethodMaps(support=jnp.maximum(0.0, expl.evidence[expl.row(t)]),
                                    undesirable=f.target, competitor=f.non_target[0])
        elif name == "occlusion":
            r = baselines.occlusion(clf, img, [t, c], window=config.window, stride=config.stride,
                                    value=config.occlusion_value, chunk_size=chunk_size,
                                    laplace_n=config.laplace_n, mesh=mesh)
            maps[name] = baselines.signed_maps(r[0], r[1])
        elif name == "rise":
            r = baselines.rise(clf, img, fills[0], [t, c], keys["rise"], num_masks=config.rise_masks,
                               cells=config.rise_cells, batch_size=batch_size)
            maps[name] = baselines.signed_maps(r[0], r[1])
        elif name == "gradient_input":
            r = baselines.gradient_input(clf, img, [t, c])
            maps[name] = baselines.signed_maps(r[0], r[1])
        else:
            maps[name] = baselines.random_maps(keys["random"], h, w)
    stacked = jax.tree.map(lambda *a: jnp.stack(a)[None], *[maps[m] for m in config.methods])
    res = evaluate_maps(clf, img[None], stacked, [t], [c], [t], fills[None], percents=config.percents,
                        curve_steps=config.curve_steps, laplace_n=config.laplace_n, batch_size=batch_size)
    res = jax.tree.map(np.asarray, res)
    per_method = {}
    for i, name in enumerate(config.methods):
        per_method[name] = {
            "removal_p": res.removal_p[0, i].tolist(),
            "removal_gain": res.removal_gain[0, i].tolist(),
            "log_odds_gain": res.log_odds_gain[0, i].tolist(),
            "suppression": res.suppression[0, i].tolist(),
            "corrected": res.corrected[0, i].tolist(),
            "deletion": res.deletion[0, i].tolist(),
            "insertion": res.insertion[0, i].tolist(),
            "deletion_auc": float(res.deletion_auc[0, i]),
            "insertion_auc": float(res.insertion_auc[0, i]),
        }
    return {"label": t, "target": t, "competitor": c, "prediction": int(res.prediction[0]),
            "p_target": float(res.p_target[0]), "p_competitor": float(res.p_competitor[0]),
            "percents": list(config.percents), "fractions": res.fractions.tolist(), "methods": per_method}


def run(out_dir: str | Path, dataset: Iterable[Any], classifier: Any, config: EvalConfig, sampler: Sampler, *,
        preprocess: Callable[[np.ndarray], Any] | None = None, process_index: int = 0,
        process_count: int = 1, chunk_size: int | None = None, batch_size: int = 64, mesh: Any = None,
        progress: bool = True, summarize: bool = True) -> list[str]:
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
      summarize: with one process, run :func:`merge` at the end (with several, call it once all finished).

    Returns the ids of the whole data set, in order (for :func:`merge`).
    """
    if not isinstance(config, EvalConfig):
        raise TypeError(f"config: expected an EvalConfig, got {type(config).__name__}")
    for name, v in (("process_count", process_count), ("process_index", process_index)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name}: expected an int, got {type(v).__name__} {v!r}")
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"process_index, process_count: need 0 <= process_index < process_count, got "
                         f"{process_index} and {process_count}")
    clf = as_classifier(classifier)
    out_dir = Path(out_dir)
    record = config_record(config, clf, sampler)
    check_config(out_dir, record)
    digest = config_digest(record)

    known = _known_ids(dataset)
    total = len(dataset) if hasattr(dataset, "__len__") else None
    share = None if total is None else len(range(process_index, total, process_count))
    bar = tqdm(total=share, unit="img", desc=f"evaluate[{process_index}/{process_count}]", disable=not progress)

    def work(index: int, image_id: str, example: Callable[[], Any]) -> None:
        path = result_path(out_dir, image_id)
        if not path.exists():
            ex = example()
            if ex.id != image_id:
                raise ValueError(f"dataset: example {index} has id {ex.id!r} but dataset.ids says {image_id!r}")
            image = ex.image if preprocess is None else preprocess(ex.image)
            rec = evaluate_image(clf, image, int(ex.label), config, sampler, image_key(config.seed, image_id),
                                 chunk_size=chunk_size, batch_size=batch_size, mesh=mesh)
            io.write_json(path, {"id": image_id, "index": index, "config_sha256": digest, **rec})
        bar.update(1)

    try:
        if known is not None:      # random access: load only this process's unfinished images
            ids = known
            for index in range(process_index, len(ids), process_count):
                work(index, ids[index], lambda i=index: dataset[i])
        else:                      # a plain iterable: every process walks it to learn all ids
            ids, seen = [], set()
            for index, ex in enumerate(dataset):
                if ex.id in seen:
                    raise ValueError(f"dataset: image id {ex.id!r} occurs twice; ids must be unique")
                seen.add(ex.id)
                ids.append(ex.id)
                if index % process_count == process_index:
                    work(index, ex.id, lambda e=ex: e)
    finally:
        bar.close()
    if summarize and process_count == 1:
        merge(out_dir, ids)
    return ids


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
    results = []
    for p in sorted((Path(out_dir) / "results").glob("*.json")):
        try:
            results.append(json.loads(p.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not a valid result file ({e}); delete it and re-run to recompute it") from e
    return results


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
    config = json.loads(cfg_path.read_text())
    expected = list(dataset_ids)
    if len(set(expected)) != len(expected):
        raise ValueError("dataset_ids: contains repeated ids")
    results = load_results(out_dir)
    counts: dict[str, int] = {}
    for r in results:
        counts[r["id"]] = counts.get(r["id"], 0) + 1
    digest = config_digest(config)
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
    if problems:
        raise ValueError(f"merge: results in {str(out_dir)!r} are incomplete ({'; '.join(problems)}). "
                         "Finished results are kept; re-run the evaluation to fill in missing images")
    order = {i: n for n, i in enumerate(expected)}
    results.sort(key=lambda r: order[r["id"]])
    return summary.write_summary(out_dir, results, config)
