"""Discrete-time noise schedules (variance-preserving), computed in float64.

A schedule is the sequence beta_1..beta_T of DDPM (Ho et al. 2020, eq. 2). The rest is derived:
alpha_t = 1 - beta_t, alpha-bar_t = prod_{s<=t} alpha_s (eq. 4),
SNR_t = alpha-bar_t / (1 - alpha-bar_t).
Index ``t`` in code runs 0..T-1 and stands for the paper's timestep t+1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch
from torch import Tensor

_F64 = torch.float64


class NoiseLevel(NamedTuple):
    """One noise level three ways: sigma = sqrt((1 - abar)/abar) (the variance-exploding scale of
    Karras et al. 2022), the network's timestep input t (an int on a training timestep, else a
    float in [0, T-1]) and alpha-bar = 1 / (1 + sigma^2). sigma = 0 is the clean data."""

    sigma: float
    t: int | float
    alpha_bar: float


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A frozen beta schedule with its derived quantities, all float64 tensors of shape (T,).

    Build one with :func:`linear_schedule`, :func:`cosine_schedule`, :func:`sigmoid_schedule`
    or :func:`make_schedule`.
    """

    betas: Tensor  # (T,)
    name: str = "custom"

    def __post_init__(self) -> None:
        b = self.betas
        if b.ndim != 1 or b.numel() < 1:
            raise ValueError("betas must be a non-empty 1-D tensor")
        if not bool(((b > 0) & (b < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")
        object.__setattr__(self, "betas", b.to(_F64))

    @property
    def num_timesteps(self) -> int:
        return self.betas.numel()

    @cached_property
    def alphas(self) -> Tensor:
        """alpha_t = 1 - beta_t. (T,)"""
        return 1.0 - self.betas

    @cached_property
    def alphas_cumprod(self) -> Tensor:
        """alpha-bar_t = prod_{s<=t} alpha_s (Ho et al. 2020, eq. 4). (T,)"""
        return torch.cumprod(self.alphas, dim=0)

    @cached_property
    def alphas_cumprod_prev(self) -> Tensor:
        """alpha-bar_{t-1}, with alpha-bar_0 = 1 before the first step. (T,)"""
        return torch.cat([torch.ones(1, dtype=_F64), self.alphas_cumprod[:-1]])

    @cached_property
    def posterior_variance(self) -> Tensor:
        """beta-tilde_t = (1 - alpha-bar_{t-1}) / (1 - alpha-bar_t) * beta_t (eq. 7). (T,)"""
        return (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod) * self.betas

    @cached_property
    def log_snr(self) -> Tensor:
        """log(alpha-bar_t / (1 - alpha-bar_t)). (T,)"""
        ab = self.alphas_cumprod
        return torch.log(ab) - torch.log1p(-ab)

    @cached_property
    def sigmas(self) -> Tensor:
        """sigma_t = sqrt((1 - abar_t) / abar_t), the noise level of x_t / sqrt(abar_t)
        (Karras et al. 2022, Sec. 2: the VP process in its variance-exploding form). (T,)"""
        return ((1.0 - self.alphas_cumprod) / self.alphas_cumprod).sqrt()

    @cached_property
    def log_sigmas(self) -> Tensor:
        """log sigma_t, the coordinate in which timesteps are interpolated. (T,)"""
        return self.sigmas.log()

    def alpha_bar_at(self, t: Tensor) -> Tensor:
        """alpha-bar at real-valued timesteps t in [0, T-1], log sigma linear between grid points
        (exact at integer t). (B,) float64"""
        t = t.to(_F64).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.num_timesteps - 1)
        log_sig = self.log_sigmas.to(t.device)
        w = t - lo
        sigma2 = torch.exp(2 * ((1 - w) * log_sig[lo] + w * log_sig[hi]))
        return 1.0 / (1.0 + sigma2)

    def sigma_at(self, t: Tensor) -> Tensor:
        """sigma of timesteps t (B,): the table's on training timesteps (long), the log-sigma
        interpolation of :meth:`alpha_bar_at` between them (float). (B,) float64"""
        if t.is_floating_point():
            abar = self.alpha_bar_at(t)
            return ((1.0 - abar) / abar).sqrt()
        return self.sigmas.to(t.device)[t]

    def sigma_to_t(self, sigma: float) -> float:
        """The real-valued timestep whose sigma (interpolated as in :meth:`alpha_bar_at`) is
        ``sigma``, clamped to [0, T-1]."""
        log_sig = self.log_sigmas
        s = torch.tensor(sigma, dtype=_F64).clamp(self.sigmas[0], self.sigmas[-1]).log()
        hi = int(torch.searchsorted(log_sig, s).clamp(1, self.num_timesteps - 1))
        w = (s - log_sig[hi - 1]) / (log_sig[hi] - log_sig[hi - 1])
        return float(hi - 1 + w)

    def level(self, sigma: float) -> NoiseLevel:
        """The noise level ``sigma`` as the network sees it. On the lattice (sigma equal to
        ``sigmas[k]``, a training timestep) t is the int k and alpha-bar the table's entry, so a
        sampler stepping on training timesteps evaluates the network exactly as in training;
        elsewhere t = :meth:`sigma_to_t` (real-valued) and alpha-bar = 1 / (1 + sigma^2)."""
        sigma = float(sigma)
        if sigma <= 0.0:
            return NoiseLevel(0.0, 0.0, 1.0)
        t = self.sigma_to_t(sigma)
        k = round(t)
        if float(self.sigmas[k]) == sigma:
            return NoiseLevel(sigma, k, float(self.alphas_cumprod[k]))
        return NoiseLevel(sigma, t, 1.0 / (1.0 + sigma**2))

    @cached_property
    def snr(self) -> Tensor:
        """Signal-to-noise ratio alpha-bar_t / (1 - alpha-bar_t). (T,)"""
        return self.alphas_cumprod / (1.0 - self.alphas_cumprod)


def linear_schedule(
    num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> NoiseSchedule:
    """DDPM's linear schedule (Ho et al. 2020, Sec. 4): beta from 1e-4 to 0.02 over T=1000.

    For T != 1000 the endpoints are rescaled by 1000/T (Nichol & Dhariwal 2021, Sec. 2.4 footnote),
    so the total noise added stays about the same.
    """
    scale = 1000.0 / num_timesteps
    betas = torch.linspace(beta_start * scale, beta_end * scale, num_timesteps, dtype=_F64)
    return NoiseSchedule(betas=betas, name="linear")


def _betas_from_alpha_bar(alpha_bar: Callable[[Tensor], Tensor], num_timesteps: int,
                          max_beta: float) -> Tensor:
    """beta_t = min(1 - abar(t/T) / abar((t-1)/T), max_beta) (Nichol & Dhariwal 2021, Sec. 3.2)."""
    s = torch.arange(num_timesteps + 1, dtype=_F64) / num_timesteps
    ab = alpha_bar(s)
    return torch.clamp(1.0 - ab[1:] / ab[:-1], max=max_beta)


def cosine_schedule(num_timesteps: int = 1000, s: float = 0.008,
                    max_beta: float = 0.999) -> NoiseSchedule:
    """Improved DDPM's cosine schedule (Nichol & Dhariwal 2021, eq. 17).

    alpha-bar(t) = f(t)/f(0), f(t) = cos^2(((t/T + s)/(1 + s)) * pi/2), betas clipped at 0.999.
    """

    def f(u: Tensor) -> Tensor:
        return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2

    betas = _betas_from_alpha_bar(lambda u: f(u) / f(torch.zeros((), dtype=_F64)),
                                  num_timesteps, max_beta)
    return NoiseSchedule(betas=betas, name="cosine")


def sigmoid_schedule(num_timesteps: int = 1000, start: float = -3.0, end: float = 3.0,
                     tau: float = 1.0, max_beta: float = 0.999) -> NoiseSchedule:
    """Sigmoid schedule (Jabri et al. 2022; Chen 2023, "On the importance of noise scheduling").

    alpha-bar(t) = (sig(end/tau) - sig((t(end-start)+start)/tau)) / (sig(end/tau) - sig(start/tau)),
    betas from consecutive ratios, clipped at ``max_beta``.
    """
    v_start = torch.sigmoid(torch.tensor(start / tau, dtype=_F64))
    v_end = torch.sigmoid(torch.tensor(end / tau, dtype=_F64))

    def alpha_bar(u: Tensor) -> Tensor:
        return (v_end - torch.sigmoid((u * (end - start) + start) / tau)) / (v_end - v_start)

    return NoiseSchedule(betas=_betas_from_alpha_bar(alpha_bar, num_timesteps, max_beta),
                         name="sigmoid")


SCHEDULES: dict[str, Callable[..., NoiseSchedule]] = {
    "linear": linear_schedule,
    "cosine": cosine_schedule,
    "sigmoid": sigmoid_schedule,
}


def make_schedule(name: str, num_timesteps: int = 1000, **kwargs: float) -> NoiseSchedule:
    """Build a schedule by name (``linear``, ``cosine``, ``sigmoid``)."""
    try:
        factory = SCHEDULES[name]
    except KeyError:
        raise ValueError(f"unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}") from None
    return factory(num_timesteps=num_timesteps, **kwargs)
