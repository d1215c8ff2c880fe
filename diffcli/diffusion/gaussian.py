"""Closed-form ideal denoisers for Gaussian data: exact references for samplers and losses.

For x0 ~ N(mu, diag(s^2)) and x_t = a x0 + b eps (a = sqrt(abar_t), b = sqrt(1 - abar_t)),
x_t ~ N(a mu, a^2 s^2 + b^2) and E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + b^2) (x_t - a mu).
A network that outputs this (in any parameterization) is the minimiser of L_simple.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.forward import Parameterization, alpha_bar, eps_from_x0, target_for
from diffcli.diffusion.schedules import NoiseSchedule


@dataclass(frozen=True, eq=False)
class GaussianData:
    """A diagonal Gaussian data distribution; ``mean`` and ``std`` have the data shape (D,...)."""

    mean: Tensor
    std: Tensor

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws. (n, *data_shape)"""
        z = torch.randn((n, *self.mean.shape), generator=generator, dtype=self.mean.dtype)
        return self.mean + self.std * z

    def posterior_mean(self, x_t: Tensor, abar: Tensor) -> Tensor:
        """E[x0 | x_t]; x_t: (B, ...), abar: (B, 1, ...). (B, ...)"""
        a2 = abar
        var = self.std.to(x_t) ** 2
        mu = self.mean.to(x_t)
        gain = a2.sqrt() * var / (a2 * var + 1 - a2)
        return mu + gain * (x_t - a2.sqrt() * mu)


@dataclass(frozen=True, eq=False)
class IdealNetwork:
    """The exact minimiser of L_simple for Gaussian data, outputting ``prediction``.

    Called like a network: ``net(x_t (B, ...), t (B,) long) -> (B, ...)``.
    """

    data: GaussianData
    schedule: NoiseSchedule
    prediction: Parameterization = Parameterization.EPS

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        abar = alpha_bar(self.schedule, t, x_t)
        x0 = self.data.posterior_mean(x_t, abar)
        return target_for(self.prediction, x0, eps_from_x0(x_t, x0, abar), abar)
