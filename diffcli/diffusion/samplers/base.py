"""The one sampler interface, the denoiser it drives, and shared timestep helpers.

Samplers are frozen dataclasses of hyperparameters with a single method
``sample(model, noise, *, generator=None, callback=None)``; the network is never owned.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import torch
from torch import Tensor

from diffcli.diffusion.forward import Parameterization, Prediction, alpha_bar, to_x0_eps
from diffcli.diffusion.schedules import NoiseSchedule

Network = Callable[[Tensor, Tensor], Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None


@dataclass(frozen=True, eq=False)
class Denoiser:
    """A network of a known parameterization over a known schedule.

    ``denoiser(x_t, t)`` returns the (x0, eps) estimates for x_t: (B, ...) and t: (B,) long
    (or float, for samplers that evaluate between the training timesteps).
    """

    net: Network
    schedule: NoiseSchedule
    prediction: Parameterization = Parameterization.EPS

    def __call__(self, x_t: Tensor, t: Tensor) -> Prediction:
        abar = alpha_bar(self.schedule, t, x_t)
        return to_x0_eps(self.net(x_t, t), self.prediction, x_t, abar)


class SamplerStep(NamedTuple):
    """What a sampler reports after each network evaluation (for progress bars and trajectories)."""

    index: int  # 0-based step number
    total: int  # number of steps
    t: int  # timestep index evaluated
    x_t: Tensor  # (B, ...) the state the network saw
    x0: Tensor  # (B, ...) its clean-data estimate


StepCallback = Callable[[SamplerStep], None]


class Spacing(str, Enum):
    """How ``steps`` timesteps are picked from 0..T-1 (Lin et al. 2024, Table 2)."""

    LEADING = "leading"
    TRAILING = "trailing"
    LINSPACE = "linspace"


def timestep_sequence(num_timesteps: int, steps: int,
                      spacing: Spacing | str = Spacing.TRAILING) -> list[int]:
    """``steps`` distinct timestep indices in 0..T-1, in decreasing order (the sampling order)."""
    T = num_timesteps
    if not 1 <= steps <= T:
        raise ValueError(f"steps must be between 1 and {T}, got {steps}")
    spacing = Spacing(spacing)
    if spacing is Spacing.LEADING:
        ts = [i * (T // steps) for i in range(steps)]
    elif spacing is Spacing.TRAILING:
        ts = [round(T - i * T / steps) - 1 for i in range(steps)]
    else:
        ts = [round(i * (T - 1) / max(steps - 1, 1)) for i in range(steps)]
    return sorted(set(ts), reverse=True)


def randn_like(x: Tensor, generator: Generator) -> Tensor:
    """Standard normal noise shaped like x. A list of generators draws sample i from generator i,
    so each sample depends only on its own seed, not on the batch it is in."""
    if generator is None or isinstance(generator, torch.Generator):
        dev = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    draws = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype)
             for g in generator]
    return torch.stack(draws).to(x.device)


def clip_x0(x0: Tensor, enabled: bool, limit: float = 1.0) -> Tensor:
    """Clip the clean-data estimate to [-limit, limit] when enabled (Ho et al. 2020, Sec. 3.3)."""
    return x0.clamp(-limit, limit) if enabled else x0


def dynamic_threshold(x0: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3): per sample, s = the
    ``percentile`` quantile of |x0|, s = max(s, 1); x0 -> clamp(x0, -s, s) / s. (B, ...)"""
    flat = x0.flatten(1).abs()
    s = torch.quantile(flat.float(), percentile, dim=1).to(x0.dtype).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


@dataclass(frozen=True)
class Sampler(ABC):
    """Base of all samplers: hyperparameters only; history lives in ``sample``'s loop."""

    steps: int | None = None  # None: one step per training timestep
    spacing: Spacing = Spacing.TRAILING
    clip_denoised: bool = False
    dynamic_threshold: float | None = None  # e.g. 0.995: Imagen's percentile; overrides clipping

    def denoised(self, x0: Tensor) -> Tensor:
        """The sampler's post-processing of x0_hat: dynamic thresholding or clipping, or none."""
        if self.dynamic_threshold is not None:
            return dynamic_threshold(x0, self.dynamic_threshold)
        return clip_x0(x0, self.clip_denoised)

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        """The decreasing timestep indices this sampler visits."""
        T = schedule.num_timesteps
        return timestep_sequence(T, self.steps or T, self.spacing)

    @abstractmethod
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        """Map x_T = ``noise`` (B, ...) to samples x_0 (B, ...)."""


def batch_t(t: int, x: Tensor) -> Tensor:
    """The scalar timestep t as a (B,) long tensor on x's device."""
    return torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)


def abar_pair(schedule: NoiseSchedule, ts: list[int], i: int) -> tuple[float, float]:
    """(alpha-bar at ts[i], alpha-bar at the next visited step); alpha-bar = 1 after the last."""
    ab = schedule.alphas_cumprod
    nxt = float(ab[ts[i + 1]]) if i + 1 < len(ts) else 1.0
    return float(ab[ts[i]]), nxt
