"""``<run dir>/result.json``: what a training run ended with, for sweep tables.

Written when a run finishes or is stopped (and saved)::

    {"status": "done", "step": 1000, "max_steps": 1000, "loss": 0.0312, "fid_proxy": null,
     "metrics": {"train/loss": 0.0312, ...}, "checkpoint": ".../last.ckpt", "run_dir": "...",
     "overrides": ["schedule=cosine"], "wall_time_s": 123.4, "attempts": 1,
     "finished_at": "2026-11-26T05:10:00"}

``wall_time_s`` and ``attempts`` add up over the attempts of a run that continued in its
folder (``resume``, a SLURM requeue). ``diffcli sweep-summary`` ranks a sweep by them.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from diffcli.files import atomic_write_text, dumps_json
from diffcli.lit.fid_callback import METRIC as FID_PROXY

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


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def write_result(run_dir: Path, trainer: Any, checkpoint: Path, clock: RunClock,
                 status: str) -> Path:
    """Write ``<run_dir>/result.json`` for ``trainer``'s run (see the module docstring)."""
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
        "overrides": _overrides(),
        "wall_time_s": round(float(before.get("wall_time_s") or 0.0) + clock.seconds(), 3),
        "attempts": int(before.get("attempts") or 0) + 1,
        "finished_at": datetime.now().isoformat(timespec="seconds"),
    }
    return atomic_write_text(run_dir / RESULT, dumps_json(result))


__all__ = ["RESULT", "RunClock", "scalar_metrics", "write_result"]
