"""explain over several devices equals explain on one (4 CPU devices in a fresh process)."""

import json
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np
    import undesirable_jax as uj
    from undesirable_jax import samplers

    assert jax.local_device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(10 * 9 * 2, 5)).astype(np.float32))
    clf = uj.from_function(lambda p, x: jnp.tanh(x.reshape(x.shape[0], -1) @ p), a)
    img = rng.normal(size=(10, 9, 2)).astype(np.float32)
    pool = rng.normal(size=(4, 10, 9, 2))
    out = {}
    for name, sampler in [("constant", samplers.constant(0.0)), ("marginal", samplers.marginal(pool))]:
        kw = dict(window=3, stride=2, sampler=sampler, num_samples=3, key=jax.random.key(3))
        one = uj.explain(clf, img, chunk_size=8, **kw)
        # 48 pairs: chunk 8 -> 6 chunks; chunk 12 -> 4; chunk 20 -> 3 (last one padded); chunk 4 -> 1 pair a device
        for chunk in (4, 8, 12, 20):
            many = uj.explain(clf, img, chunk_size=chunk, mesh="local", **kw)
            err = float(jnp.max(jnp.abs(many.evidence - one.evidence)) / jnp.max(jnp.abs(one.evidence)))
            errp = float(jnp.max(jnp.abs(many.window_probs - one.window_probs)))
            out[f"{name}/{chunk}"] = [err, errp]
    try:
        uj.explain(clf, img, window=3, stride=2, sampler=samplers.constant(0.0), num_samples=1,
                   key=jax.random.key(0), chunk_size=6, mesh="local")
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    mesh = jax.sharding.Mesh(np.asarray(jax.devices()).reshape(2, 2), ("a", "b"))
    two_axes = uj.explain(clf, img, chunk_size=8, mesh=mesh, window=3, stride=2,
                          sampler=samplers.constant(0.0), num_samples=1, key=jax.random.key(0))
    single = uj.explain(clf, img, chunk_size=8, window=3, stride=2, sampler=samplers.constant(0.0),
                        num_samples=1, key=jax.random.key(0))
    out["2x2"] = float(jnp.max(jnp.abs(two_axes.evidence - single.evidence)))
    from undesirable_jax.evaluate import EvalConfig, evaluate_image
    cfg = EvalConfig(model="linear", window=3, stride=2, num_samples=2, methods=("pda", "occlusion"),
                     percents=(10.0,), curve_steps=2, seed=5, num_seeds=2, scoring_draws=2)
    kw = dict(config=cfg, sampler=samplers.marginal(pool), image_id="img/0", chunk_size=8)
    r1 = evaluate_image(clf, img, 1, **kw)
    r4 = evaluate_image(clf, img, 1, mesh="local", **kw)
    flat = lambda r: np.concatenate([np.ravel(np.asarray(v, float)) for _, v in sorted(
        jax.tree_util.tree_flatten_with_path(r)[0], key=lambda kv: str(kv[0])) if np.asarray(v).dtype.kind in "fi"])
    out["evaluate"] = float(np.max(np.abs(flat(r1) - flat(r4))))
    out["evaluate_numbers"] = int(flat(r1).size)
    print("RESULT" + json.dumps(out))
""")


def test_four_devices_equal_one():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][0]
    out = json.loads(line[len("RESULT"):])
    for key in [k for k in out if "/" in k]:
        rel, abs_p = out[key]
        assert rel < 1e-5 and abs_p < 1e-6, (key, rel, abs_p)
    assert len([k for k in out if "/" in k]) == 8
    assert out["error"] is not None and "chunk_size=6" in out["error"] and "4 devices" in out["error"]
    assert out["2x2"] < 1e-5
    assert out["evaluate_numbers"] > 10 and out["evaluate"] < 1e-5  # the evaluation runner's per-image record, 4 devices against 1
