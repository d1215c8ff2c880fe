"""DDIM sampling (Song et al. 2021, eq. 12): deterministic for eta=0, DDPM-like for eta=1."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.grids import Grid
from diffcli.diffusion.process import eps_from_x0
from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    Sampler,
    SamplerStep,
    StepCallback,
    check,
    learned_variance,
    randn_like,
)


@dataclass(frozen=True)
class DDIM(Sampler):
    """x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z, with
    sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s) (Song et al. 2021, eq. 16),
    for consecutive grid points t > s. Any grid: alpha-bar = 1 / (1 + sigma_grid^2).
    ``steps`` defaults to 50 here; at the last step abar_s = 1, so the output is x0_hat.

    That sigma is eta sqrt(beta-tilde) of the step t -> s. For a model with learned variances
    (its predictions carry ``var_frac``, Nichol & Dhariwal 2021) and eta > 0, beta-tilde is
    replaced by the learned variance of eq. 15, exp(v log beta + (1 - v) log beta-tilde) with
    the step's beta and beta-tilde (:func:`~diffcli.diffusion.samplers.base.step_betas`), per
    element: sigma = eta sqrt(Sigma_learned); v = 0 is the fixed rule. As for eta > 1, a sigma^2
    above 1 - abar_s (possible when v > 0 on coarse grids) sets the eps coefficient to 0. The
    last step adds no noise; eta = 0 ignores var_frac.
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
            if pred.var_frac is not None and self.eta > 0 and i + 1 < len(grid):
                x = self.learned_step(x0, eps, grid, i, pred.var_frac, generator)
                continue
            sigma = self.eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
            x = math.sqrt(abar_s) * x0 + math.sqrt(max(1 - abar_s - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * randn_like(x, generator)
        return x

    def learned_step(self, x0: Tensor, eps: Tensor, grid: Grid, i: int, var_frac: Tensor,
                     generator: Generator) -> Tensor:
        """eq. 12 for step i with sigma = eta sqrt(Sigma_learned) (B, ...) of ``var_frac``
        (:func:`~diffcli.diffusion.samplers.base.learned_variance`). x0, eps: (B, ...)."""
        abar_s = grid.alphas_cumprod[i + 1]
        sigma = self.eta * learned_variance(grid, i, var_frac).sqrt()
        x = math.sqrt(abar_s) * x0 + (1 - abar_s - sigma**2).clamp(min=0).sqrt() * eps
        return x + sigma * randn_like(x, generator)
