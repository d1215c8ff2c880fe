"""Run folders that belong to one run: exclusive creation, a PID lock, no silent reuse.

* ``${diffcli.fresh_dir:<path>}`` (the default ``hydra.run.dir`` of train and noise-viz)
  creates ``<path>`` exclusively, or ``<path>_2``, ``<path>_3``, ... when another run got there
  first (two runs started in the same second no longer share a folder).
* :func:`check_run_dir` refuses a folder that already holds a checkpoint, unless this command
  resumes that very run.
* :class:`RunLock` (``<run dir>/run.lock``, holding ``pid host``) marks a run that a live
  process is writing; :func:`live_holder` tells whether a run is locked.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

from omegaconf import OmegaConf

from diffcli.errors import CheckpointError, DiffcliError
from diffcli.files import claim_dir
from diffcli.workflows.slurm import job_run_dir, slurm_job

LOCK = "run.lock"
RESOLVER = "diffcli.fresh_dir"
_claimed: dict[str, str] = {}  # this process's claims: Hydra may resolve the run dir twice


def fresh_dir(path: str) -> str:
    """Resolver: claim ``path`` (or the first free ``path_N``) once per process; in a SLURM job,
    the job's own folder (the same one after a requeue, and for every task of the job:
    :func:`diffcli.workflows.slurm.job_run_dir`)."""
    if path not in _claimed:
        job = slurm_job()
        _claimed[path] = str(job_run_dir(Path(path), job) if job else claim_dir(Path(path)))
    return _claimed[path]


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_group(_: str = "") -> str | None:
    """Resolver: a sweep's name for its trackers' runs ("sweep-<date>_<time>" from the sweep
    folder), None outside a sweep."""
    if not _multirun():
        return None
    from hydra.core.hydra_config import HydraConfig

    folder = Path(str(HydraConfig.get().sweep.dir))
    return f"sweep-{folder.parent.name}_{folder.name}"


def job_name(_: str = "") -> str | None:
    """Resolver: a sweep job's name, its overrides ("lr=2e-4,schedule=cosine", or its number
    when it has none); None outside a sweep (the tracker picks a name)."""
    if not _multirun():
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


def check_run_dir(run_dir: Path, resume: Path | None) -> None:
    """Refuse to start a run in ``run_dir`` if it holds checkpoints of another run (unless
    ``resume`` is a checkpoint inside it: continuing a run in place)."""
    ckpts = sorted((run_dir / "checkpoints").glob("*.ckpt"))
    if not ckpts:
        return
    if resume is not None and run_dir.resolve() in resume.resolve().parents:
        return
    raise DiffcliError(f"{run_dir} already holds a run ({ckpts[0].relative_to(run_dir)}); "
                       f"use resume=auto or ckpt_path={ckpts[0]} to continue it, or another "
                       "hydra.run.dir")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner() -> str:
    """``pid host [slurm job]``: who holds a lock."""
    job = slurm_job()
    return f"{os.getpid()} {socket.gethostname()}" + (f" {job.key}" if job else "")


def live_holder(run_dir: Path) -> int | None:
    """The PID of a live process holding ``run_dir``'s lock, else None. A lock of another host
    counts as live, unless it was this SLURM job's (an attempt before a requeue, ended)."""
    try:
        pid_text, host, *job = (run_dir / LOCK).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    mine = slurm_job()
    if job and mine is not None and job[0] == mine.key and pid != os.getpid():
        return None
    if host != socket.gethostname():
        return pid  # another machine's process: assume it is alive
    return pid if pid != os.getpid() and _alive(pid) else None


class RunLock:
    """``with RunLock(run_dir):`` holds ``<run_dir>/run.lock`` (``pid host [slurm job]``) for
    the run's lifetime; a stale lock (its process is gone) is taken over."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = live_holder(self.path.parent)
                if holder is not None:
                    raise CheckpointError(f"{self.path.parent} is being written by process "
                                          f"{holder} ({LOCK}); wait for it to finish or stop "
                                          "it") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(_owner() + "\n")
            return self
        raise CheckpointError(f"could not take {self.path}")

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            if self.path.read_text().split(" ")[0] == str(os.getpid()):
                self.path.unlink()
