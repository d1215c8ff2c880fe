"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any subsequence of timesteps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from diffcli.diffusion.grids import Grid, GridKind
from diffcli.diffusion.process import posterior_coefficients
from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    Sampler,
    SamplerStep,
    StepCallback,
    _member,
    check,
    randn_like,
)
from diffcli.diffusion.schedules import NoiseSchedule


class Variance(str, Enum):
    """sigma_t^2 = beta_t (upper bound) or beta-tilde_t (lower bound) (Ho et al. 2020, Sec. 3.2)."""

    BETA = "beta"
    BETA_TILDE = "beta_tilde"


@dataclass(frozen=True)
class DDPM(Sampler):
    """x_{t-1} = mu-tilde(x_t, x0_hat) + sigma_t z (Ho et al. 2020, eqs. 6-7 and Algorithm 2).

    With ``steps`` < T the chain is respaced (Nichol & Dhariwal 2021, Sec. 4): between visited
    steps s < t, beta = 1 - abar_t / abar_s. No noise is added at the last step. The chain is
    the trained one: its grid must lie on training timesteps (a timestep grid, or
    ``custom_timesteps`` of integers).
    """

    variance: Variance = Variance.BETA_TILDE

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "variance", _member(Variance, self.variance, "variance"))
        check(self.grid not in (GridKind.KARRAS, GridKind.LOGSNR),
              f"grid={self.grid.value} is off the training timesteps, which DDPM's ancestral "
              "chain needs: use grid=leading|trailing|linspace|custom (or sampler=ddim eta=1)")
        ts = self.custom_timesteps or ()
        check(all(float(t).is_integer() for t in ts),
              f"custom_timesteps must be integers for DDPM (training timesteps), got {list(ts)}")

    def make_grid(self, schedule: NoiseSchedule) -> Grid:
        """The grid of :meth:`Sampler.make_grid`, refused unless on training timesteps."""
        grid = super().make_grid(schedule)
        check(grid.on_lattice, "custom_sigmas must be training timesteps' sigmas for DDPM: use "
                               "custom_timesteps (or sampler=ddim eta=1)")
        return grid

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        grid = self.make_grid(model.schedule)
        x, n = noise, len(grid)
        for i in range(n):
            abar_t, abar_prev = grid.alphas_cumprod[i], grid.alphas_cumprod[i + 1]
            x0 = self.denoised(model.predict(x, grid.sigmas[i]).x0)
            if callback is not None:
                callback(SamplerStep(i, n, grid.timesteps[i], x, x0))
            c0, ct, var = posterior_coefficients(torch.tensor(abar_t, dtype=torch.float64),
                                                 torch.tensor(abar_prev, dtype=torch.float64))
            mean = float(c0) * x0 + float(ct) * x
            if i + 1 == n:
                return mean
            if self.variance is Variance.BETA:
                var = 1 - abar_t / abar_prev
            x = mean + math.sqrt(float(var)) * randn_like(x, generator)
        return x
