"""DDIM sampling (Song et al. 2021, eq. 12): deterministic for eta=0, DDPM-like for eta=1."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.forward import eps_from_x0
from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    Sampler,
    SamplerStep,
    StepCallback,
    abar_pair,
    batch_t,
    randn_like,
)


@dataclass(frozen=True)
class DDIM(Sampler):
    """x_s = sqrt(abar_s) x0_hat + sqrt(1 - abar_s - sigma^2) eps_hat + sigma z, with
    sigma = eta sqrt((1 - abar_s)/(1 - abar_t)) sqrt(1 - abar_t/abar_s) (Song et al. 2021, eq. 16).
    ``steps`` defaults to 50 here; at the last step abar_s = 1, so the output is x0_hat.
    """

    steps: int | None = 50
    eta: float = 0.0

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        x = noise
        ts = self.timesteps(model.schedule)
        for i, t in enumerate(ts):
            abar_t, abar_s = abar_pair(model.schedule, ts, i)
            pred = model(x, batch_t(t, x))
            x0, eps = pred.x0, pred.eps
            if self.clip_denoised or self.dynamic_threshold is not None:
                x0 = self.denoised(x0)
                eps = eps_from_x0(x, x0, torch.full_like(x0[:1], abar_t))
            if callback is not None:
                callback(SamplerStep(i, len(ts), t, x, x0))
            sigma = self.eta * math.sqrt((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s))
            x = math.sqrt(abar_s) * x0 + math.sqrt(max(1 - abar_s - sigma**2, 0.0)) * eps
            if sigma > 0:
                x = x + sigma * randn_like(x, generator)
        return x
