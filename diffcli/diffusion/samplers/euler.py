"""Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without the
correction step), on any grid (default: the Karras sigma grid)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.samplers.base import Denoiser, Generator, SamplerStep, StepCallback
from diffcli.diffusion.samplers.karras import KarrasSampler, to_vp, to_xbar


@dataclass(frozen=True)
class Euler(KarrasSampler):
    """xbar_{i+1} = xbar_i + (sigma_{i+1} - sigma_i) (xbar_i - D(xbar_i; sigma_i)) / sigma_i.

    Deterministic, first order, one network evaluation per step. On a timestep grid this is
    DDIM with eta = 0 (Song et al. 2021, eq. 14). The ODE needs only D, so a learned variance
    (``Prediction.var_frac``) is ignored.
    """

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        grid = self.make_grid(model.schedule)
        sigmas, n = grid.sigmas, len(grid)
        x = to_xbar(noise, sigmas[0])
        for i in range(n):
            sigma, nxt = sigmas[i], sigmas[i + 1]
            x0 = self.denoised(model.denoise(x, sigma))
            if callback is not None:
                callback(SamplerStep(i, n, grid.timesteps[i], to_vp(x, sigma), x0))
            x = x + (nxt - sigma) * (x - x0) / sigma
        return x
