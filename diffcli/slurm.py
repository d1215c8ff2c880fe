"""Training inside a SLURM job: which job this is, requeueing it, and its run folder.

Preemption and time limits: SLURM sends USR1 (``--signal=USR1@90``, hydra/launcher=slurm's
``signal_delay_s``) or TERM; training stops after the current step, saves ``last.ckpt``, and
rank 0 runs ``scontrol requeue <job>`` (:func:`requeue`). The restarted job (SLURM sets
``SLURM_RESTART_COUNT``) finds the same run folder: a sweep job's folder is fixed by its sweep
folder and job number; a plain ``sbatch ... diffcli train`` finds it through
``<runs_root>/.slurm-jobs/<job>`` (:func:`job_run_dir`), and continues from its last.ckpt.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from diffcli.errors import DiffcliError
from diffcli.files import atomic_write_text, claim_dir

POINTERS = ".slurm-jobs"
POINTER_WAIT_S = 120.0  # how long ranks > 0 of a job wait for rank 0 to name the run folder


@dataclass(frozen=True)
class SlurmJob:
    """This process's SLURM job: ``key`` is what ``scontrol requeue`` takes (``<array job>_<task>``
    for a job-array task), ``restarts`` how often it was requeued, ``rank`` its task's rank."""

    key: str
    restarts: int
    rank: int

    @property
    def requeued(self) -> bool:
        return self.restarts > 0


def slurm_job(env: Mapping[str, str] | None = None) -> SlurmJob | None:
    """The SLURM job this process runs in (from ``SLURM_*`` variables), or None."""
    env = os.environ if env is None else env
    job = env.get("SLURM_JOB_ID")
    if not job:
        return None
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    key = f"{array}_{task}" if array and task else job
    return SlurmJob(key, int(env.get("SLURM_RESTART_COUNT") or 0),
                    int(env.get("SLURM_PROCID") or 0))


def signal_name(name: object) -> str:
    """"USR1" for "USR1", "usr1" or "SIGUSR1" (how ``requeue_signals`` names signals)."""
    return str(name).upper().removeprefix("SIG")


def requeue(job: SlurmJob) -> str:
    """``scontrol requeue <job>``: put this job back in the queue (SLURM ends this attempt and
    starts a new one later, with the same job id). Returns what happened, in words."""
    try:
        proc = subprocess.run(["scontrol", "requeue", job.key], capture_output=True, text=True,
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not requeue SLURM job {job.key} ({e}); resubmit it to continue"
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        return (f"could not requeue SLURM job {job.key} ({why[-1] if why else proc.returncode});"
                " resubmit it to continue")
    return f"requeued SLURM job {job.key}: it continues this run when it starts again"


def job_run_dir(path: Path, job: SlurmJob) -> Path:
    """The run folder of a ``diffcli train`` in SLURM job ``job`` whose fresh folder would be
    ``path`` (``<runs_root>/<date>/<time>``): a requeued job's previous folder, the folder rank
    0 claimed for the other ranks of a multi-task job, else ``path`` claimed and recorded."""
    pointer = path.parent.parent / POINTERS / job.key
    if job.rank > 0:
        return _wait_for(pointer, job)
    if job.requeued:
        previous = _read(pointer)
        if previous is not None and previous[0].is_dir():
            return previous[0]
    run_dir = claim_dir(path)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(pointer, f"{run_dir.resolve()}\n{job.restarts}\n")
    return run_dir


def _read(pointer: Path) -> tuple[Path, int] | None:
    try:
        folder, restarts = pointer.read_text().split("\n")[:2]
        return Path(folder), int(restarts)
    except (OSError, ValueError):
        return None


def _wait_for(pointer: Path, job: SlurmJob) -> Path:
    """Rank > 0: the folder rank 0 recorded for this attempt of the job."""
    deadline = time.monotonic() + POINTER_WAIT_S
    while time.monotonic() < deadline:
        found = _read(pointer)
        fresh = found is not None and found[1] == job.restarts and \
            time.time() - pointer.stat().st_mtime < POINTER_WAIT_S + 600
        if fresh and found[0].is_dir():
            return found[0]
        time.sleep(0.5)
    raise DiffcliError(f"rank {job.rank}: rank 0 of SLURM job {job.key} did not name its run "
                       f"folder in {pointer} within {POINTER_WAIT_S:.0f} s")


__all__ = ["SlurmJob", "job_run_dir", "requeue", "signal_name", "slurm_job"]
