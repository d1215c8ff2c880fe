"""DPM-Solver++(2M) SDE: the multistep second-order solver of the data-prediction SDE
(Lu et al. 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor

from diffcli.diffusion.samplers.base import (
    Generator,
    check,
    randn_like,
)
from diffcli.diffusion.samplers.dpm_solver import DataPredictionMultistep, midpoint_x0


@dataclass(frozen=True)
class DPMSolverPP2MSDE(DataPredictionMultistep):
    """DPM-Solver++(2M) SDE (Lu et al. 2022, "DPM-Solver++", SDE-DPM-Solver++ with the
    multistep second-order correction) on the grid's consecutive points t > s, with
    alpha = sqrt(abar), sigma = sqrt(1 - abar), lambda = log(alpha / sigma) and
    h = lambda_s - lambda_t:

        x_s = (sigma_s / sigma_t) e^{-eta h} x_t + alpha_s (1 - e^{-(1 + eta) h}) x0_t
              + 1/2 alpha_s (1 - e^{-(1 + eta) h}) (x0_t - x0_prev) / r
              + sigma_s sqrt(1 - e^{-2 eta h}) z,

    z ~ N(0, I), r = h_prev / h (the correction is left out on the first step). Without the
    correction and with eta = 1 this is SDE-DPM-Solver++1, the exact solution of the reverse
    SDE in data prediction for a constant x0 (Lu et al. 2022:
    x_s = (sigma_s / sigma_t) e^{-h} x_t + alpha_s (1 - e^{-2h}) x0 + sigma_s sqrt(1 - e^{-2h}) z).
    eta >= 0 scales the injected noise (0: the ODE, 1: the reverse SDE); for every eta the step
    maps N(alpha_t x0, sigma_t^2) onto N(alpha_s x0, sigma_s^2) for a point mass x0. The second
    term is the 'midpoint' correction: the first-order weight times (x0_t - x0_prev) / (2r), as
    in DPM-Solver++(2M); it agrees with the exact integral of the linear interpolant of x0,
    alpha_s (h - (1 - e^{-(1+eta) h}) / (1 + eta)) (x0_t - x0_prev) / h_prev, to leading
    order. With eta = 0 the step is exactly DPM-Solver++(2M)'s (Algorithm 2, no noise).

    The last step goes to alpha-bar = 1 (lambda = inf) and returns x0_hat without noise (first
    order: as DPM-Solver++(2M), it needs no ``lower_order_final``). One
    network evaluation per step; ``steps`` defaults to 20, any grid. The noise is drawn with
    :func:`~diffcli.diffusion.samplers.base.randn_like`, so a list of generators (one per
    sample) makes each sample depend on its own seed only. A learned variance
    (``Prediction.var_frac``) is ignored: the solver uses x0_hat only.
    """

    steps: int | None = 20
    eta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.eta, int | float) and not isinstance(self.eta, bool)
              and math.isfinite(self.eta) and self.eta >= 0, f"eta must be >= 0, got {self.eta!r}")

    def update(self, x: Tensor, x0: Tensor, history: Sequence[tuple[Tensor, float]],
               abar_t: float, abar_s: float, h: float, generator: Generator) -> Tensor:
        eta_h = self.eta * h
        d = midpoint_x0(x0, history, h)
        sigma_ratio = math.sqrt((1 - abar_s) / (1 - abar_t))
        # expm1(-(1 + eta) h) = -(1 - e^{-(1 + eta) h}); written as 2M's step for eta = 0
        x = sigma_ratio * math.exp(-eta_h) * x - math.sqrt(abar_s) * math.expm1(-h - eta_h) * d
        if eta_h > 0:
            std = math.sqrt(1 - abar_s) * math.sqrt(-math.expm1(-2 * eta_h))
            x = x + std * randn_like(x, generator)
        return x
