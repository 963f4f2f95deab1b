"""Named, disjoint PRNG streams of an evaluation run, so no method is scored with a draw it was built with.

Every key of a run descends from ``jax.random.key(seed)`` through
``fold_in(·, STREAMS[stream])`` → ``fold_in(·, hash(image id))`` → ``fold_in(·, repeat)`` and then one
more ``fold_in`` per part (a method, a draw). Keys of different streams differ in their second fold, so
the maps' construction (``build``), the scoring perturbations (``score``) and the tie-breaking of
rankings (``rank``) never share a key, whatever the image, repeat or method.
"""

from __future__ import annotations

import hashlib

import jax

STREAMS = {"build": 0, "score": 1, "rank": 2, "sanity": 3}
"""The streams of a run and their fold-in ids."""


def id_hash(image_id: str) -> int:
    """A 31-bit hash of an image id (its position or process never enters a key)."""
    return int.from_bytes(hashlib.sha256(image_id.encode()).digest()[:4], "little") & 0x7FFFFFFF


def stream_key(seed: int, stream: str, image_id: str, repeat: int = 0) -> jax.Array:
    """The key of ``stream`` for one image and one repeat (seed) of the run."""
    if stream not in STREAMS:
        raise ValueError(f"stream: expected one of {sorted(STREAMS)}, got {stream!r}")
    k = jax.random.fold_in(jax.random.key(seed), STREAMS[stream])
    return jax.random.fold_in(jax.random.fold_in(k, id_hash(image_id)), repeat)


def part_keys(key: jax.Array, count: int, offset: int = 0) -> jax.Array:
    """``count`` keys ``fold_in(key, offset + i)``: one per part (method, draw) of a stream."""
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(jax.numpy.arange(offset, offset + count))
