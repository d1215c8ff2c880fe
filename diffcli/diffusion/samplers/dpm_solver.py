"""DPM-Solver++(2M): the multistep second-order solver in data prediction (Lu et al. 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    Sampler,
    SamplerStep,
    StepCallback,
    abar_pair,
    batch_t,
)


def _lambda(abar: float) -> float:
    """Half log-SNR: lambda = log(alpha / sigma) with alpha = sqrt(abar), sigma = sqrt(1 - abar)."""
    return 0.5 * (math.log(abar) - math.log1p(-abar))


@dataclass(frozen=True)
class DPMSolverPP2M(Sampler):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the visited timesteps.

    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D, with h = lambda_s - lambda_t and
    D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev, r = h_prev / h (D = x0_t on the first step).
    The last step goes to alpha-bar = 1 (lambda = inf) and is first order: it returns x0_hat.
    Deterministic; one network evaluation per step. ``steps`` defaults to 20.
    """

    steps: int | None = 20

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        x = noise
        ts = self.timesteps(model.schedule)
        x0_prev, h_prev = None, None
        for i, t in enumerate(ts):
            abar_t, abar_s = abar_pair(model.schedule, ts, i)
            x0 = self.denoised(model(x, batch_t(t, x)).x0)
            if callback is not None:
                callback(SamplerStep(i, len(ts), t, x, x0))
            if abar_s >= 1.0:
                return x0
            h = _lambda(abar_s) - _lambda(abar_t)
            d = x0
            if x0_prev is not None:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
            sigma_ratio = math.sqrt((1 - abar_s) / (1 - abar_t))
            x = sigma_ratio * x - math.sqrt(abar_s) * math.expm1(-h) * d
            x0_prev, h_prev = x0, h
        return x
