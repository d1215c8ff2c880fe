"""Quiet surprises of a short ``diffcli train``, said in one line each before it starts: an LR
warm-up longer than the run (the rate never reaches ``optimizer.lr``; with the default cosine
schedule the decay never starts either), and callbacks whose step interval no step of the run
reaches (no preview grid, no ``step-N.ckpt``, no FID proxy).

Pure functions of plain numbers and dicts; :func:`note_short_run` reads them off the config, the
trainer and the datamodule. A run bounded by ``trainer.max_time`` alone has no known length and
gets no note; with a step or epoch limit too, the notes count that limit ("at most N steps").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig
from rich.console import Console

from diffcli.components import plain

# Each callback of the allowlist (components.COMPONENTS["callbacks"]) that takes every_n_steps:
# what the run lacks when no step of it reaches the interval. None: nothing, the workflow also
# does its work at the end (last.ckpt is saved after the last step and on a signal).
NEVER_FIRES: dict[str, str | None] = {
    "diffcli.lit.callbacks.last_checkpoint": None,
    "diffcli.lit.callbacks.snapshots": "no checkpoints/step-N.ckpt will be kept",
    "diffcli.lit.callbacks.EMASampleGrid": "no preview will be written",
    "diffcli.lit.phema.power_ema_snapshots": "only the end's EMA snapshot will be written",
    "diffcli.lit.fid_callback.fid_proxy": "no val/fid_proxy will be computed",
    "diffcli.lit.autoencoder_module.ReconstructionGrid": "no reconstruction grid will be written",
}
LIGHTNING_DEFAULT_EPOCHS = 1000  # Lightning's max_epochs with neither max_steps nor max_time


def steps_per_epoch(num_samples: int, batch_size: int, world: int = 1, accumulate: int = 1,
                    limit: int | float | None = None, drop_last: bool = True) -> int:
    """Optimizer steps in one epoch: each of ``world`` processes sees ceil(N / world) samples
    (the distributed sampler pads), in batches of ``batch_size`` (the last one dropped when
    short), cut by ``trainer.limit_train_batches`` (an int: that many batches; a float: that
    fraction), and one optimizer step per ``accumulate`` batches (the epoch's last batch steps
    too)."""
    per_rank = math.ceil(num_samples / max(world, 1))
    batches = per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)
    if isinstance(limit, int):
        batches = min(batches, limit)
    elif limit is not None:
        batches = int(batches * limit)
    return math.ceil(batches / max(accumulate, 1))


def run_steps(max_steps: int | None, max_epochs: int | None, per_epoch: int | None) -> int | None:
    """The optimizer steps a run takes at most: the smaller of ``max_steps`` (when > 0) and
    ``max_epochs`` x ``per_epoch`` (when both are known and max_epochs >= 0); None when neither
    bounds it (e.g. a run bounded by ``trainer.max_time`` alone)."""
    bounds = [] if max_steps is None or max_steps < 0 else [max_steps]
    if max_epochs is not None and max_epochs >= 0 and per_epoch is not None:
        bounds.append(max_epochs * per_epoch)
    return min(bounds) if bounds else None


def step_intervals(callbacks: Mapping[str, Any] | None) -> dict[str, tuple[int, str]]:
    """``callbacks.<name>.every_n_steps`` -> (its interval, what the run lacks when it never
    fires) for each entry of the callbacks group that is on and takes an interval (entries
    whose work is also done at the end, as last.ckpt, are left out)."""
    out: dict[str, tuple[int, str]] = {}
    for name, node in (callbacks or {}).items():
        if not isinstance(node, Mapping) or not isinstance(node.get("every_n_steps"), int):
            continue
        target = str(node.get("_target_"))
        lost = NEVER_FIRES.get(target, f"callbacks.{name} never runs")
        if lost is not None:
            out[f"callbacks.{name}.every_n_steps"] = (node["every_n_steps"], lost)
    return out


def short_run_notes(total_steps: int | None, warmup_steps: int | None,
                    intervals: Mapping[str, tuple[int, str]], start: int = 0,
                    timed: bool = False) -> list[str]:
    """One line for each surprise of a run of ``total_steps`` optimizer steps that starts at
    step ``start`` (a resumed run): a ``warmup_steps`` longer than the run (the LR factor
    (step + 1) / warmup_steps stays below 1), and each interval of ``intervals`` (dotted key ->
    (steps, what is lost)) that no step start+1..total_steps is a multiple of. ``timed``: the
    run may stop sooner (``trainer.max_time``). None steps: nothing is known, no note."""
    if total_steps is None or total_steps <= start:
        return []
    run = f"{'at most ' if timed else ''}{total_steps} steps"
    notes = []
    if warmup_steps and warmup_steps > total_steps:
        notes.append(f"lr_scheduler.warmup_steps={warmup_steps} is longer than the run ({run}): "
                     "the LR never reaches optimizer.lr; set lr_scheduler.warmup_steps="
                     f"{max(1, total_steps // 10)} (about 10% of the run) or fewer")
    for key, (every, lost) in intervals.items():
        if every < 1 or total_steps // every > start // every:
            continue  # it fires at least once
        where = f"is longer than the run ({run})" if start == 0 else \
            f"is reached by no step of the run ({start + 1}-{total_steps})"
        notes.append(f"{key}={every} {where}: {lost}; set {key}="
                     f"{max(1, (total_steps - start) // 3)}")
    return notes


def note_short_run(cfg: DictConfig, trainer: Any, dm: Any, start: int, console: Console) -> None:
    """Print :func:`short_run_notes` of this run (rank 0, before ``trainer.fit``); ``trainer``:
    the Lightning Trainer, ``dm``: the datamodule (its size and per-device batch)."""
    if not trainer.is_global_zero or trainer.fast_dev_run:
        return
    timed = cfg.trainer.get("max_time") not in (None, "")
    epochs = trainer.max_epochs
    if epochs is None:  # Lightning's default (applied only when fit starts)
        epochs = LIGHTNING_DEFAULT_EPOCHS if trainer.max_steps == -1 and not timed else -1
    per_epoch = steps_per_epoch(dm.num_samples, dm.batch_size, trainer.world_size,
                                trainer.accumulate_grad_batches, trainer.limit_train_batches,
                                getattr(dm, "drop_last", True))
    scheduler = plain(cfg.get("lr_scheduler"))
    warmup = scheduler.get("warmup_steps") if isinstance(scheduler, Mapping) else None
    for line in short_run_notes(run_steps(trainer.max_steps, epochs, per_epoch), warmup,
                                step_intervals(plain(cfg.get("callbacks"))), start, timed):
        console.print(f"[yellow]note[/]: {line}")
