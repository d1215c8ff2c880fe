"""The discrete-time network wrapped once as a denoiser of noise level sigma.

A network trained on T timesteps takes (x_t, t) with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
(Ho et al. 2020, eq. 4). Dividing by sqrt(abar_t) gives the variance-exploding form
xbar = x_t / sqrt(abar_t) = x0 + sigma eps with sigma = sqrt((1 - abar_t)/abar_t), in which the
ideal denoiser is D(xbar; sigma) = E[x0 | xbar] (Karras et al. 2022, Sec. 2 and eq. 7 with
c_in = 1 / sqrt(1 + sigma^2), c_skip = 1 and c_out = -sigma for an eps network). A sigma off the
training timesteps is evaluated at the real-valued timestep of the schedule's log-sigma
interpolation (:meth:`NoiseSchedule.level`); on a training timestep the network sees exactly that
integer t, so samplers on timestep grids compute what they computed before this wrapper existed.

A network that learns its variances (Nichol & Dhariwal 2021, Sec. 3.1; ``model.learn_sigma``)
outputs 2C channels (2D for points): the first C are the prediction in the model's
parameterization, the last C a raw r, read as the interpolation fraction v = (r + 1) / 2 of
eq. 15, log Sigma = v log beta + (1 - v) log beta-tilde. With ``learned_variance=True`` the
Denoiser splits that output (:func:`split_learned`) and returns v as ``Prediction.var_frac``;
the stochastic samplers turn it into the step's variance (:mod:`diffcli.diffusion.samplers`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from diffcli.diffusion.process import (
    Parameterization,
    Prediction,
    alpha_bar,
    eps_from_x0,
    to_x0_eps,
)
from diffcli.diffusion.schedules import NoiseSchedule

Network = Callable[[Tensor, Tensor], Tensor]


class Coefficients(NamedTuple):
    """A continuous objective's preconditioning at noise levels sigma (B,), each (B,) float64,
    on the variance-preserving x_t = xbar / sqrt(1 + sigma^2): the network sees c_in x_t and
    c_noise, and D = c_skip x_t + c_out F (Karras et al. 2022, eq. 7, rescaled)."""

    c_in: Tensor
    c_noise: Tensor
    c_skip: Tensor
    c_out: Tensor


class Preconditioned(Protocol):
    """What the denoiser needs of an objective (:mod:`diffcli.diffusion.objectives`)."""

    def precondition(self, sigma: Tensor) -> Coefficients: ...


def split_learned(output: Tensor) -> tuple[Tensor, Tensor]:
    """Split a learned-variance network's output (B, 2C, ...) along dim 1 into the prediction
    (B, C, ...) and var_frac v = (r + 1) / 2 (B, C, ...) of its raw second half r (Nichol &
    Dhariwal 2021, eq. 15). v is not clipped (the paper puts no constraint on it, so variances
    outside [beta-tilde, beta] stay possible); r in [-1, 1] gives v in [0, 1]."""
    if output.ndim < 2 or output.shape[1] % 2:
        raise ValueError(f"a learned-variance network outputs 2C channels (prediction, "
                         f"variance), got shape {tuple(output.shape)}")
    mean_out, raw = output.chunk(2, dim=1)
    return mean_out, (raw + 1) / 2


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

    ``learned_variance`` (keyword): the net outputs 2C channels, the prediction then the raw
    variance output (:func:`split_learned`), and every view also returns its
    ``var_frac`` (B, C, ...). False (the default): the net's output is the prediction and
    ``var_frac`` is None.

    ``objective`` (keyword): a continuous-time objective (EDM, flow matching;
    :mod:`diffcli.diffusion.objectives`) that preconditions the network: it sees
    c_in(sigma) x_t and c_noise(sigma), and its output F gives x0 = c_skip x_t + c_out F.
    ``schedule`` is then the objective's sampling lattice (:meth:`lattice`), on which the grids
    and samplers run unchanged. None (the default): the discrete DDPM chain, the network sees
    (x_t, t) and predicts ``prediction``.
    """

    net: Network
    schedule: NoiseSchedule
    prediction: Parameterization = Parameterization.EPS
    learned_variance: bool = field(default=False, kw_only=True)
    objective: Preconditioned | None = field(default=None, kw_only=True)

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
        return self.prediction_of(self.net(*self.net_inputs(x_t, t)), x_t, t, abar)

    def net_inputs(self, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """What the network is called with for x_t (B, ...) at timesteps t (B,): (x_t, t) for
        the DDPM chain; (c_in x_t, c_noise) of the noise level for an ``objective``."""
        if self.objective is None:
            return x_t, t
        pre = self.objective.precondition(self.sigma_at(t))
        c_in = pre.c_in.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t)
        return c_in * x_t, pre.c_noise.to(torch.float32)  # as in training

    def sigma_at(self, t: Tensor) -> Tensor:
        """The noise level sigma of timesteps t (B,) of ``schedule`` (long: the table's; float:
        log-sigma interpolated, exactly as :meth:`NoiseSchedule.level` inverts it). (B,)
        float64"""
        return self.schedule.sigma_at(t)

    def to_prediction(self, output: Tensor, x_t: Tensor, t: Tensor, abar: Tensor) -> Prediction:
        """A network's prediction output (B, ...) for x_t at t as (x0, eps): through
        :func:`to_x0_eps` for the DDPM chain, x0 = c_skip x_t + c_out F for an ``objective``
        (Karras et al. 2022, eq. 7). Each (B, ...)."""
        if self.objective is None:
            return to_x0_eps(output, self.prediction, x_t, abar)
        pre = self.objective.precondition(self.sigma_at(t))
        shape = (-1, *([1] * (x_t.ndim - 1)))
        x0 = pre.c_skip.reshape(shape).to(x_t) * x_t + pre.c_out.reshape(shape).to(x_t) * output
        return Prediction(x0, eps_from_x0(x_t, x0, abar))

    def prediction_of(self, output: Tensor, x_t: Tensor, t: Tensor, abar: Tensor) -> Prediction:
        """A raw network output for x_t (B, ...) at t (B,) as (x0, eps[, var_frac]): the whole
        output, or with ``learned_variance`` its first half, through :meth:`to_prediction`;
        the second half gives var_frac (:func:`split_learned`). Each (B, ...)."""
        if not self.learned_variance:
            return self.to_prediction(output, x_t, t, abar)
        mean_out, var_frac = split_learned(output)
        return self.to_prediction(mean_out, x_t, t, abar)._replace(var_frac=var_frac)

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
