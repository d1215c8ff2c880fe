"""Where runs live and what is in them: the checkpoint a path names, the newest run of a task,
the run a command works on; a run's folder, which one live process owns (``run.lock``,
:class:`RunLock`), and what the run ended with (``result.json``, :func:`write_result`).

Reading a checkpoint is :mod:`diffcli.checkpoint`'s job; rebuilding its network is
:mod:`diffcli.restore`'s. Plain paths and typed arguments only: no Hydra, no Lightning here.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console

from diffcli.checkpoint import LoadedRun, load_checkpoint
from diffcli.errors import CheckpointError, DiffcliError
from diffcli.files import atomic_write_text, dumps_json
from diffcli.slurm import slurm_job
from diffcli.tasks import DIFFUSION, TASKS, Task

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line


def checkpoint_of(path: str | Path) -> Path:
    """The checkpoint a path names: a run folder's ``checkpoints/last.ckpt``, else the path
    (a .ckpt, an exported .safetensors, a diffusers folder)."""
    path = Path(path).expanduser()
    last = path / "checkpoints" / "last.ckpt"
    return last if path.is_dir() and last.is_file() else path


def run_dir_of(ckpt: Path) -> Path:
    """Where a model's results go (samples/, eval/, viz/): the run folder of
    ``<run>/checkpoints/<name>.ckpt``, the folder of an exported file, or a diffusers folder
    itself."""
    if ckpt.is_dir():
        return ckpt
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def run_task(ckpt: Path) -> Task | None:
    """What the run of ``ckpt`` trained, from its ``.hydra/config.yaml`` (cheap: the checkpoint
    is not opened); a diffusion model when the file says nothing, None for an unknown task."""
    import yaml

    try:
        text = (ckpt.parent.parent / ".hydra" / "config.yaml").read_text()
        config = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        config = None
    name = config.get("task") if isinstance(config, dict) else None
    return TASKS.get(str(name)) if name is not None else DIFFUSION


def shown(path: Path) -> str:
    """``path`` as messages show it: relative to the working folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


@dataclass(frozen=True)
class NewestRun:
    """The run a command takes when it is given none (:func:`newest_run`): ``checkpoint``, the
    ``last.ckpt`` written last among the ``count`` runs of ``task`` under ``roots``."""

    checkpoint: Path
    count: int
    roots: tuple[Path, ...]
    task: Task

    def line(self, key: str, lead: str | None = None) -> str:
        """The one line that says which run was picked and why; ``key`` is the setting that
        picks another, ``lead`` what is done with it (default "using the newest <task> run")::

            using the newest diffusion run outputs/2026-12-07/10-00-00 (checkpoints/last.ckpt
            written 2026-12-07 10:05:12; newest of 3 diffusion runs under outputs/ and
            multirun/; ckpt=<path> picks another)
        """
        written = datetime.fromtimestamp(self.checkpoint.stat().st_mtime)
        where = " and ".join(f"{shown(r).rstrip('/')}/" for r in self.roots)
        runs = f"{self.task.name} run{'s' if self.count != 1 else ''}"
        among = f"newest of {self.count} {runs}" if self.count > 1 else f"the only {runs}"
        run_dir = self.checkpoint.parent.parent
        return (f"{lead or f'using the newest {self.task.name} run'} {shown(run_dir)} "
                f"({self.checkpoint.relative_to(run_dir)} written "
                f"{written:%Y-%m-%d %H:%M:%S}; {among} under {where}; {key}=<path> picks "
                "another)")

    def say(self, key: str, lead: str | None = None) -> Path:
        """Print :meth:`line` on the console (stderr); returns the checkpoint."""
        console.print(self.line(key, lead), markup=False, highlight=False)
        return self.checkpoint

    def read(self, key: str = "ckpt") -> LoadedRun:
        """The checkpoint, read (:func:`load_checkpoint`), holding :meth:`line` as ``picked``:
        :func:`run_to_use` says it when the command acts, after its checks (a refusal stays
        one line, which names the file)."""
        run = load_checkpoint(self.checkpoint)
        run.picked = self.line(key)
        return run


def newest_run(roots: Sequence[Path], exclude: Path | None = None, task: Task = DIFFUSION,
               key: str = "ckpt") -> NewestRun:
    """The one rule by which a command picks a run it is not given (docs/commands.md): of the
    run folders under ``roots`` (``runs_root`` and ``multirun/``, :func:`run_roots`) holding a
    ``checkpoints/last.ckpt`` and trained for ``task`` (their ``.hydra/config.yaml``), the one
    whose last.ckpt was written last (its modification time). The folder ``exclude`` (the run
    that is asking) is skipped. A smoke run (``trainer.fast_dev_run``) saves no last.ckpt, so
    it is never picked. ``key`` is the asking command's checkpoint key, for the hint."""
    skip = exclude.resolve() if exclude is not None else None
    found = [p for r in roots if r.is_dir() for p in r.rglob("checkpoints/last.ckpt")
             if skip is None or skip not in p.resolve().parents]
    mine = sorted((p for p in found if run_task(p) is task), key=lambda p: p.stat().st_mtime,
                  reverse=True)
    if not mine:
        where = " or ".join(str(r) for r in roots)
        raise CheckpointError(f"no {task.run_label} found under {where}; run "
                              f"`{task.train_command}` first or pass {key}=<path to a .ckpt>")
    return NewestRun(mine[0], len(mine), tuple(roots), task)


def run_roots(runs_root: str | Path) -> list[Path]:
    """Where trained runs are looked for: ``runs_root`` and Hydra's ``multirun``."""
    return [Path(runs_root), Path("multirun")]


def run_to_use(ckpt: str | None, runs_root: str, run: LoadedRun | None = None) -> LoadedRun:
    """The run a command works on, read once: ``run`` when the command's check already read it,
    else the checkpoint of ``ckpt=`` (a run folder: its last.ckpt) or the newest run's
    (:func:`newest_run`), read now. A run the command picked itself is named on the console
    (:meth:`NewestRun.line`), once."""
    if run is None:
        run = load_checkpoint(checkpoint_of(str(ckpt))) if ckpt else \
            newest_run(run_roots(runs_root)).read()
    if run.picked is not None:
        console.print(run.picked, markup=False, highlight=False)
        run.picked = None  # said
    return run


LOCK = "run.lock"


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


RESULT = "result.json"


class RunClock:
    """Wall time of this attempt, from construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite scalar values of Lightning's ``callback_metrics``, as floats."""
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):  # a tensor of several values
            continue
        if math.isfinite(number):
            out[key] = number
    return out


def _previous(run_dir: Path) -> dict[str, Any]:
    try:
        found = json.loads((run_dir / RESULT).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_result(run_dir: Path, trainer: Any, checkpoint: Path, clock: RunClock,
                 status: str, overrides: Sequence[str] = ()) -> Path:
    """Write ``<run_dir>/result.json`` for ``trainer``'s run, started with ``overrides``::

        {"status": "done", "step": 1000, "max_steps": 1000, "loss": 0.0312, "fid_proxy": null,
         "metrics": {"train/loss": 0.0312, ...}, "checkpoint": ".../last.ckpt", "run_dir": "...",
         "overrides": ["schedule=cosine"], "wall_time_s": 123.4, "attempts": 1,
         "finished_at": "2026-11-26T05:10:00"}

    ``wall_time_s`` and ``attempts`` add up over the attempts of a run that continued in its
    folder (``resume``, a SLURM requeue). ``diffcli sweep-summary`` ranks a sweep by them."""
    from diffcli.lit.fid_callback import METRIC as FID_PROXY

    metrics = scalar_metrics(dict(trainer.callback_metrics))
    before = _previous(run_dir)
    result = {
        "status": status,
        "step": int(trainer.global_step),
        "max_steps": int(trainer.max_steps),
        "loss": metrics.get("train/loss"),
        "fid_proxy": metrics.get(FID_PROXY),
        "metrics": metrics,
        "checkpoint": str(checkpoint.resolve()),
        "run_dir": str(run_dir.resolve()),
        "overrides": list(overrides),
        "wall_time_s": round(float(before.get("wall_time_s") or 0.0) + clock.seconds(), 3),
        "attempts": int(before.get("attempts") or 0) + 1,
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    return atomic_write_text(run_dir / RESULT, dumps_json(result))


def write_outcome(run_dir: Path, status: str, error: str, overrides: Sequence[str] = (),
                  job_num: int | None = None, exit_code: int | None = None) -> Path:
    """Record in ``<run_dir>/result.json`` a run that ended without finishing: ``status``
    ("failed", "interrupted"), its ``error`` line, the sweep job's number and overrides, over
    what an earlier attempt recorded (its step, loss and checkpoint stay)::

        {"status": "failed", "error": "training diverged at step 2: ...", "job_num": 1,
         "exit_code": 1, "overrides": ["optimizer.lr=1e30"], "finished_at": "..."}
    """
    result = {**_previous(run_dir), "status": status, "error": error, "job_num": job_num,
              "exit_code": exit_code, "overrides": list(overrides),
              "finished_at": datetime.now().isoformat(timespec="seconds")}
    run_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(run_dir / RESULT, dumps_json(result))
