"""Several hosts through JAX's own machinery: ``jax.distributed`` joins the processes, and each one
works on its share of the images (``jax.process_index()`` of ``jax.process_count()``).

Within one process, :func:`undesirable_jax.explain` spreads one image's chunks over a
``jax.sharding.Mesh`` (``mesh="local"``); across processes, the evaluation runner spreads images.
Nothing here schedules work itself: the split is a fixed function of an image's position, results are
per-image files, and :func:`undesirable_jax.evaluate.merge` checks that every image is there once.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import numpy as np

from . import io


@dataclasses.dataclass(frozen=True)
class Process:
    """Where this process stands in a run: ``index`` of ``count`` processes."""

    index: int
    count: int


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, timeout_s: int = 300,
               heartbeat_timeout_s: int = 100) -> Process:
    """Join a multi-process run with ``jax.distributed.initialize`` and return this process's place.

    Arguments left as None come from the environment: ``JAX_COORDINATOR_ADDRESS`` (read by JAX),
    ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read here), else JAX's own cluster detection
    (SLURM, Open MPI, Cloud TPU slices). On CPU the cross-process collectives use gloo. A process
    that stops answering for ``heartbeat_timeout_s`` ends the run on every host (finished per-image
    results stay on disk). Call it before any other JAX work.
    """
    if num_processes is None and os.environ.get("JAX_NUM_PROCESSES"):
        num_processes = _env_int("JAX_NUM_PROCESSES")
    if process_id is None and os.environ.get("JAX_PROCESS_ID"):
        process_id = _env_int("JAX_PROCESS_ID")
    if num_processes is not None and num_processes < 1:
        raise ValueError(f"num_processes: must be >= 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise ValueError(f"process_id: must lie in [0, {num_processes}), got {process_id}")
    # Only the CPU backend reads this; GPU and TPU collectives are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
    return Process(index=jax.process_index(), count=jax.process_count())


def current() -> Process:
    """This process's place (``Process(0, 1)`` when ``jax.distributed`` was not initialised)."""
    return Process(index=jax.process_index(), count=jax.process_count())


def check_same_config(config: Any) -> None:
    """Refuse to go on unless every process was started with the same configuration.

    Each process contributes the digest of its configuration; a mismatch raises ``ValueError`` on
    every process, naming the processes that differ from process 0 (before any image is touched).
    """
    if jax.process_count() == 1:
        return
    from jax.experimental import multihost_utils

    digest = np.frombuffer(bytes.fromhex(io.json_digest(config)), dtype=np.uint8)
    every = np.asarray(multihost_utils.process_allgather(digest))
    differing = [i for i in range(every.shape[0]) if not np.array_equal(every[i], every[0])]
    if differing:
        raise ValueError(
            f"configuration: processes {differing} were started with a different configuration than "
            "process 0; start every process with the same command-line options")


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name`` (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _env_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}: expected an integer, got {value!r}") from None

