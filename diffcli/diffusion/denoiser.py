"""The discrete-time network wrapped once as a denoiser of noise level sigma.

A network trained on T timesteps takes (x_t, t) with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
(Ho et al. 2020, eq. 4). Dividing by sqrt(abar_t) gives the variance-exploding form
xbar = x_t / sqrt(abar_t) = x0 + sigma eps with sigma = sqrt((1 - abar_t)/abar_t), in which the
ideal denoiser is D(xbar; sigma) = E[x0 | xbar] (Karras et al. 2022, Sec. 2 and eq. 7 with
c_in = 1 / sqrt(1 + sigma^2), c_skip = 1 and c_out = -sigma for an eps network). A sigma off the
training timesteps is evaluated at the real-valued timestep of the schedule's log-sigma
interpolation (:meth:`NoiseSchedule.level`); on a training timestep the network sees exactly that
integer t, so samplers on timestep grids compute what they computed before this wrapper existed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.process import Parameterization, Prediction, alpha_bar, to_x0_eps
from diffcli.diffusion.schedules import NoiseSchedule

Network = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class Denoiser:
    """A network of a known parameterization (eps, x0 or v) over a known schedule.

    Three views of the same evaluation:

    * ``denoiser(x_t, t)``: (x0, eps) estimates at timesteps t (B,) long, or float between
      training timesteps; x_t (B, ...) in the variance-preserving scale the network was trained
      on;
    * :meth:`predict` ``(x_t, sigma)``: the same at the noise level sigma (a float);
    * :meth:`denoise` ``(xbar, sigma)``: D(xbar; sigma), the x0 estimate for the
      variance-exploding xbar = x_t / sqrt(abar) (Karras et al. 2022).

    All three go through :meth:`evaluate`, the one method a wrapper overrides.
    """

    net: Network
    schedule: NoiseSchedule
    prediction: Parameterization = Parameterization.EPS

    def __post_init__(self) -> None:
        object.__setattr__(self, "prediction", Parameterization(self.prediction))

    def __call__(self, x_t: Tensor, t: Tensor) -> Prediction:
        """(x0, eps) for x_t (B, ...) at timesteps t (B,). Each (B, ...)."""
        return self.evaluate(x_t, t, alpha_bar(self.schedule, t, x_t))

    def evaluate(self, x_t: Tensor, t: Tensor, abar: Tensor) -> Prediction:
        """The one network evaluation behind every view: (x0, eps) for x_t (B, ...) at
        timesteps t (B,) (long, or float64 between training timesteps) whose alpha-bar is
        ``abar`` (broadcastable to x_t, e.g. (B, 1, ...)). Wrappers such as guidance
        (:mod:`diffcli.diffusion.guidance`) override this one method. Each (B, ...)."""
        return to_x0_eps(self.net(x_t, t), self.prediction, x_t, abar)

    @property
    def takes_labels(self) -> bool:
        """Whether :meth:`with_labels` accepts class labels (False: an unconditional model)."""
        return False

    def with_labels(self, labels: Tensor | None) -> Denoiser:
        """This denoiser conditioned on ``labels`` (B,) int64. An unconditional model takes
        none: ``None`` gives ``self``, labels raise ValueError."""
        if labels is None:
            return self
        raise ValueError("this model is unconditional: it takes no class labels")

    def predict(self, x_t: Tensor, sigma: float) -> Prediction:
        """(x0, eps) for the variance-preserving x_t (B, ...) at noise level sigma > 0: the
        network at the integer timestep whose sigma this is (alpha-bar from the schedule's
        table), else at the interpolated real timestep with alpha-bar = 1 / (1 + sigma^2).
        Each (B, ...)."""
        level = self.schedule.level(sigma)
        if level.sigma <= 0:
            raise ValueError(f"the denoiser needs sigma > 0, got {sigma}")
        if isinstance(level.t, int):
            t = torch.full((x_t.shape[0],), level.t, dtype=torch.long, device=x_t.device)
            return self(x_t, t)
        t = torch.full((x_t.shape[0],), level.t, dtype=torch.float64, device=x_t.device)
        abar = torch.full((x_t.shape[0], *([1] * (x_t.ndim - 1))), level.alpha_bar,
                          dtype=x_t.dtype, device=x_t.device)
        return self.evaluate(x_t, t, abar)

    def denoise(self, xbar: Tensor, sigma: float) -> Tensor:
        """D(xbar; sigma) for the variance-exploding xbar = x0 + sigma eps: evaluates the
        network on x_t = xbar / sqrt(1 + sigma^2) (Karras et al. 2022, Table 1, c_in).
        xbar: (B, ...) -> x0 estimate (B, ...)."""
        return self.predict(xbar / math.sqrt(1 + sigma**2), sigma).x0
