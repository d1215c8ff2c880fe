"""Shared pieces of the Karras et al. (2022) samplers: the sigma grid and the denoiser D(x; sigma).

These samplers integrate in the variance-exploding form xbar = x_t / sqrt(abar_t), whose noise
level is sigma = sqrt((1 - abar)/abar), so that dxbar/dsigma = (xbar - D(xbar; sigma)) / sigma
(Karras et al. 2022, eq. 1 with s(t) = 1, sigma(t) = t).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.samplers.base import Denoiser, Sampler
from diffcli.diffusion.schedules import NoiseSchedule


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> list[float]:
    """sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, then sigma_N = 0
    (Karras et al. 2022, eq. 5). N + 1 decreasing values."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    ramp = [i / max(steps - 1, 1) for i in range(steps)]
    return [(a + r * (b - a)) ** rho for r in ramp] + [0.0]


def denoise(model: Denoiser, xbar: Tensor, sigma: float,
            post: Callable[[Tensor], Tensor]) -> Tensor:
    """D(xbar; sigma): the network's x0 estimate at noise level sigma, post-processed by
    ``post`` (clipping, thresholding). Between training timesteps the timestep is interpolated
    in log sigma. xbar: (B, ...) -> (B, ...)"""
    x_t = xbar / math.sqrt(1 + sigma**2)
    t = torch.full((xbar.shape[0],), model.schedule.sigma_to_t(sigma), dtype=torch.float64,
                   device=xbar.device)
    return post(model(x_t, t).x0)


def to_xbar(noise: Tensor, sigma_max: float) -> Tensor:
    """x_T ~ N(0, I) in the VP scale -> xbar = x_T / sqrt(abar_T) = x_T sqrt(1 + sigma_max^2)."""
    return noise * math.sqrt(1 + sigma_max**2)


@dataclass(frozen=True)
class KarrasSampler(Sampler):
    """Base of the samplers that step along the Karras sigma grid (``steps`` sigmas, then 0)."""

    steps: int | None = 18
    rho: float = 7.0
    sigma_max: float | None = 80.0  # EDM's choice; None: the schedule's largest sigma

    def sigmas(self, schedule: NoiseSchedule) -> list[float]:
        """The N + 1 decreasing noise levels, from min(sigma_max, the schedule's largest sigma)
        down to the smallest, then 0. Starting below sigma_T ignores the data mean's share of
        x_T, an error of about |mean| / sigma_max."""
        sig = schedule.sigmas
        top = float(sig[-1]) if self.sigma_max is None else min(self.sigma_max, float(sig[-1]))
        return karras_sigmas(float(sig[0]), top, self.steps or 18, self.rho)

    def timesteps(self, schedule: NoiseSchedule) -> list[int]:
        """The nearest training timestep of each visited sigma (for reporting)."""
        return [round(schedule.sigma_to_t(s)) for s in self.sigmas(schedule)[:-1]]
