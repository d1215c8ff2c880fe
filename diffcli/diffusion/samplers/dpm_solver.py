"""DPM-Solver++(2M): the multistep second-order solver in data prediction (Lu et al. 2022)."""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

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


LOWER_ORDER_FINAL_BELOW = 15  # lower_order_final acts on grids of fewer steps than this


def multistep_orders(order: int, n: int, lower_order_final: bool) -> list[int]:
    """The order of each step of a multistep solver of ``order`` on a grid of ``n`` points: the
    step from grid point i to i + 1 (i = 0..n-2) uses min(order, i + 1) earlier outputs (the
    warm-up: the first step is DDIM's), and with ``lower_order_final`` on a grid of fewer than
    :data:`LOWER_ORDER_FINAL_BELOW` points also at most n - i, so that the step into the last
    grid point is at most second order (Lu et al. 2022, "DPM-Solver++", Sec. 5: lower orders at
    the last steps steady few-step sampling, where the last lambda-steps are the longest). The
    step from the last grid point to sigma = 0 returns x0_hat, which is first order anyway."""
    lower = lower_order_final and n < LOWER_ORDER_FINAL_BELOW
    return [min(order, i + 1, n - i if lower else order) for i in range(n - 1)]


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
    lambda_t (:func:`half_log_snr`) and the earlier ``(x0_hat, h)`` pairs its order allows
    (:meth:`step_orders`: order - 1 of them at most). One network evaluation per step."""

    order: ClassVar[int] = 2  # the solver's order: how many outputs a step may use

    def step_orders(self, n: int) -> list[int]:
        """The order of each step i -> i + 1 on a grid of ``n`` points (:func:`multistep_orders`;
        ``lower_order_final`` where the solver has that option)."""
        return multistep_orders(self.order, n, bool(getattr(self, "lower_order_final", False)))

    @abstractmethod
    def update(self, x: Tensor, x0: Tensor, history: Sequence[tuple[Tensor, float]],
               abar_t: float, abar_s: float, h: float, generator: Generator) -> Tensor:
        """x_s from x_t (B, ...), x0_hat(x_t) (B, ...) and the earlier (x0_hat, h) pairs."""

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        grid = self.make_grid(model.schedule)
        x, n = noise, len(grid)
        orders = self.step_orders(n)
        history: list[tuple[Tensor, float]] = []  # (x0, length of the step that followed it)
        for i in range(n):
            abar_t, abar_s = grid.alphas_cumprod[i], grid.alphas_cumprod[i + 1]
            x0 = self.denoised(model.predict(x, grid.sigmas[i]).x0)
            if callback is not None:
                callback(SamplerStep(i, n, grid.timesteps[i], x, x0))
            if abar_s >= 1.0:
                return x0
            h = half_log_snr(abar_s) - half_log_snr(abar_t)
            earlier = history[len(history) - orders[i] + 1:]  # the order - 1 latest, or none
            x = self.update(x, x0, earlier, abar_t, abar_s, h, generator)
            history = [*history, (x0, h)][-(self.order - 1):]
        return x


@dataclass(frozen=True)
class DPMSolverPP2M(DataPredictionMultistep):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2) on the grid's consecutive points t > s.

    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) D, with h = lambda_s - lambda_t and
    D = (1 + 1/(2r)) x0_t - 1/(2r) x0_prev, r = h_prev / h (D = x0_t on the first step).
    The last step goes to alpha-bar = 1 (lambda = inf) and is first order: it returns x0_hat.
    So it has no ``lower_order_final``: its steps are already what that option gives a
    second-order solver (order 2 into the last grid point, order 1 from it).
    Deterministic; one network evaluation per step. ``steps`` defaults to 20; any grid
    (``grid=karras`` is the 'DPM++ 2M Karras' of other toolkits). A learned variance
    (``Prediction.var_frac``) is ignored: the solver uses x0_hat only.
    """

    steps: int | None = 20

    def update(self, x: Tensor, x0: Tensor, history: Sequence[tuple[Tensor, float]],
               abar_t: float, abar_s: float, h: float, generator: Generator) -> Tensor:
        sigma_ratio = math.sqrt((1 - abar_s) / (1 - abar_t))
        return sigma_ratio * x - math.sqrt(abar_s) * math.expm1(-h) * midpoint_x0(x0, history, h)
