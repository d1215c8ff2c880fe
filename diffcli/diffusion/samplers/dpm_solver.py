"""DPM-Solver++(2M): the multistep second-order solver in data prediction (Lu et al. 2022)."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    Sampler,
    SamplerStep,
    StepCallback,
)


def half_log_snr(abar: float) -> float:
    """lambda = log(alpha / sigma) with alpha = sqrt(abar), sigma = sqrt(1 - abar) (Lu et al.
    2022, Sec. 2); equals -log sigma_VE for sigma_VE = sqrt((1 - abar)/abar)."""
    return 0.5 * (math.log(abar) - math.log1p(-abar))


def midpoint_x0(x0: Tensor, history: Sequence[tuple[Tensor, float]], h: float) -> Tensor:
    """DPM-Solver++(2M)'s D (Lu et al. 2022, Algorithm 2): (1 + 1/(2r)) x0_t - 1/(2r) x0_prev
    with r = h_prev / h, from the last ``(x0_prev, h_prev)`` of ``history``; x0_t without one."""
    if not history:
        return x0
    x0_prev, h_prev = history[-1]
    r = h_prev / h
    return (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev


class DataPredictionMultistep(Sampler):
    """The loop of the multistep solvers in data prediction (DPM-Solver++ 2M, 3M, 2M SDE) on
    the grid's consecutive points t > s: evaluate x0_hat at t, stop with it when s reaches
    alpha-bar = 1 (lambda = inf), else let :meth:`update` step x_t to x_s given h = lambda_s -
    lambda_t (:func:`half_log_snr`) and the last two ``(x0_hat, h)`` pairs. One network
    evaluation per step."""

    @abstractmethod
    def update(self, x: Tensor, x0: Tensor, history: Sequence[tuple[Tensor, float]],
               abar_t: float, abar_s: float, h: float, generator: Generator) -> Tensor:
        """x_s from x_t (B, ...), x0_hat(x_t) (B, ...) and the earlier (x0_hat, h) pairs."""

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        grid = self.make_grid(model.schedule)
        x, n = noise, len(grid)
        history: list[tuple[Tensor, float]] = []  # (x0, length of the step that followed it)
        for i in range(n):
            abar_t, abar_s = grid.alphas_cumprod[i], grid.alphas_cumprod[i + 1]
            x0 = self.denoised(model.predict(x, grid.sigmas[i]).x0)
            if callback is not None:
                callback(SamplerStep(i, n, grid.timesteps[i], x, x0))
            if abar_s >= 1.0:
                return x0
            h = half_log_snr(abar_s) - half_log_snr(abar_t)
            x = self.update(x, x0, history, abar_t, abar_s, h, generator)
            history = [*history[-1:], (x0, h)]
        return x


@dataclass(frozen=True)
class DPMSolverPP2M(DataPredictionMultistep):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the grid's consecutive points t > s.

    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D, with h = lambda_s - lambda_t and
    D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev, r = h_prev / h (D = x0_t on the first step).
    The last step goes to alpha-bar = 1 (lambda = inf) and is first order: it returns x0_hat.
    Deterministic; one network evaluation per step. ``steps`` defaults to 20; any grid
    (``grid=karras`` is the 'DPM++ 2M Karras' of other toolkits). A learned variance
    (``Prediction.var_frac``) is ignored: the solver uses x0_hat only.
    """

    steps: int | None = 20

    def update(self, x: Tensor, x0: Tensor, history: Sequence[tuple[Tensor, float]],
               abar_t: float, abar_s: float, h: float, generator: Generator) -> Tensor:
        sigma_ratio = math.sqrt((1 - abar_s) / (1 - abar_t))
        return sigma_ratio * x - math.sqrt(abar_s) * math.expm1(-h) * midpoint_x0(x0, history, h)
