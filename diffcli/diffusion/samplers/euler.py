"""Euler's method on the probability-flow ODE, Karras sigma grid (Karras et al. 2022, Alg. 1
without the correction step)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.samplers.base import Denoiser, Generator, SamplerStep, StepCallback
from diffcli.diffusion.samplers.karras import KarrasSampler, denoise, to_xbar


@dataclass(frozen=True)
class Euler(KarrasSampler):
    """xbar_{i+1} = xbar_i + (sigma_{i+1} - sigma_i) (xbar_i - D(xbar_i; sigma_i)) / sigma_i.

    Deterministic, first order, one network evaluation per step.
    """

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        sigmas = self.sigmas(model.schedule)
        n = len(sigmas) - 1
        x = to_xbar(noise, sigmas[0])
        for i in range(n):
            sigma, nxt = sigmas[i], sigmas[i + 1]
            x0 = denoise(model, x, sigma, self.denoised)
            if callback is not None:
                t = round(model.schedule.sigma_to_t(sigma))
                callback(SamplerStep(i, n, t, x / math.sqrt(1 + sigma**2), x0))
            x = x + (nxt - sigma) * (x - x0) / sigma
        return x
