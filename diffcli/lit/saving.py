"""Checkpoint files that are never half-written, and finding the one to resume from."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from diffcli.checkpoint import atomic_torch_save, first_nonfinite
from diffcli.errors import DiffcliError

LAST = "last.ckpt"
DIVERGED = "diverged.ckpt"


def divergence_hint(lr: float | None, clip: float | None) -> str:
    """What to change after a divergence, with the keys that set it (and their values now)."""
    now_lr = f" (now {lr:.3g})" if lr is not None else ""
    if clip:
        return (f"lower optimizer.lr{now_lr} or trainer.gradient_clip_val (now {clip:g}, "
                f"e.g. trainer.gradient_clip_val={clip / 2:g})")
    return f"lower optimizer.lr{now_lr} or clip gradients (trainer.gradient_clip_val=1.0)"


class TrainingDiverged(DiffcliError):
    """The loss or the weights became NaN or infinite."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: every save goes through :func:`atomic_torch_save`, a state with
    non-finite weights never replaces a checkpoint (it goes to ``diverged.ckpt`` beside it and
    training stops with :class:`TrainingDiverged`), and loads never unpickle code. ``read``
    reads a checkpoint for Lightning's restore (the command's reader, which hands back the
    file its checks already read)."""

    def __init__(self, read: Callable[[Path], dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.read = read

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        bad = first_nonfinite(checkpoint.get("state_dict", {}))
        if bad is not None:
            diverged = Path(path).with_name(DIVERGED)
            atomic_torch_save(checkpoint, diverged)
            raise TrainingDiverged(
                f"training diverged by step {checkpoint.get('global_step', '?')}: {bad}; "
                f"{Path(path).name} was left as it was and this state went to {diverged}; "
                f"{divergence_hint(None, None)}")
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if self.read is not None:
            return self.read(Path(path))
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete ``.*.tmp`` leftovers of saves that were killed mid-write."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            p.unlink(missing_ok=True)


class SnapshotCheckpoint(ModelCheckpoint):
    """Keeps ``step-N.ckpt`` files; its own class so that its state key never collides with the
    rolling ``last.ckpt`` callback's when both save every N steps."""
