"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any subsequence of timesteps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from diffcli.diffusion.forward import posterior_coefficients
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


class Variance(str, Enum):
    """sigma_t^2 = beta_t (upper bound) or beta-tilde_t (lower bound) (Ho et al. 2020, Sec. 3.2)."""

    BETA = "beta"
    BETA_TILDE = "beta_tilde"


@dataclass(frozen=True)
class DDPM(Sampler):
    """x_{t-1} = mu-tilde(x_t, x0_hat) + sigma_t z (Ho et al. 2020, eqs. 6-7 and Algorithm 2).

    With ``steps`` < T the chain is respaced (Nichol & Dhariwal 2021, Sec. 4): between visited
    steps s < t, beta = 1 - abar_t / abar_s. No noise is added at the last step.
    """

    variance: Variance = Variance.BETA_TILDE

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        x = noise
        ts = self.timesteps(model.schedule)
        for i, t in enumerate(ts):
            abar_t, abar_prev = abar_pair(model.schedule, ts, i)
            x0 = self.denoised(model(x, batch_t(t, x)).x0)
            if callback is not None:
                callback(SamplerStep(i, len(ts), t, x, x0))
            c0, ct, var = posterior_coefficients(torch.tensor(abar_t, dtype=torch.float64),
                                                 torch.tensor(abar_prev, dtype=torch.float64))
            mean = float(c0) * x0 + float(ct) * x
            if i + 1 == len(ts):
                return mean
            if Variance(self.variance) is Variance.BETA:
                var = 1 - abar_t / abar_prev
            x = mean + math.sqrt(float(var)) * randn_like(x, generator)
        return x
