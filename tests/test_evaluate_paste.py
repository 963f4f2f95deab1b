"""paste_patch: image and mask agree, draws are deterministic by key; pointing game and mass share."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from undesirable_jax.evaluate import paste


def _pair():
    rng = np.random.default_rng(0)
    return rng.random((40, 50, 3)).astype(np.float32), rng.random((30, 20, 3)).astype(np.float32) + 5.0


def test_mask_and_image_are_consistent():
    image, patch = _pair()
    for k in range(20):
        p = paste.paste_patch(image, patch, jax.random.key(k), scale=(0.3, 0.6))
        top, left, h, w = p.box
        assert p.mask.sum() == h * w and p.mask[top:top + h, left:left + w].all()
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 50
        assert np.array_equal(p.image[~p.mask], image[~p.mask])          # untouched outside, bitwise
        assert np.all(p.image[p.mask] >= 4.99)                              # the patch's values inside
        assert 0.3 * 40 - 1 <= max(h, w) <= 0.6 * 40 + 1                      # longer side from the scale
        assert h > w                                                         # aspect kept (30:20)
        want = jax.image.resize(jnp.asarray(patch), (h, w, 3), "linear", antialias=True)
        np.testing.assert_allclose(p.image[top:top + h, left:left + w], want, atol=1e-6)


def test_deterministic_by_key_and_key_dependent():
    image, patch = _pair()
    a = paste.paste_patch(image, patch, jax.random.key(3))
    b = paste.paste_patch(image, patch, jax.random.key(3))
    assert a.box == b.box and np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    boxes = {paste.paste_patch(image, patch, jax.random.key(k)).box for k in range(10)}
    assert len(boxes) == 10


def test_bad_input():
    image, patch = _pair()
    with pytest.raises(ValueError, match="scale"):
        paste.paste_patch(image, patch, jax.random.key(0), scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="patch"):
        paste.paste_patch(image, patch[..., :1], jax.random.key(0))


def test_pointing_hit_and_mass_share():
    mask = np.zeros((4, 4), bool)
    mask[1:3, 1:3] = True
    m = np.zeros((4, 4))
    m[1, 2], m[0, 0] = 3.0, 1.0
    assert paste.pointing_hit(m, mask, jax.random.key(0))
    assert paste.mass_share(m, mask) == pytest.approx(0.75)
    assert np.isnan(paste.mass_share(np.zeros((4, 4)), mask))
    # a flat map: the top pixel is drawn at random, so the hit rate is the mask's area share (4/16)
    hits = [paste.pointing_hit(np.zeros((4, 4)), mask, jax.random.key(k)) for k in range(400)]
    assert 0.18 < np.mean(hits) < 0.32
    with pytest.raises(ValueError, match="non-negative"):
        paste.mass_share(-m, mask)


def test_synthetic_paste_ground_truth_against_a_hand_computation():
    """A patch of known size into a flat image: the mask is where the image changed; a map of 1 everywhere
    plus 3 on one pasted pixel has mass share (|mask| + 3) / (H·W + 3) and points into the mask."""
    image, patch = np.zeros((20, 20, 3), np.float32), np.ones((10, 5, 3), np.float32)
    p = paste.paste_patch(image, patch, jax.random.key(7), scale=(0.5, 0.5))       # longer side 10: no resize
    top, left, h, w = p.box
    assert (h, w) == (10, 5) and p.mask.sum() == 50
    np.testing.assert_array_equal(p.mask, np.any(p.image != image, axis=-1))
    m = np.ones((20, 20))
    m[top + 4, left + 2] = 4.0
    assert paste.pointing_hit(m, p.mask, jax.random.key(0))
    assert paste.mass_share(m, p.mask) == pytest.approx((50 + 3) / (400 + 3))
    far = np.argwhere(~p.mask)[0]
    outside = np.ones((20, 20))
    outside[tuple(far)] = 4.0
    assert not paste.pointing_hit(outside, p.mask, jax.random.key(0))
    assert paste.mass_share(outside, p.mask) == pytest.approx(50 / 403)


def test_photographs_are_every_offline_photograph_and_load_as_rgb():
    from undesirable_jax import data

    assert len(paste.PHOTOGRAPHS) == len(set(paste.PHOTOGRAPHS)) == 22
    assert set(data.SAMPLE_IMAGES) <= set(paste.PHOTOGRAPHS)
    for name in paste.PHOTOGRAPHS:
        px = paste.photograph(name)
        assert px.dtype == np.uint8 and px.ndim == 3 and px.shape[2] == 3 and min(px.shape[:2]) >= 100, name
    with pytest.raises(ValueError, match="unknown photograph"):
        paste.photograph("horse")


def test_crops_are_the_centre_then_the_corners():
    image = np.arange(8 * 12).reshape(8, 12)
    got = paste.crops(image, 5)                             # side round(0.75 · 8) = 6
    want = [image[1:7, 3:9], image[:6, :6], image[:6, 6:], image[2:, :6], image[2:, 6:]]
    assert len(got) == 5 and all(np.array_equal(a, b) for a, b in zip(got, want))
    assert [c.shape for c in paste.crops(image, 2, fraction=0.5)] == [(4, 4), (4, 4)]
    with pytest.raises(ValueError, match="count"):
        paste.crops(image, 6)


def test_patches_come_from_different_photographs_inside_their_bounds():
    assert len(paste.PATCHES) >= 3
    assert len({p.photo for p in paste.PATCHES}) == len(paste.PATCHES)
    assert len({p.name for p in paste.PATCHES}) == len(paste.PATCHES)
    for p in paste.PATCHES:
        assert p.photo in paste.PHOTOGRAPHS
        top, left, bottom, right = p.box
        px = paste.patch_pixels(p)
        assert px.shape == (bottom - top, right - left, 3)
        np.testing.assert_array_equal(px, paste.photograph(p.photo)[top:bottom, left:right])
    bad = paste.ObjectPatch("bad", "coffee", (0, 0, 10_000, 10), "too tall")
    with pytest.raises(ValueError, match="outside"):
        paste.patch_pixels(bad)


def _eval_pasted():
    """benchmarks/eval_pasted.py as a module (its functions are what the benchmark runs)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "eval_pasted.py"
    spec = importlib.util.spec_from_file_location("eval_pasted", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_eval_pasted_cluster_table_on_a_tiny_run():
    """Dark 'photographs' (3 clusters × 2 crops), one bright patch, a classifier whose class 1 grows with the
    image's mean: every case moves, occlusion points into the patch, and the tables count photographs."""
    import undesirable_jax as uj
    from undesirable_jax.classifiers import as_classifier
    from undesirable_jax.evaluate.runner import EvalConfig

    ep = _eval_pasted()
    clf = as_classifier(lambda x: jnp.stack([1.0 - 8.0 * x.mean((1, 2, 3)), 8.0 * x.mean((1, 2, 3)) - 1.0,
                                                jnp.zeros(x.shape[0])], axis=-1))
    rng = np.random.default_rng(0)
    backs = []
    for photo in ("a", "b", "c"):
        for crop in range(2):
            x = (0.1 * rng.random((16, 16, 3))).astype(np.float32)
            p0 = np.asarray(clf.probs(jnp.asarray(x)[None]))[0]
            backs.append(dict(photo=photo, crop=crop, image=x, p0=p0, t=int(np.argmax(p0))))
    patches = [dict(name="square", photo="elsewhere", o=1, p_alone=1.0, pixels=np.ones((8, 8, 3), np.float32)),
               dict(name="own", photo="a", o=1, p_alone=1.0, pixels=np.ones((8, 8, 3), np.float32))]
    cands = ep.candidates(clf, backs, patches, jax.random.key(0), pastes=2)
    assert len(cands) == 6 * 2 + 4 * 2          # "own" is never pasted onto its photograph "a"
    assert all(c["moved"] and c["t"] == 0 and c["o"] == 1 for c in cands)
    names = ["occlusion", "random"]
    config = EvalConfig(model="tiny", window=2, stride=1, num_samples=1, methods=tuple(names))
    scores, seconds, per_case = ep.run_cases(clf, cands, names, config, uj.samplers.constant(0.0), jax.random.key(1),
                                   jax.random.key(2), progress=False)
    assert set(seconds) == set(names) and ("occlusion", ep.AGAINST) in scores and len(per_case) == len(cands)
    assert "later cases median" in ep.timing_note(1.0, per_case, seconds)
    assert all(hit == 1.0 for hit, _ in scores[("occlusion", ep.AGAINST)])     # the patch is the top
    clusters = np.array([c["photo"] for c in cands])
    area = np.array([c["pasted"].mask.mean() for c in cands])
    rows = ep.summary_rows(scores, clusters, area, seed=0)
    occ = next(r for r in rows if r[:2] == ["occlusion", ep.AGAINST])
    assert occ[2].startswith("1.000") and occ[-2:] == [len(cands), 3]          # n images, n photographs
    assert rows[-1][0] == "chance (mask area)" and rows[-1][-1] == 3
    paired = ep.paired_rows(scores, clusters, names, seed=0, reference="occlusion")
    assert [(r.a, r.b) for r in paired] == [("occlusion (pointing)", "random (pointing)"),
                                            ("occlusion (mass share)", "random (mass share)")]
    assert all(r.n_clusters == 3 and r.n_images == len(cands) and r.in_family for r in paired)
    assert [(r.a, r.in_family) for r in ep.paired_rows(scores, clusters, names, seed=0, reference="pda")] == [
        ("occlusion (pointing)", False), ("occlusion (mass share)", False)]     # no PDA: only against random
    share = np.array([s for _, s in scores[("occlusion", ep.AGAINST)]])
    means = [share[clusters == p].mean() - np.array([s for _, s in scores[("random", ep.AGAINST)]])[clusters == p].mean()
             for p in "abc"]
    assert paired[1].mean == pytest.approx(np.mean(means))                     # a mean over photographs
    assert "| a | " in ep.photo_table(scores, cands, names, ["bg", "obj", "other"])
