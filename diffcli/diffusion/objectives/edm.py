"""EDM's preconditioned denoiser (Karras et al. 2022) and EDM2's uncertainty weighting (2024).

Table 1 ("Ours") of Karras et al. (2022), with sigma_data the data's standard deviation:

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),
    c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in = 1 / sqrt(sigma^2 + sigma_data^2),   c_noise = ln(sigma) / 4,
    ln sigma ~ N(P_mean, P_std^2),
    lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.

lambda(sigma) c_out^2 = 1, so in F's units (:func:`~diffcli.diffusion.objectives.continuous.
objective_loss`) the weight is 1: every noise level's target has unit variance (eq. 8). The
coefficients are applied to the variance-preserving x = xbar / sqrt(1 + sigma^2) that the samplers
use, so c_in and c_skip here carry the factor sqrt(1 + sigma^2). diffcli's networks embed their
time input like a timestep in 0..999 (sinusoidal features of periods up to 10,000), so they see
``time_scale`` c_noise (1000 ln(sigma) / 4 by default) rather than c_noise itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from diffcli.diffusion.denoiser import Coefficients
from diffcli.diffusion.objectives.continuous import F64, LATTICE, Continuous


def _positive(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class Uncertainty(nn.Module):
    """EDM2's learned log-variance u(sigma) (Karras et al. 2024, Sec. 5 and eq. 21): fixed random
    Fourier features of c_noise, then one linear layer (zero-initialized: u = 0, weight 1, at
    the start). c_noise (B,) -> u (B,)."""

    def __init__(self, channels: int = 128, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", torch.randn(channels, generator=g))
        self.register_buffer("phases", torch.rand(channels, generator=g))
        self.linear = nn.Linear(channels, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c_noise: Tensor) -> Tensor:
        features = torch.cos(2 * math.pi * (c_noise[:, None].float() * self.freqs
                                            + self.phases)) * math.sqrt(2)  # (B, channels)
        return self.linear(features).squeeze(1)


@dataclass(frozen=True)
class EDM(Continuous):
    """EDM training and sampling settings (Karras et al. 2022, Table 1 and Sec. 5):
    ``sigma_data`` 0.5, ``p_mean`` -1.2, ``p_std`` 1.2; sampling from ``sigma_max`` 80 down to
    ``sigma_min`` 0.002 on noise levels spaced by ``rho`` 7 (eq. 5); ``time_scale`` multiplies
    c_noise for diffcli's timestep embeddings; ``uncertainty_weighting``: EDM2's learned
    per-sigma weighting (Karras et al. 2024, eq. 21)."""

    sigma_data: float = 0.5
    p_mean: float = -1.2
    p_std: float = 1.2
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0
    time_scale: float = 1000.0
    uncertainty_weighting: bool = False

    name: ClassVar[str] = "edm"

    def __post_init__(self) -> None:
        for key in ("sigma_data", "p_std", "sigma_min", "sigma_max", "rho", "time_scale"):
            _positive(key, getattr(self, key))
        if isinstance(self.p_mean, bool) or not isinstance(self.p_mean, int | float):
            raise ValueError(f"p_mean must be a number, got {self.p_mean!r}")
        if not self.sigma_min < self.sigma_max:
            raise ValueError(f"sigma_min ({self.sigma_min}) must be below "
                             f"sigma_max ({self.sigma_max})")

    def precondition(self, sigma: Tensor) -> Coefficients:
        """Table 1's coefficients at sigma (B,), on the VP-scaled x. Each (B,) float64."""
        sigma = sigma.to(F64)
        sd2 = self.sigma_data**2
        root = (sigma**2 + sd2).sqrt()
        vp = (1 + sigma**2).sqrt()  # x_bar = vp * x
        return Coefficients(c_in=vp / root, c_noise=self.time_scale * sigma.log() / 4,
                            c_skip=vp * sd2 / root**2, c_out=sigma * self.sigma_data / root)

    def noise_level(self, c_noise: Tensor) -> Tensor:
        """The sigma whose c_noise this is (the inverse of the network's time input). (B,)"""
        return (4 * c_noise.to(F64) / self.time_scale).exp()

    def sample_sigma(self, n: int, device: torch.device | str = "cpu",
                     generator: torch.Generator | None = None) -> Tensor:
        """ln sigma ~ N(p_mean, p_std^2) (Table 1). (n,) float64"""
        z = torch.randn(n, generator=generator, device=device, dtype=F64)
        return (self.p_mean + self.p_std * z).exp()

    def lattice_sigmas(self, num: int = LATTICE) -> Tensor:
        """``num`` noise levels from sigma_min to sigma_max spaced as EDM's sampling grid (eq. 5,
        rho = ``rho``): sigma_i = (sigma_min^(1/rho) + i / (num - 1) (sigma_max^(1/rho) -
        sigma_min^(1/rho)))^rho, so that the default ``trailing`` grid of N steps on this lattice
        follows EDM's spacing from sigma_max (stopping short of sigma_min, as trailing grids do);
        ``sampler.grid=karras`` is EDM's grid exactly. (num,) float64"""
        lo, hi = self.sigma_min ** (1 / self.rho), self.sigma_max ** (1 / self.rho)
        return (lo + torch.linspace(0, 1, num, dtype=F64) * (hi - lo)) ** self.rho

    def uncertainty(self) -> nn.Module | None:
        return Uncertainty() if self.uncertainty_weighting else None
