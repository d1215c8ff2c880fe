"""The resolvers diffcli's configs interpolate (registered before Hydra composes anything):

* ``${diffcli.fresh_dir:<path>}`` (the default ``hydra.run.dir`` of train and noise-viz)
  creates ``<path>`` exclusively, or ``<path>_2``, ``<path>_3``, ... when another run got there
  first (two runs started in the same second no longer share a folder); in a SLURM job, the
  job's own folder;
* ``diffcli.sweep_group`` / ``diffcli.job_name``: a sweep's and a sweep job's names for the
  trackers; ``diffcli.at_least_one``, ``diffcli.steps_unless_timed``: small arithmetic.

Locks and run-folder checks are :mod:`diffcli.runs`'.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from diffcli.files import claim_dir
from diffcli.slurm import job_run_dir, slurm_job

RESOLVER = "diffcli.fresh_dir"
_claimed: dict[str, str] = {}  # this process's claims: Hydra may resolve the run dir twice


def fresh_dir(path: str) -> str:
    """Resolver: claim ``path`` (or the first free ``path_N``) once per process; in a SLURM job,
    the job's own folder (the same one after a requeue, and for every task of the job:
    :func:`diffcli.slurm.job_run_dir`)."""
    if path not in _claimed:
        job = slurm_job()
        _claimed[path] = str(job_run_dir(Path(path), job) if job else claim_dir(Path(path)))
    return _claimed[path]


def in_sweep() -> bool:
    """Whether this is a job of a sweep (``-m``) that Hydra runs now."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group(_: str = "") -> str | None:
    """Resolver: a sweep's name for its trackers' runs ("sweep-<date>_<time>" from the sweep
    folder), None outside a sweep."""
    if not in_sweep():
        return None
    from hydra.core.hydra_config import HydraConfig

    folder = Path(str(HydraConfig.get().sweep.dir))
    return f"sweep-{folder.parent.name}_{folder.name}"


def job_name(_: str = "") -> str | None:
    """Resolver: a sweep job's name, its overrides ("lr=2e-4,schedule=cosine", or its number
    when it has none); None outside a sweep (the tracker picks a name)."""
    if not in_sweep():
        return None
    from hydra.core.hydra_config import HydraConfig

    job = HydraConfig.get().job
    return str(job.override_dirname or f"job-{job.num}")


def at_least_one(value: object) -> int:
    """Resolver: ``value`` as an int, at least 1 (one SLURM task per GPU, one on a CPU node)."""
    return max(1, int(value or 0))


def steps_unless_timed(steps: object, max_time: object) -> int:
    """Resolver of ``trainer.max_steps``: the dataset's suggested length, or -1 (no step limit)
    when ``trainer.max_time`` bounds the run, so that a time budget is used to its end (and the
    LR and EMA schedules stretch over it)."""
    return -1 if max_time not in (None, "") else int(steps)


def forget_claims() -> None:
    """A new command in this process (the app called again, e.g. from Python or tests): its
    run folder is claimed anew, not the previous command's (which may be the same second's)."""
    _claimed.clear()


def register_resolvers() -> None:
    for name, fn in ((RESOLVER, fresh_dir), ("diffcli.sweep_group", sweep_group),
                     ("diffcli.job_name", job_name), ("diffcli.at_least_one", at_least_one),
                     ("diffcli.steps_unless_timed", steps_unless_timed)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


