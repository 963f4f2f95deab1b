"""One process of a multi-process evaluation (started by tests/test_distributed.py)."""

import os
import sys

import undesirable_jax.distributed as dist


def main() -> None:
    out, seed, count, index, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    if count > 1:
        dist.initialize(f"127.0.0.1:{port}", count, index, timeout_s=60, heartbeat_timeout_s=10)
    import numpy as np

    from undesirable_jax import compile_cache, data, models, samplers
    from undesirable_jax.evaluate import EvalConfig
    from undesirable_jax.evaluate.orchestrate import run_distributed

    if os.environ.get("UJ_TEST_CACHE"):  # the processes of a test share one compile cache (see launch)
        compile_cache.enable(os.environ["UJ_TEST_CACHE"])
    model = models.load("digits_cnn")
    digits = data.digits("test")
    subset = data.ArraySet(name="digits", images=digits.images[:6], labels=digits.labels[:6],
                           ids=digits.ids[:6], class_names=digits.class_names)
    prep = lambda raw: np.asarray(model.preprocess(raw).image, np.float32)  # noqa: E731
    # Small (4×4 windows, one seed, one scoring draw): the tests check how processes share, crash and
    # resume, which does not depend on the sizes.
    config = EvalConfig(model="digits_cnn", window=4, stride=4, num_samples=1, seed=seed,
                        dataset="digits[:6]", methods=("pda", "occlusion", "random"), percents=(10.0, 20.0),
                        curve_steps=3, num_seeds=1, scoring_draws=1)
    die_after = int(os.environ.get("UJ_TEST_DIE_AFTER", "-1"))
    if die_after >= 0 and index == 1:
        real = subset.__getitem__
        calls = []

        def dying(i):  # this process crashes when it reaches its (die_after + 1)-th image
            if len(calls) == die_after:
                os._exit(3)
            calls.append(i)
            return real(i)

        subset = _Wrapped(subset, dying)
    loads_file = os.environ.get("UJ_TEST_COUNT_LOADS")
    if loads_file:  # record every image this process decodes, one index per line
        counted = subset.__getitem__

        def counting(i):
            with open(f"{loads_file}.{index}", "a") as f:
                f.write(f"{i}\n")
            return counted(i)

        subset = _Wrapped(subset, counting)
    batch_images = int(os.environ.get("UJ_TEST_BATCH_IMAGES", "8"))   # images evaluated together (runner default)
    paths = run_distributed(out, subset, model.classifier, config, samplers.constant(0.0),
                            preprocess=prep, progress=False, batch_images=batch_images)
    print("MERGED" if paths else "DONE", flush=True)


class _Wrapped:
    def __init__(self, inner, getitem):
        self._inner, self._getitem = inner, getitem
        self.ids, self.class_names = inner.ids, inner.class_names

    def __len__(self):
        return len(self._inner)

    def __getitem__(self, i):
        return self._getitem(i)


if __name__ == "__main__":
    main()
