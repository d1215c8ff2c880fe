"""Heun's 2nd-order sampler with optional stochastic churn (Karras et al. 2022, Algorithm 2), on
any grid (default: the Karras sigma grid)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    SamplerStep,
    StepCallback,
    check,
    randn_like,
)
from diffcli.diffusion.samplers.karras import (
    MAX_SIGMA_RATIO,
    KarrasSampler,
    check_max_ratio,
    corrects,
    euler_steps_note,
    heun_step,
    to_vp,
    to_xbar,
)
from diffcli.diffusion.schedules import NoiseSchedule


@dataclass(frozen=True)
class Heun(KarrasSampler):
    """Euler step plus trapezoidal correction (Algorithm 2, lines 7-10).

    With ``s_churn`` > 0, noise first raises sigma to sigma (1 + gamma),
    gamma = min(s_churn / N, sqrt(2) - 1) for sigma in [s_tmin, s_tmax] (Algorithm 2, lines 4-6),
    noise scaled by ``s_noise``. NFE = 2N - 1 (:meth:`nfe`): the last step, to sigma = 0, is a
    plain Euler step, and so is a step that shrinks sigma more than ``max_ratio``-fold (default
    10; null: none), where the correction diverges (:func:`~diffcli.diffusion.samplers.karras.
    heun_step`; a few-step logsnr or Karras grid from sigma_max = 157 has such steps: 3 logsnr
    steps threw samples 70 units off a mixture of radius 2); :meth:`notice` names them.
    A learned variance (``Prediction.var_frac``) is ignored: the ODE needs only D, and the churn
    noise is set by ``s_churn``, not by the model.
    """

    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = float("inf")
    s_noise: float = 1.0
    max_ratio: float | None = MAX_SIGMA_RATIO

    def __post_init__(self) -> None:
        super().__post_init__()
        check_max_ratio(self.max_ratio)
        for name in ("s_churn", "s_tmin", "s_tmax", "s_noise"):
            value = getattr(self, name)
            check(isinstance(value, int | float) and not isinstance(value, bool) and value >= 0,
                  f"{name} must be a number >= 0, got {value!r}")
        check(self.s_tmin <= self.s_tmax,
              f"s_tmin ({self.s_tmin}) must not exceed s_tmax ({self.s_tmax})")

    def gamma(self, sigma: float, n: int) -> float:
        """The churn at sigma: min(s_churn / N, sqrt(2) - 1) inside [s_tmin, s_tmax], else 0."""
        if not self.s_tmin <= sigma <= self.s_tmax:
            return 0.0
        return min(self.s_churn / n, math.sqrt(2) - 1)

    def nfe(self, schedule: NoiseSchedule) -> int:
        """Network evaluations per sample: one per step, plus one per corrected step (2N - 1
        unless ``max_ratio`` turns long steps into Euler steps; churn ignored)."""
        sigmas = self.sigmas(schedule)
        return len(sigmas) - 1 + sum(corrects(a, b, self.max_ratio)
                                     for a, b in pairwise(sigmas))

    def notice(self, schedule: NoiseSchedule) -> str | None:
        return euler_steps_note("heun", self.sigmas(schedule), self.max_ratio)

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        grid = self.make_grid(model.schedule)
        sigmas, n = grid.sigmas, len(grid)
        x = to_xbar(noise, sigmas[0])
        for i in range(n):
            sigma, nxt = sigmas[i], sigmas[i + 1]
            gamma = self.gamma(sigma, n)
            sigma_hat = sigma * (1 + gamma)
            if gamma > 0:
                x = x + math.sqrt(sigma_hat**2 - sigma**2) * self.s_noise * randn_like(x, generator)
            x_next, x0 = heun_step(lambda z, s: self.denoised(model.denoise(z, s)), x,
                                   sigma_hat, nxt, self.max_ratio)
            if callback is not None:
                t = grid.timesteps[i] if gamma == 0 else model.schedule.level(sigma_hat).t
                callback(SamplerStep(i, n, t, to_vp(x, sigma_hat), x0))
            x = x_next
        return x
