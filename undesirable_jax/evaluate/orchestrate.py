"""One evaluation run, in one process or in several: which images this process takes, who merges.

Three ways to share a run: one process (it evaluates everything and merges); processes started by hand
with ``process_index``/``process_count`` (each evaluates its share, then one ``merge_only`` call
merges); a ``jax.distributed`` run (every process checks that all were started alike, evaluates its
share, waits for the others, and process 0 merges). Data sets with ``ids`` let each process decode
only its own images, and ``merge_only`` decodes none.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from .. import distributed
from ..classifiers import as_classifier
from . import rundir, runner


@dataclasses.dataclass(frozen=True)
class Share:
    """This process's part in a run: ``index`` of ``count``; ``joined``: through ``jax.distributed``."""

    index: int = 0
    count: int = 1
    joined: bool = False

    @property
    def merges(self) -> bool:
        """Whether this process writes the summary at the end."""
        return self.count == 1 or (self.joined and self.index == 0)


def dataset_ids(dataset: Any) -> list[str]:
    """The ids of every image of ``dataset``, from ``dataset.ids`` when it has them (no decoding)."""
    ids = getattr(dataset, "ids", None)
    return [str(i) for i in ids] if ids is not None else [ex.id for ex in dataset]


def join(coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None) -> Share:
    """Join a ``jax.distributed`` run (before any other JAX work) and return this process's share."""
    proc = distributed.initialize(coordinator_address, num_processes, process_id)
    return Share(proc.index, proc.count, joined=True)


def claim(out_dir: str | Path, resume: bool, share: Share) -> None:
    """Refuse a folder that already holds a run unless ``resume``, or that a live process is evaluating with
    a share overlapping this one (:class:`.rundir.RunLock`); joined processes then wait until all have
    looked, so none sees a ``config.json`` another has just written."""
    out = Path(out_dir)
    if (out / "config.json").exists() and not resume:
        raise ValueError(f"--out: {str(out)!r} already holds a run; pass --resume to continue it or pick a new "
                         "folder")
    rundir.RunLock(out, share.index, share.count).check()
    if share.joined:
        distributed.barrier("undesirable_jax.evaluate.checked")


def merge_only(out_dir: str | Path, dataset: Any) -> dict[str, Path]:
    """Check that ``out_dir`` holds one result per image of ``dataset`` and write the summary."""
    return runner.merge(out_dir, dataset_ids(dataset))


def run_distributed(out_dir: str | Path, dataset: Any, classifier: Any, config: Any, sampler: Any,
                    **run_kwargs: Any) -> dict | None:
    """The runner on every process of a ``jax.distributed`` run, then one merge by process 0.

    Each process first checks that all were started with the same configuration, evaluates its share
    (``index % count``), waits for the others, and process 0 merges and writes the summary (returning
    its paths; other processes return None). A process that dies leaves its finished images on disk;
    re-running the same command resumes. With one process it is the plain runner.
    """
    proc = distributed.current()
    distributed.check_same_config(runner.config_record(config, as_classifier(classifier), sampler))
    ids = runner.run(out_dir, dataset, classifier, config, sampler, process_index=proc.index,
                     process_count=proc.count, summarize=False, **run_kwargs)
    distributed.barrier("undesirable_jax.evaluate.finished")
    return runner.merge(out_dir, ids) if proc.index == 0 else None


def run_share(out_dir: str | Path, dataset: Any, classifier: Any, config: Any, sampler: Any, share: Share,
              **run_kwargs: Any) -> bool:
    """Evaluate this process's share of ``dataset``; returns whether this process wrote the summary."""
    if share.joined:
        run_distributed(out_dir, dataset, classifier, config, sampler, **run_kwargs)
    else:
        runner.run(out_dir, dataset, classifier, config, sampler, process_index=share.index,
                   process_count=share.count, **run_kwargs)
    return share.merges
