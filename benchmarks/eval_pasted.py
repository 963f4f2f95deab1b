"""Ground truth on photographs: pasted objects, and whether each method's map finds them.

    nice -n 5 .venv/bin/python benchmarks/eval_pasted.py            # appends the tables to HISTORY.md

Backgrounds: every offline photograph (``undesirable_jax.evaluate.paste.PHOTOGRAPHS``: the package's
seven sample images and scikit-image's fifteen shipped photographs, 22 in all), ``--crops`` square
crops of each (side 3/4 of the short side: centre, then corners; ``paste.crops``), each crop at a 112²
model input (EfficientNet-Lite preprocessing, short side 128, centre crop 112). The photograph is the
cluster: the paired statistics average each photograph's cases first (``stats.paired``).

Objects: ``paste.PATCHES``, hand-chosen boxes around one object in five different photographs (cup
from coffee, motorcycle, tripod from camera, cat from chelsea, helmet from astronaut). The object
class o of a patch is the model's top-1 class for the patch alone, given as an image through the same
preprocessing; the rule: a patch is used only when that p(o) ≥ ``--min-patch-p`` (0.9), else the
script stops and names it. A patch is never pasted onto its own photograph.

Cases: each (crop, patch) gets ``--pastes`` pastes by ``paste.paste_patch`` (longer side 30–50 % of
the image side, uniform position; one key per paste). t is the crop's own top-1 class before pasting.
A case is kept when t ≠ o and pasting raises p(o) and lowers p(t): then the pasted pixels are evidence
against t and for o by construction. Of the kept cases ``--max-cases`` (100) are scored, evenly spaced
in photograph order. Defaults (2 crops, 1 paste): 210 candidates, 140 kept, from all 22 photographs;
measured with the 13 registered methods at load 9–14 on 2 shared cores: about 11 s CPU per case after
the first (which compiles; 276 s wall there), so about 1,300 s CPU in all for 100 cases with setup and
compilation: 20–25 minutes wall on 2 unloaded cores (the loaded machine's wall time is no guide).

Maps per case: every method of ``undesirable_jax.evaluate.methods.BUILDERS`` that can run on the model
(``--methods`` picks some), built as the evaluation runner builds them (``EvalConfig``: PDA with a blur
fill, σ = ``--sigma`` px, S = 1, window ``--window``, stride ``--stride``; occlusion on the same
windows, fill 0; RISE ``--rise-masks`` masks on the blur fill; …) with t as target and o as the
competitor, each from its own key. Against t: ``max(0, against)`` (U_t; −R_t clamped for the
baselines); for o: ``max(0, m)`` of each competitor map (``uc``: PDA's decoupled U_c, the baselines'
R_o; ``uc_plain``: PDA's plain U_c). Scores: pointing game (the map's top pixel inside the pasted
mask; exact ties broken at random; no tolerance margin) and mass share (the map's mass inside the
mask; an all-zero map has none and is left out and counted). Every mean is over photographs (each
photograph's mean over its cases), with a cluster bootstrap 95 % interval; chance is the mask's area
share. Paired rows: PDA's map against t minus every other method's, on both scores, over
photographs (Wilcoxon on photograph means, d_z, Holm over exactly these rows), and every method
against random (outside the Holm family).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import undesirable_jax as uj  # noqa: E402
from undesirable_jax import data, models  # noqa: E402
from undesirable_jax.evaluate import methods, paste, stats  # noqa: E402
from undesirable_jax.evaluate.runner import EvalConfig  # noqa: E402

AGAINST = "against t (U_t)"
SCORES = ("pointing", "mass share")


def object_patches(clf, prep, min_p: float) -> list[dict]:
    """Each of ``paste.PATCHES`` with its class o, p(o) alone, and its pixels in model-input units."""
    out = []
    for patch in paste.PATCHES:
        raw = paste.patch_pixels(patch)
        probs = np.asarray(clf.probs(jnp.asarray(prep(raw).image)[None]))[0]
        o = int(np.argmax(probs))
        if probs[o] < min_p:
            raise SystemExit(f"patch {patch.name!r}: the model's top class alone has p = {probs[o]:.3f} < "
                             f"--min-patch-p {min_p}; choose another box in paste.PATCHES or lower the bar")
        pixels = (raw.astype(np.float32) - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
        out.append(dict(name=patch.name, photo=patch.photo, o=o, p_alone=float(probs[o]), pixels=pixels))
    return out


def backgrounds(clf, prep, photos, n_crops: int) -> list[dict]:
    """Every crop of every photograph: its model input, class probabilities and top-1 class t."""
    out = []
    for name in photos:
        for j, crop in enumerate(paste.crops(paste.photograph(name), n_crops)):
            x = np.asarray(prep(np.ascontiguousarray(crop)).image, np.float32)
            p0 = np.asarray(clf.probs(jnp.asarray(x)[None]))[0]
            out.append(dict(photo=name, crop=j, image=x, p0=p0, t=int(np.argmax(p0))))
    return out


def candidates(clf, backs, patches, key, pastes: int) -> list[dict]:
    """Every (crop, patch, paste) candidate, its pasted image and mask, and whether p moved as required."""
    out = []
    for i, b in enumerate(backs):
        pasted = [(k, obj, paste.paste_patch(b["image"], obj["pixels"], jax.random.fold_in(
                   jax.random.fold_in(jax.random.fold_in(key, i), k), r)))
                  for k, obj in enumerate(patches) if obj["photo"] != b["photo"] and obj["o"] != b["t"]
                  for r in range(pastes)]
        if not pasted:
            continue
        p1 = np.asarray(clf.probs(jnp.stack([jnp.asarray(p.image) for _, _, p in pasted])))
        for (k, obj, p), q in zip(pasted, p1):
            t, o = b["t"], obj["o"]
            out.append(dict(photo=b["photo"], crop=b["crop"], patch=obj["name"], t=t, o=o, pasted=p,
                            moved=bool(q[o] > b["p0"][o] and q[t] < b["p0"][t])))
    return out


def case_maps(clf, case, names, config, sampler, key, seconds) -> dict:
    """``{(method, map): non-negative [H, W] map}`` for one case; adds each method's build time to ``seconds``."""
    ctx = methods.BuildContext(clf, jnp.asarray(case["pasted"].image), case["t"], case["o"], config, sampler)
    out = {}
    for name in names:
        t0 = time.perf_counter()
        m = methods.BUILDERS[name](ctx, jax.random.fold_in(key, list(methods.BUILDERS).index(name)))
        out[(name, AGAINST)] = np.maximum(0.0, np.asarray(m.against, np.float64))
        for lab, r in m.competitors.items():
            out[(name, f"for o ({lab})")] = np.maximum(0.0, np.asarray(r, np.float64))
        seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - t0
    return out


def score_case(maps: dict, mask, key) -> dict:
    """``{(method, map): (hit, share)}``: pointing hit (ties by a key per map) and mass share (NaN: all zero)."""
    return {name: (float(paste.pointing_hit(sal, mask, jax.random.fold_in(key, i))), paste.mass_share(sal, mask))
            for i, (name, sal) in enumerate(maps.items())}


def summary_rows(scores: dict, clusters, area, seed: int) -> list[list]:
    """Per (method, map): pointing rate and mass share over photographs [cluster bootstrap CI], counts."""
    rows = []
    for i, ((method, kind), vals) in enumerate(scores.items()):
        res = [stats.paired(v, np.zeros_like(v), clusters=clusters, key=(seed, i, s))
               for s, v in enumerate(np.array(vals, np.float64).T)]
        cells = [f"{r.mean:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]" if r.n_images else "n/a" for r in res]
        empty = int(sum(not np.isfinite(x[1]) for x in vals))
        rows.append([method, kind, *cells, empty, res[0].n_images, res[0].n_clusters])
    r = stats.paired(area, np.zeros_like(area), clusters=clusters, key=(seed, len(scores), 0))
    rows.append(["chance (mask area)", "", f"{r.mean:.3f}", f"{r.mean:.3f}", 0, r.n_images, r.n_clusters])
    return rows


def paired_rows(scores: dict, clusters, names, seed: int, reference: str = "pda") -> list:
    """``reference`` − every other method (map against t, both scores; the Holm family), then every other
    method − random (outside the family)."""
    rows, family = [], []
    head = [(reference, m) for m in names if m != reference] if reference in names else []
    tail = [(m, "random") for m in names if "random" in names and m not in ("random", reference)]
    for s, score in enumerate(SCORES):
        col = {m: np.array([x[s] for x in scores[(m, AGAINST)]]) for m in names}
        for i, (a, b) in enumerate(head + tail):
            rows.append(stats.paired_row(f"{a} ({score})", f"{b} ({score})", col[a], col[b], (seed, s, i),
                                         clusters=clusters))
        family += [(f"{a} ({score})", f"{b} ({score})") for a, b in head]
    return stats.with_holm(rows, family)


def photo_table(scores: dict, cases: list[dict], names, class_names) -> str:
    """Per photograph: its cases, its crops' classes t, and each method's mean mass share against t."""
    photos = list(dict.fromkeys(c["photo"] for c in cases))
    share = {m: np.array([x[1] for x in scores[(m, AGAINST)]]) for m in names}
    rows = []
    for p in photos:
        idx = np.array([c["photo"] == p for c in cases])
        ts = sorted({data.short_name(class_names[c["t"]]) for c in cases if c["photo"] == p})
        rows.append([p, int(idx.sum()), ", ".join(ts)]
                    + [float(np.nanmean(share[m][idx])) if np.isfinite(share[m][idx]).any() else float("nan")
                       for m in names])
    return _common.table(["photograph", "cases", "t (crops)", *[f"{m}: mass share" for m in names]], rows)


def run_cases(clf, kept, names, config, sampler, key_maps, key_ties, progress=True):
    """Scores ``{(method, map): [(hit, share)] per case}``, build seconds per method, and each case's
    (wall, CPU) seconds (the first case includes JAX's compilation)."""
    scores: dict = {}
    seconds: dict = {}
    per_case = []
    for n, case in enumerate(kept):
        t0, c0 = time.perf_counter(), time.process_time()
        maps = case_maps(clf, case, names, config, sampler, jax.random.fold_in(key_maps, n), seconds)
        for name, v in score_case(maps, case["pasted"].mask, jax.random.fold_in(key_ties, n)).items():
            scores.setdefault(name, []).append(v)
        per_case.append((time.perf_counter() - t0, time.process_time() - c0))
        if progress and n % 20 == 0:
            print(f"case {n + 1}/{len(kept)}  {sum(w for w, _ in per_case):.0f} s", flush=True)
    return scores, seconds, per_case


def timing_note(setup: float, per_case, seconds: dict) -> str:
    """Setup, the first case (compilation) and the median later case, wall and CPU, and per method."""
    w, c = np.array(per_case).T
    later = (float(np.median(w[1:])), float(np.median(c[1:]))) if len(w) > 1 else (float("nan"),) * 2
    return (f"Setup {setup:.0f} s wall; maps and scores for {len(w)} cases: wall {w.sum():.0f} s, CPU "
            f"{c.sum():.0f} s; first case {w[0]:.1f} s wall (compilation), later cases median {later[0]:.2f} s "
            f"wall, {later[1]:.2f} s CPU; build s per case by method: "
            + ", ".join(f"{m} {v / len(w):.2f}" for m, v in seconds.items()) + f" ({_common.load_note()}).")


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--crops", type=int, default=2, help="square crops per photograph (1..5)")
    ap.add_argument("--pastes", type=int, default=1, help="candidate pastes per (crop, patch)")
    ap.add_argument("--photos", nargs="+", default=list(paste.PHOTOGRAPHS), choices=paste.PHOTOGRAPHS)
    ap.add_argument("--methods", nargs="+", default=None, help="default: every method of methods.BUILDERS")
    ap.add_argument("--min-patch-p", type=float, default=0.9)
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--rise-masks", type=int, default=200)
    ap.add_argument("--max-cases", type=int, default=100,
                    help="score N of the kept cases, evenly spaced over them (photograph order), so the run "
                         "fits 30 minutes on 2 cores; 0: all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-append", action="store_true")
    return ap.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    t0 = time.perf_counter()
    model = models.load("efficientnet_lite0")
    clf = model.classifier
    prep = dataclasses.replace(data.EFFICIENTNET_LITE, size=(112, 112), resize=128)
    names = [m for m in (args.methods or methods.BUILDERS) if methods.usable(m, clf) is None]
    config = EvalConfig(model="efficientnet_lite0", window=args.window, stride=args.stride, num_samples=1,
                        seed=args.seed, methods=tuple(names), rise_masks=args.rise_masks, occlusion_value=0.0)
    k_paste, k_maps, k_ties = jax.random.split(jax.random.key(args.seed), 3)
    patches = object_patches(clf, prep, args.min_patch_p)
    cands = candidates(clf, backgrounds(clf, prep, args.photos, args.crops), patches, k_paste, args.pastes)
    kept = [c for c in cands if c["moved"]]
    if 0 < args.max_cases < len(kept):                # evenly spaced: every photograph keeps its share
        kept = [kept[i * len(kept) // args.max_cases] for i in range(args.max_cases)]
    if not kept:
        raise SystemExit("no candidate paste raised p(o) and lowered p(t): add --crops or --pastes")
    setup = time.perf_counter() - t0
    scores, seconds, per_case = run_cases(clf, kept, names, config, uj.samplers.blur(args.sigma), k_maps, k_ties)
    clusters = np.array([c["photo"] for c in kept])
    area = np.array([c["pasted"].mask.mean() for c in kept])
    body = _common.table(["method", "map", "pointing hit rate [95 % CI]", "mass share in mask [95 % CI]",
                          "all-zero maps", "n images", "n photographs"],
                         summary_rows(scores, clusters, area, args.seed))
    paired = paired_rows(scores, clusters, names, args.seed)
    notes = "\n\n".join([
        describe(model, patches, cands, kept, args, names),
        timing_note(setup, per_case, seconds),
        "Paired differences against t over photographs (a − b: cluster means, cluster bootstrap 95 %, "
        "Wilcoxon on photograph means, d_z; Holm over the rows of PDA against every other method):\n\n"
        + stats.table_markdown(paired),
        "Per photograph (mean mass share against t over its cases):\n\n"
        + photo_table(scores, kept, names, model.class_names)])
    _common.report("Ground truth on photographs: pasted objects on every offline photograph "
                   "(EfficientNet-Lite0, 112²)", body, append=not args.no_append, notes=notes)


def describe(model, patches, cands, kept, args, names) -> str:
    """The run in words: patches and their classes, candidates kept per patch and photograph, settings."""
    cn = model.class_names
    per_patch = {p["name"]: sum(c["patch"] == p["name"] for c in kept) for p in patches}
    per_photo = {p: sum(c["photo"] == p for c in kept) for p in args.photos}
    return (f"Patches (o, p(o) alone): " + ", ".join(f"{p['name']} from {p['photo']} → "
                                                    f"{data.short_name(cn[p['o']])} ({p['p_alone']:.3f})"
                                                    for p in patches)
            + f". Kept {len(kept)} of {len(cands)} candidates ({args.crops} crops × {args.pastes} paste(s) per "
            f"patch; per patch {per_patch}; per photograph {per_photo}). Methods: {', '.join(names)}. PDA "
            f"window {args.window}, stride {args.stride}, blur σ {args.sigma}, S = 1; RISE {args.rise_masks} masks.")


if __name__ == "__main__":
    main()
