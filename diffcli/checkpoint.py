"""The checkpoint file's own facts, importing neither Lightning nor Hydra: where a checkpoint
keeps its self-description, writing one atomically, and finding non-finite weights in one.
(Reading and validating live in :mod:`diffcli.runs` for now.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffcli.files import atomic_write

CHECKPOINT_KEY = "diffcli"  # where the self-description of a checkpoint lives


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through :func:`diffcli.files.atomic_write`: a reader (or a run resumed
    after a SIGKILL or a power cut) sees the previous complete file or the new one."""
    atomic_write(path, lambda f: torch.save(obj, f))


def first_nonfinite(tensors: dict[str, Tensor]) -> str | None:
    """``"<name> holds N NaN/inf values"`` for the first floating tensor with a non-finite
    entry, None when all are finite."""
    for name, t in tensors.items():
        if isinstance(t, Tensor) and t.is_floating_point():
            bad = int((~torch.isfinite(t)).sum())
            if bad:
                return f"{name} holds {bad} NaN/inf value{'s' if bad > 1 else ''}"
    return None
