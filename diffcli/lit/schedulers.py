"""Learning-rate schedules, as factories of ``torch.optim.lr_scheduler.LambdaLR`` (stepped once
per optimizer step). Configs give them with ``_partial_: true``; the module passes the optimizer.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up: ``min(1, (step + 1) / warmup_steps)`` (1 without warm-up)."""
    return min(1.0, (step + 1) / max(warmup_steps, 1))


def linear_warmup(optimizer: Optimizer, warmup_steps: int = 0) -> LambdaLR:
    """The peak rate reached linearly over ``warmup_steps`` steps, then constant (DDPM, Ho et
    al. 2020, App. B: 5000 warm-up steps on CIFAR-10)."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    return LambdaLR(optimizer, lambda step: warmup_factor(step, warmup_steps))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int = 0, total_steps: int = 1000,
                  min_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up, then a cosine decay from the peak to ``min_ratio`` x peak at
    ``total_steps`` (Loshchilov & Hutter 2017, without restarts)."""
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_ratio <= 1.0:
        raise ValueError(f"warmup_cosine needs warmup_steps >= 0, total_steps >= 1 and "
                         f"0 <= min_ratio <= 1, got {warmup_steps}, {total_steps}, {min_ratio}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return warmup_factor(step, warmup_steps)
        progress = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)
