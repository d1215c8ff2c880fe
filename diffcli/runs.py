"""Where runs live and what is in them: the checkpoint a path names, the newest run of a task,
a run's folder (its lock, its ``result.json``).

Reading a checkpoint is :mod:`diffcli.checkpoint`'s job; rebuilding its network is
:mod:`diffcli.restore`'s. Plain paths and typed arguments only: no Hydra, no Lightning here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from diffcli.checkpoint import LoadedRun, load_checkpoint
from diffcli.errors import CheckpointError
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
        config = yaml.safe_load((ckpt.parent.parent / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        config = None
    name = config.get("task") if isinstance(config, dict) else None
    return TASKS.get(str(name)) if name is not None else DIFFUSION


def find_latest_checkpoint(roots: Sequence[Path], exclude: Path | None = None,
                           task: Task = DIFFUSION, key: str = "ckpt") -> Path:
    """The newest ``checkpoints/last.ckpt`` of a ``task`` run (a diffusion model by default)
    under any of ``roots`` (Hydra run dirs), ignoring any inside the folder ``exclude`` (e.g.
    the run that is asking). ``key`` is the asking command's checkpoint key, for the hint."""
    skip = exclude.resolve() if exclude is not None else None
    found = [p for r in roots if r.is_dir() for p in r.rglob("checkpoints/last.ckpt")
             if skip is None or skip not in p.resolve().parents]
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        if run_task(path) is task:
            return path
    where = " or ".join(str(r) for r in roots)
    raise CheckpointError(f"no {task.run_label} found under {where}; run `{task.train_command}` "
                          f"first or pass {key}=<path to a .ckpt>")


def run_roots(runs_root: str | Path) -> list[Path]:
    """Where trained runs are looked for: ``runs_root`` and Hydra's ``multirun``."""
    return [Path(runs_root), Path("multirun")]




def checkpoint_to_use(ckpt: str | None, runs_root: str) -> Path:
    """``ckpt=`` as given (a run folder: its last.ckpt), else the newest run's last.ckpt (said
    on the console)."""
    if ckpt:
        return checkpoint_of(str(ckpt))
    found = find_latest_checkpoint(run_roots(runs_root))
    console.print(f"using the newest run's checkpoint: {found}")
    return found


def run_to_use(ckpt: str | None, runs_root: str, run: LoadedRun | None = None) -> LoadedRun:
    """The run a command works on, read once: ``run`` when the command's check already read it
    (the newest run's is said on the console, as :func:`checkpoint_to_use` says it), else the
    checkpoint of ``ckpt=`` or the newest run's, read now."""
    if run is None:
        return load_checkpoint(checkpoint_to_use(ckpt, runs_root))
    if not ckpt:
        console.print(f"using the newest run's checkpoint: {run.path}")
    return run
