"""The forward process q(x_t | x_0) evaluated on a grid of schedules x images x timesteps."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from diffcli.diffusion.objectives.continuous import to_vp
from diffcli.diffusion.process import q_sample
from diffcli.diffusion.schedules import NoiseSchedule


def forward_grid(x0: Tensor, schedules: Sequence[NoiseSchedule], timesteps: Sequence[int],
                 noise: Tensor) -> Tensor:
    """x_t for every schedule, image and timestep, all from the same noise.

    q(x_t | x_0) = N(sqrt(abar_t) x0, (1 - abar_t) I) (Ho et al. 2020, eq. 4), drawn with
    :func:`diffcli.diffusion.process.q_sample` (the training code's own forward process) as
    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps. Image i uses the same eps = ``noise[i]`` for every
    schedule and every timestep, so the rows of one image differ only by their schedule.

    Args:
        x0: clean images (N, C, H, W), values in [-1, 1].
        schedules: S schedules; every timestep must lie in [0, T-1] of each.
        timesteps: K timestep indices (0-based, as in training).
        noise: eps ~ N(0, I), shape (N, C, H, W).

    Returns:
        x_t of shape (S, N, K, C, H, W), in ``x0``'s dtype.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have x0's shape {tuple(x0.shape)}")
    n, k = x0.shape[0], len(timesteps)
    t = torch.as_tensor(list(timesteps), dtype=torch.long).repeat(n)  # (N*K,) image-major
    x = x0.repeat_interleave(k, dim=0)  # (N*K, C, H, W)
    eps = noise.repeat_interleave(k, dim=0)
    rows = [q_sample(s, x, t, eps).reshape(n, k, *x0.shape[1:]) for s in schedules]
    return torch.stack(rows)


def sigma_grid(x0: Tensor, sigmas: Sequence[float], noise: Tensor) -> Tensor:
    """x0 noised to each noise level sigma, all from the same noise, in the variance-preserving
    scale the samplers step in: x = (x0 + sigma eps) / sqrt(1 + sigma^2)
    (:func:`~diffcli.diffusion.objectives.continuous.to_vp`). Every Gaussian forward process is
    this up to a factor at its sigma = s(t) / alpha(t) (Karras et al. 2022, Sec. 2): EDM's
    x0 + sigma eps, flow's (1 - t) x0 + t eps with sigma = t / (1 - t), the DDPM chain's x_t at
    alpha-bar_t = 1 / (1 + sigma^2) (:func:`forward_grid` draws the same picture there).

    Args:
        x0: clean images (N, C, H, W).
        sigmas: K noise levels >= 0 (0: the clean images).
        noise: eps ~ N(0, I), shape (N, C, H, W), image i's the same in every column.

    Returns:
        (1, N, K, C, H, W) in ``x0``'s dtype, shaped as :func:`forward_grid`'s one-schedule grid.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise {tuple(noise.shape)} must have x0's shape {tuple(x0.shape)}")
    n, k = x0.shape[0], len(sigmas)
    sigma = torch.as_tensor(list(sigmas), dtype=torch.float64).repeat(n)  # (N*K,) image-major
    x = to_vp(x0.repeat_interleave(k, dim=0), noise.repeat_interleave(k, dim=0), sigma)
    return x.reshape(1, n, k, *x0.shape[1:])


def evenly_spaced(count: int, total: int) -> list[int]:
    """``min(count, total)`` distinct indices from 0..total-1, evenly spaced, first and last
    included (e.g. the GIF frames' timesteps, or the reverse picture's columns)."""
    if total < 1 or count < 1:
        raise ValueError(f"need count >= 1 and total >= 1, got {count}, {total}")
    return sorted({int(i) for i in np.linspace(0, total - 1, min(count, total)).round()})
