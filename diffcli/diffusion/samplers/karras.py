"""Shared pieces of the samplers of Karras et al. (2022), which integrate in the
variance-exploding scale.

They move xbar = x_t / sqrt(abar_t), whose noise level is sigma = sqrt((1 - abar)/abar), so that
the probability-flow ODE reads dxbar/dsigma = (xbar - D(xbar; sigma)) / sigma (Karras et al. 2022,
eq. 1 with s(t) = 1, sigma(t) = t, and eq. 3), with D the wrapped network
(:meth:`Denoiser.denoise`). Any grid works; by default they step on the Karras grid (eq. 5).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

from diffcli.diffusion.grids import GridKind
from diffcli.diffusion.samplers.base import Sampler


def to_xbar(noise: Tensor, sigma_max: float) -> Tensor:
    """x_T ~ N(0, I) in the VP scale -> xbar = x_T / sqrt(abar_T) = x_T sqrt(1 + sigma_max^2).
    (B, ...)"""
    return noise * math.sqrt(1 + sigma_max**2)


def to_vp(xbar: Tensor, sigma: float) -> Tensor:
    """xbar -> x_t = xbar sqrt(abar) = xbar / sqrt(1 + sigma^2), the state the network sees
    (for callbacks). (B, ...)"""
    return xbar / math.sqrt(1 + sigma**2)


@dataclass(frozen=True)
class KarrasSampler(Sampler):
    """Base of the samplers in the xbar scale: by default ``steps`` = 18 points of the Karras
    grid (eq. 5, rho = 7) from sigma_max = 80 (EDM's choice; None: the schedule's largest
    sigma) down to the schedule's smallest sigma, then 0. Starting below sigma_T ignores the
    data mean's share of x_T, an error of about |mean| / sigma_max."""

    steps: int | None = 18
    grid: GridKind = GridKind.KARRAS
    sigma_max: float | None = 80.0
