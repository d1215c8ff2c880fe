"""Closed-form ideal denoisers for Gaussian and Gaussian-mixture data: exact references for
samplers and losses.

For x0 ~ N(mu, diag(s^2)) and x_t = a x0 + b eps (a = sqrt(abar_t), b = sqrt(1 - abar_t)),
x_t ~ N(a mu, a^2 s^2 + b^2) and E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + b^2) (x_t - a mu).
For a mixture sum_k pi_k N(mu_k, diag(s_k^2)) the posterior mean is the responsibility-weighted
sum of the components' posterior means. A network that outputs E[x0 | x_t] (in any
parameterization) is the minimiser of L_simple (Ho et al. 2020, eq. 14).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from diffcli.diffusion.process import Parameterization, alpha_bar, eps_from_x0, target_for
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


class PosteriorMeanData(Protocol):
    """A data distribution whose denoiser E[x0 | x_t] is known in closed form."""

    def posterior_mean(self, x_t: Tensor, abar: Tensor) -> Tensor:
        """E[x0 | x_t] for x_t = sqrt(abar) x0 + sqrt(1 - abar) eps; x_t: (B, ...),
        abar: (B, 1, ...). (B, ...)"""
        ...


@dataclass(frozen=True, eq=False)
class GaussianMixtureData:
    """sum_k pi_k N(mu_k, diag(s_k^2)) over R^D: ``weights`` (K,) summing to 1, ``means`` and
    ``stds`` (K, D). Computations run in float64."""

    weights: Tensor
    means: Tensor
    stds: Tensor

    def __post_init__(self) -> None:
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.stds.shape != (k, d):
            raise ValueError("need weights (K,), means (K, D) and stds (K, D)")
        if not bool((self.weights > 0).all()) or abs(float(self.weights.sum()) - 1) > 1e-6:
            raise ValueError("weights must be positive and sum to 1")
        if not bool((self.stds > 0).all()):
            raise ValueError("stds must be positive")
        for name in ("weights", "means", "stds"):
            object.__setattr__(self, name, getattr(self, name).to(torch.float64))

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n exact draws: a component k ~ Categorical(pi), then mu_k + s_k z. (n, D) float64"""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k] * z

    def _components(self, x_t: Tensor, abar: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per component k: x_t - a mu_k, the variance a^2 s_k^2 + 1 - abar of x_t given k, and
        a = sqrt(abar), in float64 on x_t's device.
        x_t: (B, D), abar: (B, 1) -> (B, K, D), (B, K, D), (B, 1, 1)"""
        x, ab = x_t.to(torch.float64)[:, None, :], abar.to(torch.float64)[:, :, None]
        mu, s2, a = self.means.to(x.device), self.stds.to(x.device) ** 2, ab.sqrt()
        return x - a * mu, ab * s2 + (1 - ab), a

    @staticmethod
    def _weights(log_pi: Tensor, diff: Tensor, var: Tensor) -> Tensor:
        """Softmax over k of log pi_k + log N(x_t; a mu_k, var_k), by logsumexp. (B, K)"""
        logits = log_pi - 0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return torch.exp(logits - logits.logsumexp(-1, keepdim=True))

    def responsibilities(self, x_t: Tensor, abar: Tensor) -> Tensor:
        """w_k(x_t) = pi_k N(x_t; a mu_k, diag(a^2 s_k^2 + 1 - abar)) / p(x_t), a = sqrt(abar),
        computed with logsumexp in float64. x_t: (B, D), abar: (B, 1). (B, K)"""
        diff, var, _ = self._components(x_t, abar)
        return self._weights(self.weights.to(diff.device).log(), diff, var)

    def posterior_mean(self, x_t: Tensor, abar: Tensor) -> Tensor:
        """E[x0 | x_t] = sum_k w_k(x_t) [mu_k + a s_k^2 / (a^2 s_k^2 + 1 - abar) (x_t - a mu_k)]:
        the Gaussian posterior mean of each component, weighted by its responsibility.
        x_t: (B, D), abar: (B, 1). (B, D) in x_t's dtype."""
        diff, var, a = self._components(x_t, abar)
        mu, s2 = self.means.to(diff.device), self.stds.to(diff.device) ** 2
        per_component = mu + a * s2 / var * diff  # (B, K, D)
        w = self._weights(self.weights.to(diff.device).log(), diff, var)
        return (w[:, :, None] * per_component).sum(1).to(x_t.dtype)


def two_d_mixture(radius: float = 2.0, std: float = 0.1, k: int = 8) -> GaussianMixtureData:
    """``k`` narrow isotropic modes evenly spaced on a circle, the i-th (i = 1..k) of weight
    proportional to i (1/36 .. 8/36 for k = 8): a multimodal 2-D target whose modes are far
    apart relative to their width (radius 2, std 0.1) and unequally likely, so a sampler must
    both find the modes and split mass between them correctly. (K, D) = (k, 2), float64."""
    angle = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    means = radius * torch.stack([angle.cos(), angle.sin()], dim=1)
    weights = torch.arange(1, k + 1, dtype=torch.float64)
    return GaussianMixtureData(weights / weights.sum(), means,
                               torch.full((k, 2), std, dtype=torch.float64))


@dataclass(frozen=True, eq=False)
class IdealNetwork:
    """The exact minimiser of L_simple for ``data`` (Gaussian or Gaussian mixture), outputting
    ``prediction``.

    Called like a network: ``net(x_t (B, ...), t (B,) long or float) -> (B, ...)``.
    """

    data: PosteriorMeanData
    schedule: NoiseSchedule
    prediction: Parameterization = Parameterization.EPS

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        abar = alpha_bar(self.schedule, t, x_t)
        x0 = self.data.posterior_mean(x_t, abar)
        return target_for(self.prediction, x0, eps_from_x0(x_t, x0, abar), abar)
