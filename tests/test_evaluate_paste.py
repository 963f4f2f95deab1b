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
