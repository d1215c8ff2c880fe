"""The diffusion process: q(x_t | x_0), its posterior, and the eps / x0 / v parameterizations.

The signal-to-noise ratio SNR_t = abar_t / (1 - abar_t) = 1 / sigma_t^2 and the noise levels
sigma_t are tabulated on :class:`~diffcli.diffusion.schedules.NoiseSchedule`.

Shapes: ``x0``, ``x_t``, ``eps``, ``v`` are (B, ...) data tensors; ``t`` is a (B,) long tensor of
timestep indices 0..T-1; ``abar`` is alpha-bar_t broadcast to (B, 1, ..., 1).
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import torch
from torch import Tensor

from diffcli.diffusion.schedules import NoiseSchedule


class Parameterization(str, Enum):
    """What the network predicts: the noise (DDPM), the clean data, or v (Salimans & Ho 2022)."""

    EPS = "eps"
    X0 = "x0"
    V = "v"


def extract(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """Gather ``values[t]`` (values: (T,), t: (B,)) and reshape to (B, 1, ..., 1) like ``like``."""
    out = values.to(device=t.device)[t].to(like.dtype)
    return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))


def alpha_bar(schedule: NoiseSchedule, t: Tensor, like: Tensor) -> Tensor:
    """alpha-bar_t as (B, 1, ..., 1) in ``like``'s dtype; t: (B,) long, or float for timesteps
    between grid points (see :meth:`NoiseSchedule.alpha_bar_at`)."""
    if t.is_floating_point():
        out = schedule.alpha_bar_at(t).to(like.dtype)
        return out.reshape(t.shape[0], *([1] * (like.ndim - 1)))
    return extract(schedule.alphas_cumprod, t, like)


def q_sample(schedule: NoiseSchedule, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
    """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4). (B, ...)"""
    abar = extract(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def q_mean_variance(schedule: NoiseSchedule, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean sqrt(abar_t) x0 and variance (1 - abar_t) of q(x_t | x_0) (eq. 4)."""
    abar = extract(schedule.alphas_cumprod, t, x0)
    return abar.sqrt() * x0, (1 - abar).expand_as(x0)


def posterior_coefficients(abar_t: Tensor, abar_prev: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Coefficients of q(x_s | x_t, x_0) for any s < t with alpha-bars ``abar_prev``, ``abar_t``.

    With beta = 1 - abar_t/abar_prev (one step of the respaced chain, Nichol & Dhariwal 2021,
    Sec. 4): mean = c0 * x0 + ct * x_t, c0 = sqrt(abar_prev) beta / (1 - abar_t),
    ct = sqrt(1 - beta) (1 - abar_prev) / (1 - abar_t),
    variance = (1 - abar_prev)/(1 - abar_t) beta
    (Ho et al. 2020, eqs. 6-7). Returns (c0, ct, variance), each shaped like the inputs.
    """
    beta = 1 - abar_t / abar_prev
    c0 = abar_prev.sqrt() * beta / (1 - abar_t)
    ct = (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)
    var = (1 - abar_prev) / (1 - abar_t) * beta
    return c0, ct, var


def q_posterior(schedule: NoiseSchedule, x0: Tensor, x_t: Tensor,
                t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean mu-tilde_t(x_t, x_0) and variance beta-tilde_t of q(x_{t-1} | x_t, x_0) (eqs. 6-7)."""
    abar_t = extract(schedule.alphas_cumprod, t, x0)
    abar_prev = extract(schedule.alphas_cumprod_prev, t, x0)
    c0, ct, var = posterior_coefficients(abar_t, abar_prev)
    return c0 * x0 + ct * x_t, var.expand_as(x0)


def x0_from_eps(x_t: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) (inverse of eq. 4)."""
    return (x_t - (1 - abar).sqrt() * eps) / abar.sqrt()


def eps_from_x0(x_t: Tensor, x0: Tensor, abar: Tensor) -> Tensor:
    """eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar)."""
    return (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()


def v_from_x0_eps(x0: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """v = sqrt(abar) eps - sqrt(1 - abar) x0 (Salimans & Ho 2022, Sec. 4)."""
    return abar.sqrt() * eps - (1 - abar).sqrt() * x0


def x0_eps_from_v(x_t: Tensor, v: Tensor, abar: Tensor) -> tuple[Tensor, Tensor]:
    """x0 = sqrt(abar) x_t - sqrt(1-abar) v; eps = sqrt(1-abar) x_t + sqrt(abar) v."""
    a, s = abar.sqrt(), (1 - abar).sqrt()
    return a * x_t - s * v, s * x_t + a * v


class Prediction(NamedTuple):
    """A network output converted to both the clean-data and the noise estimate. (B, ...) each.

    ``var_frac``: for a network with learned variances (Nichol & Dhariwal 2021, eq. 15), the
    interpolation fraction v in [0, 1] between log beta_t (v = 1) and log beta-tilde_t (v = 0),
    (B, ...); None for a network with fixed variances.
    """

    x0: Tensor
    eps: Tensor
    var_frac: Tensor | None = None


def learned_log_variance(var_frac: Tensor, beta: Tensor, beta_tilde: Tensor) -> Tensor:
    """log Sigma = v log beta + (1 - v) log beta-tilde (Nichol & Dhariwal 2021, eq. 15).

    ``beta``, ``beta_tilde``: the step's beta and posterior variance (broadcastable to
    ``var_frac``; on a respaced chain, the respaced ones, :func:`posterior_coefficients`).
    beta-tilde is 0 at the first step; it is clipped to the next step's value there, as
    Improved DDPM does, by the caller (:func:`step_log_variances`). (B, ...)
    """
    return var_frac * beta.log() + (1 - var_frac) * beta_tilde.log()


def step_log_variances(schedule: NoiseSchedule, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """(log beta_t, log beta-tilde_t) of the T-step chain at timesteps t (B,), shaped (B, 1, ...)
    like ``like``; log beta-tilde_0 (= log 0) is clipped to log beta-tilde_1 (Nichol & Dhariwal
    2021, their ``posterior_log_variance_clipped``)."""
    tilde = schedule.posterior_variance.clone()
    if len(tilde) > 1:
        tilde[0] = tilde[1]
    return extract(schedule.betas.log(), t, like), extract(tilde.log(), t, like)


def to_x0_eps(output: Tensor, kind: Parameterization | str, x_t: Tensor,
              abar: Tensor) -> Prediction:
    """Convert a network output of parameterization ``kind`` into (x0, eps) estimates."""
    kind = Parameterization(kind)
    if kind is Parameterization.EPS:
        return Prediction(x0_from_eps(x_t, output, abar), output)
    if kind is Parameterization.X0:
        return Prediction(output, eps_from_x0(x_t, output, abar))
    return Prediction(*x0_eps_from_v(x_t, output, abar))


def target_for(kind: Parameterization | str, x0: Tensor, eps: Tensor, abar: Tensor) -> Tensor:
    """The regression target of parameterization ``kind`` for a training pair (x0, eps)."""
    kind = Parameterization(kind)
    if kind is Parameterization.EPS:
        return eps
    if kind is Parameterization.X0:
        return x0
    return v_from_x0_eps(x0, eps, abar)


def randint_timesteps(batch: int, num_timesteps: int, *, device: torch.device | str = "cpu",
                      generator: torch.Generator | None = None) -> Tensor:
    """t ~ Uniform{0..T-1} (Ho et al. 2020, Algorithm 1). (B,) long."""
    return torch.randint(0, num_timesteps, (batch,), device=device, generator=generator)
