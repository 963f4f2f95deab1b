"""road_impute against a scipy.sparse reference of the same linear system, and its noise contract."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.sparse
import scipy.sparse.linalg

from undesirable_jax.evaluate import road, road_impute


def reference(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Slow reference: one sparse system per channel over all removed pixels, solved by spsolve.

    Isolated regions (scipy.ndimage.label, 8-connectivity) get identity rows with the fallback mean.
    """
    h, w, c = image.shape
    image = image.astype(np.float64)
    kept = ~removed
    labels, n = scipy.ndimage.label(removed, structure=np.ones((3, 3)))
    touching = scipy.ndimage.binary_dilation(kept, structure=np.ones((3, 3))) & removed
    isolated_labels = set(range(1, n + 1)) - set(np.unique(labels[touching]).tolist())
    fallback = image[kept].mean(0) if kept.any() else image.reshape(-1, c).mean(0)
    idx = -np.ones((h, w), int)
    ys, xs = np.nonzero(removed)
    idx[ys, xs] = np.arange(len(ys))
    a = scipy.sparse.lil_matrix((len(ys), len(ys)))
    b = np.zeros((len(ys), c))
    for k, (y, x) in enumerate(zip(ys, xs)):
        if labels[y, x] in isolated_labels:
            a[k, k] = 1.0
            b[k] = fallback
            continue
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                yy, xx = y + dy, x + dx
                if (dy, dx) == (0, 0) or not (0 <= yy < h and 0 <= xx < w):
                    continue
                wgt = 1 / 12 if dy and dx else 1 / 6
                a[k, k] += wgt
                if removed[yy, xx]:
                    a[k, idx[yy, xx]] -= wgt
                else:
                    b[k] += wgt * image[yy, xx]
    out = image.copy()
    if len(ys):
        sol = scipy.sparse.linalg.spsolve(a.tocsc(), b)
        out[ys, xs] = sol.reshape(len(ys), c)
    return out


def _masks(rng, h, w):
    """Random sparse and dense pixels, a blob, two regions, half, one kept pixel, all, none."""
    blob = np.zeros((h, w), bool)
    blob[h // 4:3 * h // 4 + 1, w // 5:w // 2 + 1] = True
    split = np.ones((h, w), bool)
    split[:, w // 2] = False                        # one kept column, two removed regions
    half = np.zeros((h, w), bool)
    half[: h // 2] = True
    one_kept = np.ones((h, w), bool)
    one_kept[h - 1, 0] = False                      # a single kept corner pixel anchors everything
    return {
        "random": rng.random((h, w)) < 0.4,
        "dense": rng.random((h, w)) < 0.9,
        "blob": blob,
        "split": split,
        "half": half,
        "one_kept": one_kept,
        "all": np.ones((h, w), bool),
        "none": np.zeros((h, w), bool),
    }


@pytest.mark.parametrize("shape", [(8, 8, 1), (7, 11, 3), (16, 13, 3)])
def test_matches_scipy_spsolve(shape):
    rng = np.random.default_rng(sum(shape))
    image = rng.random(shape).astype(np.float32)
    for name, removed in _masks(rng, *shape[:2]).items():
        got = np.asarray(road_impute(image, jnp.asarray(removed), jax.random.key(0), noise=0.0))
        np.testing.assert_allclose(got, reference(image, removed), atol=1e-4, err_msg=name)


def test_all_removed_takes_the_image_mean():
    rng = np.random.default_rng(1)
    image = rng.random((9, 9, 3)).astype(np.float32)
    got = np.asarray(road_impute(image, jnp.ones((9, 9), bool), jax.random.key(0), noise=0.0))
    np.testing.assert_allclose(got, np.broadcast_to(image.reshape(-1, 3).mean(0), got.shape), atol=1e-6)


def test_only_the_all_removed_mask_has_an_isolated_region():
    """The module's lemma, checked on random masks with scipy.ndimage.label: one kept pixel anchors all."""
    rng = np.random.default_rng(2)
    for _ in range(200):
        removed = rng.random((6, 7)) < rng.uniform(0.5, 1.0)
        if removed.all():
            continue
        labels, n = scipy.ndimage.label(removed, structure=np.ones((3, 3)))
        near_kept = scipy.ndimage.binary_dilation(~removed, structure=np.ones((3, 3)))
        assert set(np.unique(labels[near_kept & removed])) == set(range(1, n + 1))


def test_snake_shaped_region_matches_scipy():
    """A long winding removed region (slow CG convergence) still matches the reference."""
    h, w = 12, 12
    removed = np.ones((h, w), bool)
    for r in range(1, h, 4):
        removed[r, : w - 2] = False
    for r in range(3, h, 4):
        removed[r, 2:] = False
    rng = np.random.default_rng(3)
    image = rng.random((h, w, 2)).astype(np.float32)
    got = np.asarray(road_impute(image, jnp.asarray(removed), jax.random.key(0), noise=0.0))
    np.testing.assert_allclose(got, reference(image, removed), atol=1e-4)


def test_kept_pixels_bitwise_and_noise_only_on_removed():
    rng = np.random.default_rng(4)
    image = rng.random((10, 12, 3)).astype(np.float32)
    removed = rng.random((10, 12)) < 0.5
    clean = np.asarray(road_impute(image, jnp.asarray(removed), jax.random.key(0), noise=0.0))
    a = np.asarray(road_impute(image, jnp.asarray(removed), jax.random.key(1), noise=0.5))
    b = np.asarray(road_impute(image, jnp.asarray(removed), jax.random.key(2), noise=0.5))
    a2 = np.asarray(road_impute(image, jnp.asarray(removed), jax.random.key(1), noise=0.5))
    assert np.array_equal(a[~removed], image[~removed]) and np.array_equal(clean[~removed], image[~removed])
    assert np.array_equal(a, a2)                                   # deterministic by key
    assert np.all(a[removed] != clean[removed]) and np.all(a[removed] != b[removed])
    d = (a - clean)[removed]
    assert 0.35 < d.std() < 0.65 and abs(d.mean()) < 0.15           # std 0.5 noise, n = 3·~60
    clean2 = np.asarray(road_impute(image, jnp.asarray(removed), jax.random.key(9), noise=0.0))
    assert np.array_equal(clean, clean2)                           # key only drives the noise


def test_vmap_over_images_masks_and_keys():
    rng = np.random.default_rng(5)
    images = rng.random((3, 8, 9, 1)).astype(np.float32)
    masks = rng.random((3, 8, 9)) < 0.6
    keys = jax.random.split(jax.random.key(0), 3)
    fn = jax.vmap(functools.partial(road_impute, noise=0.0))
    got = np.asarray(fn(jnp.asarray(images), jnp.asarray(masks), keys))
    for i in range(3):
        np.testing.assert_allclose(got[i], reference(images[i], masks[i]), atol=1e-4)


def test_bad_input_is_refused():
    img = jnp.zeros((4, 4, 1))
    with pytest.raises(ValueError, match="image"):
        road_impute(jnp.zeros((4, 4)), jnp.zeros((4, 4), bool), jax.random.key(0))
    with pytest.raises(ValueError, match="removed"):
        road_impute(img, jnp.zeros((4, 5), bool), jax.random.key(0))
    with pytest.raises(TypeError, match="removed"):
        road_impute(img, jnp.zeros((4, 4)), jax.random.key(0))
    with pytest.raises(ValueError, match="noise"):
        road_impute(img, jnp.zeros((4, 4), bool), jax.random.key(0), noise=-1.0)


def test_the_push_pull_start_is_the_kept_values_where_kept_and_their_mean_from_far_away():
    rng = np.random.default_rng(3)
    image = jnp.asarray(rng.uniform(size=(7, 5, 2)), jnp.float32)
    kept = np.zeros((7, 5), bool)
    kept[6, 4] = True                                   # one kept pixel: every estimate is its value
    out = np.asarray(road.pyramid_fill(image, jnp.asarray(kept)))
    np.testing.assert_allclose(out, np.broadcast_to(np.asarray(image)[6, 4], out.shape), rtol=1e-6)
    kept = rng.uniform(size=(7, 5)) < 0.4
    out = np.asarray(road.pyramid_fill(image, jnp.asarray(kept)))
    np.testing.assert_allclose(out[kept], np.asarray(image)[kept], rtol=1e-6)
    assert np.all(out >= np.asarray(image)[kept].min(0) - 1e-6) and np.all(out <= np.asarray(image)[kept].max(0) + 1e-6)
    assert np.all(np.asarray(road.pyramid_fill(image, jnp.zeros((7, 5), bool))) == 0.0)   # nothing kept: 0
