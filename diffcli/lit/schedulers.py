"""Learning-rate schedules, as factories of ``torch.optim.lr_scheduler.LambdaLR`` (stepped once
per optimizer step). Configs give them with ``_partial_: true``; the module passes the optimizer.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import lightning as L
from lightning.pytorch.callbacks import Timer
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: ``min(1, (step + 1) / warmup_steps)`` (1 without warm-up)."""
    return min(1.0, (step + 1) / max(warmup_steps, 1))


def linear_warmup(optimizer: Optimizer, warmup_steps: int = 0) -> LambdaLR:
    """The peak rate reached linearly over ``warmup_steps`` steps, then constant (DDPM, Ho et
    al. 2020, App. B: 5000 warm-up steps on CIFAR-10)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return LambdaLR(optimizer, lambda step: warmup_factor(step, warmup_steps))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int = 0, total_steps: int | None = 1000,
                  min_ratio: float = 0.0,
                  progress: Callable[[int], float] | None = None) -> LambdaLR:
    """Linear warm-up, then a cosine decay from the peak to ``min_ratio`` x peak at the end of
    the run (Loshchilov & Hutter 2017, without restarts).

    The end is ``total_steps``; when that is None or -1 (a run bounded by ``trainer.max_time``
    rather than by steps), ``progress(step)`` gives the fraction of the run done (the modules
    pass :func:`run_progress`, which counts wall-clock time), the factor is the warm-up ramp
    times the cosine of that fraction, and the rate reaches ``min_ratio`` as the budget ends.
    """
    timed = total_steps is None or total_steps == -1
    if warmup_steps < 0 or (not timed and total_steps < 1) or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"warmup_cosine needs warmup_steps >= 0, total_steps >= 1 (or -1: "
                         f"until trainer.max_time) and 0 <= min_ratio <= 1, got {warmup_steps}, "
                         f"{total_steps}, {min_ratio}")
    if timed and progress is None:
        raise ValueError("warmup_cosine with total_steps=-1 decays over the run's time budget, "
                         "but no progress function was given")

    def cosine(done: float) -> float:
        done = min(1.0, max(0.0, done))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * done))

    def factor(step: int) -> float:
        if timed:  # the warm-up ramp times the decay over the budget: continuous, ends at min
            return warmup_factor(step, warmup_steps) * cosine(progress(step))
        if step < warmup_steps:
            return warmup_factor(step, warmup_steps)
        return cosine((step - warmup_steps) / max(total_steps - warmup_steps, 1))

    return LambdaLR(optimizer, factor)


def build_lr_scheduler(make_lr_scheduler: Callable[..., LRScheduler], optimizer: Optimizer,
                       progress: Callable[[int], float] | None = None) -> LRScheduler:
    """``make_lr_scheduler(optimizer)``, with ``progress=`` too for the factories that take it
    (:func:`warmup_cosine`); without one, a step-only stand-in (0 until the end is known)."""
    if "progress" not in inspect.signature(make_lr_scheduler).parameters:
        return make_lr_scheduler(optimizer)
    return make_lr_scheduler(optimizer, progress=progress or (lambda step: 0.0))


def budget_timer(trainer: L.Trainer) -> Timer | None:
    """Lightning's Timer of ``trainer.max_time`` (None when the run has no time limit)."""
    timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)
    return timer if timer is not None and timer._duration else None


def run_progress(trainer: L.Trainer, step: int) -> float:
    """The fraction of the run done after ``step`` optimizer steps: the larger of the step
    fraction (``trainer.max_steps`` / ``max_epochs``, when finite) and the time fraction
    (``trainer.max_time``: Lightning's Timer), in [0, 1]."""
    done = 0.0
    total = trainer.estimated_stepping_batches
    if math.isfinite(total) and total > 0:
        done = step / total
    timer = budget_timer(trainer)
    if timer is not None:
        done = max(done, timer.time_elapsed("train") / timer._duration)
    return min(1.0, done)
