"""Ground truth on real photographs: a pasted espresso cup, and whether each method's map finds it.

    nice -n 5 .venv/bin/python benchmarks/eval_pasted.py            # appends the tables to HISTORY.md

The object patch is a fixed, hand-chosen box around the cup in scikit-image's ``coffee`` photograph
(rows 15–310, columns 165–420: cup, handle and spoon, with some saucer and table), which
EfficientNet-Lite0 calls "espresso" (p ≈ 0.999 at 112²). It is pasted by
``undesirable_jax.evaluate.paste.paste_patch`` (longer side 30–50 % of the image side, uniform
position; one key per case) onto the other offline photographs (chelsea, astronaut, rocket, china,
flower, grace_hopper), all at a 112² model input (EfficientNet-Lite preprocessing, short side 128,
centre crop 112). t is the photograph's own top-1 class before pasting, o the patch's class. A case
is kept when pasting raises p(o) and lowers p(t): then the pasted pixels are evidence against t and
for o by construction.

Maps per case (all on the 112² grid): PDA with a blur fill (σ = 4 px, S = 1; window 8, stride 8) —
U_t for t, U_c for o plain and decoupled; occlusion (the same windows filled with 0, i.e. mid-grey);
centred RISE (``--rise-masks`` masks, fill 0); gradient × input (reference 0); random (uniform noise).
Each baseline's signed map R gives the U_t equivalent max(0, −R_t) and the U_c equivalent max(0, R_o).
Scores: pointing game (the map's top pixel inside the pasted mask; exact ties broken at random; no
tolerance margin) and mass share (the map's mass inside the mask; an all-zero map is left out and
counted). Intervals: percentile bootstrap 95 % over cases. Chance: the mask's mean area share.
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
from undesirable_jax.evaluate import baselines, paste, stats  # noqa: E402

CUP_BOX = (15, 165, 310, 420)          # top, left, bottom, right on coffee.png (400 × 600)
PHOTOS = tuple(n for n in data.SAMPLE_IMAGES if n != "coffee")


def candidates(model, prep, patch, key, per_photo):
    """Every (photo, key) candidate with its pasted image, mask and the p(t), p(o) before and after."""
    xs = {n: prep(data.sample_image(n)).image for n in PHOTOS}
    obj = int(np.argmax(model.classifier.probs(jnp.asarray(patch)[None])[0]))
    out = []
    for i, name in enumerate(PHOTOS):
        p0 = np.asarray(model.classifier.probs(jnp.asarray(xs[name])[None]))[0]
        t = int(np.argmax(p0))
        pasted = [paste.paste_patch(xs[name], patch, jax.random.fold_in(jax.random.fold_in(key, i), j))
                  for j in range(per_photo)]
        p1 = np.asarray(model.classifier.probs(jnp.stack([jnp.asarray(p.image) for p in pasted])))
        for j, p in enumerate(pasted):
            out.append(dict(photo=name, case=j, t=t, o=obj, pasted=p, moved=bool(p1[j, obj] > p0[obj] and
                                                                               p1[j, t] < p0[t])))
    return out, obj


def method_maps(clf, x, t, o, key, args):
    """``{method: (against-t map, for-o map)}``, all non-negative ``[H, W]``."""
    expl = uj.explain(clf, x, window=args.window, stride=args.stride, sampler=uj.samplers.blur(args.sigma),
                      num_samples=1, key=jax.random.fold_in(key, 0), classes=[t, o])
    dec = uj.factors(expl, target=t, top_k=1, decouple=True).non_target[0]
    ev = expl.evidence
    occ = baselines.occlusion(clf, x, [t, o], window=args.window, stride=args.stride, value=0.0)
    rise = baselines.rise(clf, x, np.zeros_like(x), [t, o], jax.random.fold_in(key, 1),
                          num_masks=args.rise_masks)
    gxi = baselines.gradient_input(clf, x, [t, o])
    rnd = baselines.random_maps(jax.random.fold_in(key, 2), *x.shape[:2])

    def pair(r):
        return jnp.maximum(0.0, -r[0]), jnp.maximum(0.0, r[1])

    return {"PDA (U_t; U_c plain)": pair(ev), "PDA (U_c decoupled)": (None, dec), "occlusion": pair(occ),
            "RISE": pair(rise), "gradient × input": pair(gxi), "random": (rnd.undesirable, rnd.competitor)}


def score_case(maps, mask, key):
    """``{(method, kind): (hit, share)}`` for kind "against t" / "for o"."""
    out = {}
    for m, (against, for_o) in maps.items():
        for kind, sal in (("against t (U_t)", against), ("for o (U_c)", for_o)):
            if sal is None:
                continue
            sal = np.asarray(sal)
            k = jax.random.fold_in(key, len(out))
            out[(m, kind)] = (float(paste.pointing_hit(sal, mask, k)), paste.mass_share(sal, mask))
    return out


def summarise(scores, area, seed):
    """Rows: method, kind, hit rate [CI], mass share [CI], empty maps, n."""
    rows = []
    for i, (name, vals) in enumerate(scores.items()):
        hits = np.array([v[0] for v in vals])
        shares = np.array([v[1] for v in vals])
        ok = np.isfinite(shares)
        hlo, hhi = stats.paired_bootstrap_ci(hits, (seed, i, 0))
        slo, shi = stats.paired_bootstrap_ci(shares[ok], (seed, i, 1)) if ok.any() else (np.nan, np.nan)
        rows.append([name[0], name[1], f"{hits.mean():.3f} [{hlo:.3f}, {hhi:.3f}]",
                     f"{shares[ok].mean():.3f} [{slo:.3f}, {shi:.3f}]" if ok.any() else "n/a",
                     int((~ok).sum()), len(hits)])
    rows.append(["chance (mask area)", "", f"{area.mean():.3f}", f"{area.mean():.3f}", 0, len(area)])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-photo", type=int, default=28, help="candidate pastes per photograph")
    ap.add_argument("--window", type=int, default=8)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--rise-masks", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    t0, c0 = time.perf_counter(), time.process_time()
    model = models.load("efficientnet_lite0")
    prep = dataclasses.replace(data.EFFICIENTNET_LITE, size=(112, 112), resize=128)
    top, left, bottom, right = CUP_BOX
    patch = (data.sample_image("coffee")[top:bottom, left:right].astype(np.float32) - 127.0) / 128.0
    k_paste, k_maps, k_ties = jax.random.split(jax.random.key(args.seed), 3)
    cands, obj = candidates(model, prep, patch, k_paste, args.per_photo)
    kept = [c for c in cands if c["moved"]]
    scores: dict = {}
    for n, c in enumerate(kept):
        maps = method_maps(model.classifier, c["pasted"].image, c["t"], c["o"],
                           jax.random.fold_in(k_maps, n), args)
        for name, v in score_case(maps, c["pasted"].mask, jax.random.fold_in(k_ties, n)).items():
            scores.setdefault(name, []).append(v)
        if n % 20 == 0:
            print(f"case {n + 1}/{len(kept)}  {time.perf_counter() - t0:.0f} s", flush=True)
    area = np.array([c["pasted"].mask.mean() for c in kept])
    rows = summarise(scores, area, args.seed)
    body = _common.table(["method", "map", "pointing hit rate [95 % CI]", "mass share in mask [95 % CI]",
                          "all-zero maps", "cases"], rows)
    # paired: PDA U_t against every other U_t equivalent, on mass share (zero-mass cases dropped pairwise)
    against = {m: np.array([v[1] for v in vals])
               for (m, kind), vals in scores.items() if kind.startswith("against")}
    paired = stats.paired_table({k: v for k, v in against.items() if k != "random"},
                                nulls={"random": against["random"]}, seed=args.seed)
    paired = [r for r in paired if r.b != "zero"]      # a share is never below 0: random is the null
    holm = stats.holm([r.p for r in paired])
    paired = [dataclasses.replace(r, p_holm=float(q)) for r, q in zip(paired, holm)]
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    per_photo = {p: sum(c["moved"] for c in cands if c["photo"] == p) for p in PHOTOS}
    notes = (f"o = {model.class_names[obj]} (class {obj}); kept {len(kept)} of {len(cands)} candidate pastes "
             f"(per photo {per_photo}); t per photo: "
             + ", ".join(f"{p} → {model.class_names[next(c['t'] for c in cands if c['photo'] == p)]}"
                         for p in PHOTOS)
             + f". PDA window {args.window}, stride {args.stride}, blur σ {args.sigma}, S = 1; RISE "
             f"{args.rise_masks} masks. Wall {wall:.0f} s, CPU {cpu:.0f} s ({_common.load_note()}).\n\n"
             "Paired differences of mass share against t (U_t and its equivalents; a − b over cases, "
             "percentile bootstrap 95 %, Wilcoxon, Holm over this table's rows):\n\n"
             + stats.table_markdown(paired))
    _common.report("Ground truth on photographs: pasted espresso cup (EfficientNet-Lite0, 112²)", body,
                   append=not args.no_append, notes=notes)


if __name__ == "__main__":
    main()
