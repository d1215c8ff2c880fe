"""DDIM sampling (Song et al. 2021, eq. 12): deterministic for eta=0, DDPM-like for eta=1."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.process import eps_from_x0
from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    Sampler,
    SamplerStep,
    StepCallback,
    check,
    randn_like,
)


@dataclass(frozen=True)
class DDIM(Sampler):
    """x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z, with
    sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s) (Song et al. 2021, eq. 16),
    for consecutive grid points t > s. Any grid: alpha-bar = 1 / (1 + sigma_grid^2).
    ``steps`` defaults to 50 here; at the last step abar_s = 1, so the output is x0_hat.
    """

    steps: int | None = 50
    eta: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.eta, int | float) and not isinstance(self.eta, bool)
              and math.isfinite(self.eta) and self.eta >= 0, f"eta must be >= 0, got {self.eta!r}")

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        grid = self.make_grid(model.schedule)
        x = noise
        for i in range(len(grid)):
            abar_t, abar_s = grid.alphas_cumprod[i], grid.alphas_cumprod[i + 1]
            pred = model.predict(x, grid.sigmas[i])
            x0, eps = pred.x0, pred.eps
            if self.clip_denoised or self.dynamic_threshold is not None:
                x0 = self.denoised(x0)
                eps = eps_from_x0(x, x0, torch.full_like(x0[:1], abar_t))
            if callback is not None:
                callback(SamplerStep(i, len(grid), grid.timesteps[i], x, x0))
            sigma = self.eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
            x = math.sqrt(abar_s) * x0 + math.sqrt(max(1 - abar_s - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * randn_like(x, generator)
        return x
