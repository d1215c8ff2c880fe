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
from typing import Any, Protocol

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

    def posterior_variance(self, abar: Tensor) -> Tensor:
        """Var[x0 | x_t] = s^2 (1 - abar) / (abar s^2 + 1 - abar), the same for every x_t (jointly
        Gaussian); abar: (B, 1, ...) -> (B, ...)"""
        var = self.std.to(abar) ** 2
        return var * (1 - abar) / (abar * var + 1 - abar)

    def reverse_variance(self, schedule: NoiseSchedule, t: Tensor) -> Tensor:
        """The exact variance of the true reverse step, Var[x_{t-1} | x_t], for timestep indices
        t (B,) long: by the law of total variance over x0 given x_t,

            Var[x_{t-1} | x_t] = beta-tilde_t + c0_t^2 Var[x0 | x_t],

        with q(x_{t-1} | x_t, x0) = N(c0_t x0 + ct_t x_t, beta-tilde_t) (Ho et al. 2020,
        eq. 6-7). At index 0 (beta-tilde = 0, c0 = 1) it is Var[x0 | x_{t=0}], the exact
        decoder variance. Equivalently v beta_t / (alpha_t v + beta_t) with v = Var[x_{t-1}] =
        abar_{t-1} s^2 + 1 - abar_{t-1}. The Gaussian reverse step with this variance and the
        mean of :class:`IdealNetwork` is q(x_{t-1} | x_t) itself. (B, *data_shape) float64
        """
        abar = schedule.alphas_cumprod.to(t.device)[t][:, None]
        abar_prev = schedule.alphas_cumprod_prev.to(t.device)[t][:, None]
        beta = 1 - abar / abar_prev
        c0 = abar_prev.sqrt() * beta / (1 - abar)
        tilde = (1 - abar_prev) / (1 - abar) * beta
        shape = (t.shape[0], *([1] * self.mean.ndim))
        x0_var = self.posterior_variance(abar.reshape(shape).to(self.std.dtype))
        return tilde.reshape(shape) + c0.reshape(shape) ** 2 * x0_var

    def expected_vlb_terms(self, schedule: NoiseSchedule,
                           model_variance: Tensor) -> tuple[Tensor, float]:
        """The bound's terms in expectation over x0 ~ this distribution and x_t ~ q(x_t | x0),
        in closed form, for the exact mean (:class:`IdealNetwork`) and reverse variances
        ``model_variance`` V_t ((T,), the same for every dimension, or (T, *data_shape)), with
        the continuous Gaussian decoder. Per dimension, with P_t = Var[x0 | x_t]
        (:meth:`posterior_variance`) and q(x_{t-1} | x_t, x0) = N(c0 x0 + ct x_t, beta-tilde_t):

            E L_t = [log(V_t / beta-tilde_t) + (beta-tilde_t + c0_t^2 P_t) / V_t - 1] / 2, t > 0
            E L_0 = [log(2 pi V_0) + P_0 / V_0] / 2,
            E L_T = [abar (m^2 + s^2) - abar - log(1 - abar)] / 2, abar = abar_{T-1},

        as E (x0 - E[x0 | x_t])^2 = P_t. Returns ((T,) the expected terms summed over
        dimensions, and E L_T summed over dimensions), in nats, float64.
        """
        t = torch.arange(schedule.num_timesteps)
        shape = (len(t), *([1] * self.mean.ndim))
        abar = schedule.alphas_cumprod.reshape(shape)
        abar_prev = schedule.alphas_cumprod_prev.reshape(shape)
        beta = 1 - abar / abar_prev
        c0 = abar_prev.sqrt() * beta / (1 - abar)
        tilde = ((1 - abar_prev) / (1 - abar) * beta).clamp(min=1e-300)
        p = self.posterior_variance(abar.to(self.std.dtype)).double()
        v = model_variance.double()
        v = (v.reshape(shape) if v.ndim == 1 else v).expand_as(p)
        kl = 0.5 * (torch.log(v / tilde) + (tilde + c0**2 * p) / v - 1)
        dec = 0.5 * (torch.log(2 * math.pi * v) + p / v)
        terms = torch.where(t.reshape(shape) == 0, dec, kl).flatten(1).sum(1)
        ab = schedule.alphas_cumprod[-1]
        second = (self.mean.double() ** 2 + self.std.double() ** 2)
        prior = 0.5 * (ab * second - ab - torch.log1p(-ab))
        return terms, float(prior.sum())

    def log_prob(self, x0: Tensor) -> Tensor:
        """log N(x0; mean, diag(std^2)) summed over dimensions, in nats. x0: (B, ...) -> (B,)"""
        z = (x0 - self.mean.to(x0)) / self.std.to(x0)
        per_dim = -0.5 * math.log(2 * math.pi) - self.std.to(x0).log() - 0.5 * z**2
        return per_dim.flatten(1).sum(1)

    def flow_log_prob(self, x0: Tensor, sigma_min: float, sigma_max: float) -> Tensor:
        """The exact log-density that the probability-flow ODE with the ideal denoiser assigns to
        x0 (:func:`~diffcli.diffusion.ode_likelihood.ode_log_likelihood`): in the
        variance-exploding form dxbar/dlog(sigma) = sigma^2 / (s^2 + sigma^2) (xbar - m), so the
        flow maps x0 at sigma_min to xbar = m + r (x0 - m), r = sqrt((s^2 + sigma_max^2) /
        (s^2 + sigma_min^2)), and log p = log N(xbar; 0, (1 + sigma_max^2) I) + sum log r.
        It differs from log N(x0; m, s^2 + sigma_min^2) only through the prior's mismatch with
        q(xbar_max) = N(m, s^2 + sigma_max^2). x0: (B, ...) -> (B,)"""
        var = self.std.to(x0) ** 2
        ratio = ((var + sigma_max**2) / (var + sigma_min**2)).sqrt()
        latent = self.mean.to(x0) + ratio * (x0 - self.mean.to(x0))
        prior_var = 1.0 + sigma_max**2
        per_dim = (-0.5 * math.log(2 * math.pi * prior_var) - 0.5 * latent**2 / prior_var
                   + ratio.log())
        return per_dim.flatten(1).sum(1)

    def entropy(self) -> float:
        """The differential entropy sum_i log(2 pi e s_i^2) / 2 in nats: the expected negative
        log-likelihood E[-log p(x0)] of the data under itself, the floor of any likelihood
        bound."""
        return float((0.5 * torch.log(2 * math.pi * math.e * self.std.double() ** 2)).sum())


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
    def _log_weights(log_pi: Tensor, diff: Tensor, var: Tensor) -> Tensor:
        """Log-softmax over k of log pi_k + log N(x_t; a mu_k, var_k), by logsumexp. (B, K)"""
        logits = log_pi - 0.5 * (diff**2 / var + torch.log(2 * math.pi * var)).sum(-1)
        return logits - logits.logsumexp(-1, keepdim=True)

    @staticmethod
    def _weights(log_pi: Tensor, diff: Tensor, var: Tensor) -> Tensor:
        """Softmax over k of log pi_k + log N(x_t; a mu_k, var_k), by logsumexp. (B, K)"""
        return torch.exp(GaussianMixtureData._log_weights(log_pi, diff, var))

    def responsibilities(self, x_t: Tensor, abar: Tensor) -> Tensor:
        """w_k(x_t) = pi_k N(x_t; a mu_k, diag(a^2 s_k^2 + 1 - abar)) / p(x_t), a = sqrt(abar),
        computed with logsumexp in float64. x_t: (B, D), abar: (B, 1). (B, K)"""
        diff, var, _ = self._components(x_t, abar)
        return self._weights(self.weights.to(diff.device).log(), diff, var)

    def log_responsibilities(self, x_t: Tensor, abar: Tensor) -> Tensor:
        """log w_k(x_t) = log p(k | x_t) of :meth:`responsibilities`, computed in log space (no
        underflow far from a component) and differentiable in x_t. x_t: (B, D), abar: (B, 1).
        (B, K) float64"""
        diff, var, _ = self._components(x_t, abar)
        return self._log_weights(self.weights.to(diff.device).log(), diff, var)

    @property
    def num_components(self) -> int:
        """K, the number of components (the classes of a labelled mixture)."""
        return self.means.shape[0]

    def component(self, k: int) -> GaussianData:
        """Component k alone, N(mu_k, diag(s_k^2)): the exact class-conditional distribution
        p(x0 | y = k) of the labelled mixture; its ``sample`` draws from it. (D,) float64."""
        if not 0 <= k < self.num_components:
            raise ValueError(f"component k must be in 0..{self.num_components - 1}, got {k}")
        return GaussianData(self.means[k], self.stds[k])

    def sample_with_labels(self, n: int,
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n exact labelled draws (x0, y): y ~ Categorical(pi), x0 ~ N(mu_y, diag(s_y^2)).
        (n, D) float64 and (n,) int64."""
        y = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn((n, self.dim), generator=generator, dtype=torch.float64)
        return self.means[y] + self.stds[y] * z, y

    def component_posterior_means(self, x_t: Tensor, abar: Tensor) -> Tensor:
        """E[x0 | x_t, y = k] = mu_k + a s_k^2 / (a^2 s_k^2 + 1 - abar) (x_t - a mu_k) for every
        k: each component's Gaussian posterior mean. x_t: (B, D), abar: (B, 1). (B, K, D)
        float64."""
        diff, var, a = self._components(x_t, abar)
        return self.means.to(diff.device) + a * self.stds.to(diff.device) ** 2 / var * diff

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


@dataclass(frozen=True, eq=False)
class IdealObjectiveNetwork:
    """The exact minimiser of a continuous objective's loss (:mod:`diffcli.diffusion.objectives`)
    for ``data``: F* = (E[x0 | x] - c_skip x) / c_out at the noise level its time input names.

    Called like the network: ``net(c_in x (B, ...), c_noise (B,)) -> F* (B, ...)``; wrapped in a
    :class:`~diffcli.diffusion.denoiser.Denoiser` with ``objective=`` it is the exact denoiser.
    """

    data: PosteriorMeanData
    objective: Any  # a Continuous objective: noise_level(c_noise), precondition(sigma)

    def __call__(self, x_in: Tensor, c_noise: Tensor) -> Tensor:
        sigma = self.objective.noise_level(c_noise)  # (B,) float64
        pre = self.objective.precondition(sigma)
        shape = (-1, *([1] * (x_in.ndim - 1)))
        x = x_in / pre.c_in.reshape(shape).to(x_in)
        x0 = self.data.posterior_mean(x, (1 / (1 + sigma**2)).reshape(shape).to(x_in))
        return (x0 - pre.c_skip.reshape(shape).to(x_in) * x) / pre.c_out.reshape(shape).to(x_in)


def _null_or_label(y: Tensor, batch: int, num_classes: int) -> Tensor:
    """Check class labels y (B,) integer in 0..num_classes (num_classes: the null label)."""
    if y.shape != (batch,) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor of shape ({batch},), got "
                         f"{tuple(y.shape)} {y.dtype}")
    if bool(((y < 0) | (y > num_classes)).any()):
        raise ValueError(f"labels must be classes 0..{num_classes - 1} or the null label "
                         f"{num_classes}, got {y.tolist()}")
    return y.long()


@dataclass(frozen=True, eq=False)
class IdealConditionalNetwork:
    """The exact class-conditional minimiser of L_simple for a labelled Gaussian mixture (label
    y = component k), outputting ``prediction``; the null label K gives the unconditional one.

    Called like a class-conditional network: ``net(x_t (B, D), t (B,) long or float,
    y (B,) int64 in 0..K) -> (B, D)``: E[x0 | x_t, y = k] (a single Gaussian's posterior mean)
    for y = k < K, E[x0 | x_t] (the mixture's, as :class:`IdealNetwork`) for y = K. Trained with
    label dropout to the null label, a network approaches exactly this pair (Ho & Salimans 2022,
    Sec. 3.2).
    """

    data: GaussianMixtureData
    schedule: NoiseSchedule
    prediction: Parameterization = Parameterization.EPS

    @property
    def num_classes(self) -> int:
        """K: the labels are 0..K-1, and K is the null (unconditional) label."""
        return self.data.num_components

    def __call__(self, x_t: Tensor, t: Tensor, y: Tensor) -> Tensor:
        y = _null_or_label(y.to(x_t.device), x_t.shape[0], self.num_classes)
        abar = alpha_bar(self.schedule, t, x_t)
        per_k = self.data.component_posterior_means(x_t, abar)  # (B, K, D)
        cond = per_k[torch.arange(len(y), device=y.device), y.clamp(max=self.num_classes - 1)]
        null = (y == self.num_classes)[:, None]
        x0 = torch.where(null, self.data.posterior_mean(x_t, abar).to(cond), cond).to(x_t.dtype)
        return target_for(self.prediction, x0, eps_from_x0(x_t, x0, abar), abar)


@dataclass(frozen=True, eq=False)
class IdealClassifier:
    """The exact noise-aware classifier of a labelled Gaussian mixture: ``clf(x_t (B, D), t (B,))
    -> logits (B, K)`` = log p(k | x_t), the log responsibilities of the components for the
    variance-preserving x_t at timestep t (long, or float between timesteps). Differentiable in
    x_t, so grad_x log p(y | x_t) is the exact term of classifier guidance (Dhariwal & Nichol
    2021, Sec. 4); computed in float64, returned in x_t's dtype."""

    data: GaussianMixtureData
    schedule: NoiseSchedule

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        abar = alpha_bar(self.schedule, t, torch.empty(0, 1, dtype=torch.float64))
        return self.data.log_responsibilities(x_t, abar.to(x_t.device)).to(x_t.dtype)
