"""Heun's 2nd-order sampler with optional stochastic churn (Karras et al. 2022, Algorithm 2)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    SamplerStep,
    StepCallback,
    randn_like,
)
from diffcli.diffusion.samplers.karras import KarrasSampler, denoise, to_xbar


@dataclass(frozen=True)
class Heun(KarrasSampler):
    """Euler step plus trapezoidal correction on the Karras sigma grid (eq. 5, rho = 7).

    With ``s_churn`` > 0, noise first raises sigma to sigma (1 + gamma),
    gamma = min(s_churn / N, sqrt(2) - 1) for sigma in [s_tmin, s_tmax] (Algorithm 2, lines 4-6).
    NFE = 2N - 1: the last step, to sigma = 0, is a plain Euler step.
    """

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        sigmas = self.sigmas(model.schedule)
        n = len(sigmas) - 1
        x = to_xbar(noise, sigmas[0])
        for i in range(n):
            sigma, nxt = sigmas[i], sigmas[i + 1]
            in_range = self.s_tmin <= sigma <= self.s_tmax
            gamma = min(self.s_churn / n, math.sqrt(2) - 1) if in_range else 0.0
            sigma_hat = sigma * (1 + gamma)
            if gamma > 0:
                x = x + math.sqrt(sigma_hat**2 - sigma**2) * self.s_noise * randn_like(x, generator)
            x0 = denoise(model, x, sigma_hat, self.denoised)
            if callback is not None:
                t = round(model.schedule.sigma_to_t(sigma_hat))
                callback(SamplerStep(i, n, t, x / math.sqrt(1 + sigma_hat**2), x0))
            d = (x - x0) / sigma_hat
            x_next = x + (nxt - sigma_hat) * d
            if nxt > 0:
                d2 = (x_next - denoise(model, x_next, nxt, self.denoised)) / nxt
                x_next = x + (nxt - sigma_hat) * (d + d2) / 2
            x = x_next
        return x
