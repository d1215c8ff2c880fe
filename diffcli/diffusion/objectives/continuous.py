"""What every continuous-time objective shares: a preconditioned network on a noise level sigma.

Any Gaussian forward process x_t = a(t) x0 + b(t) eps is, divided by a(t), the
variance-exploding xbar = x0 + sigma eps with sigma = b / a (Karras et al. 2022, Sec. 2 and
eq. 7), and in the variance-preserving scale x = xbar / sqrt(1 + sigma^2) that diffcli's samplers
step in. An objective says how the network sees a noisy sample and what it predicts, as four
coefficients of sigma (Karras et al. 2022, eq. 7 and Table 1, here on the VP-scaled x):

    F = net(c_in(sigma) x, c_noise(sigma)),    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F,

the distribution of training noise levels p(sigma), and a loss weight. Training minimizes

    E_{sigma, x0, eps} w(sigma) || F - (x0 - c_skip x) / c_out ||^2
        = E w(sigma) / c_out^2 || D(x; sigma) - x0 ||^2                       (eq. 8 of EDM),

the "effective training target" of EDM's eq. 8 in F's units. The ideal D is E[x0 | x], whatever
the coefficients: they change the network's task, not the denoiser it converges to.

For sampling, :meth:`Continuous.lattice` tabulates T noise levels over the objective's range as
a :class:`~diffcli.diffusion.schedules.NoiseSchedule` (alpha-bar = 1 / (1 + sigma^2)); the grids
and samplers step on it as on any schedule, and the
:class:`~diffcli.diffusion.denoiser.Denoiser` evaluates the network through the coefficients at
each exact sigma (never at a lattice index).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from diffcli.diffusion.denoiser import Coefficients
from diffcli.diffusion.schedules import NoiseSchedule

F64 = torch.float64
LATTICE = 1000  # noise levels tabulated for sampling


def column(values: Tensor, like: Tensor) -> Tensor:
    """(B,) values as (B, 1, ..., 1) in ``like``'s dtype and device."""
    return values.reshape(-1, *([1] * (like.ndim - 1))).to(like)


def to_vp(x0: Tensor, noise: Tensor, sigma: Tensor) -> Tensor:
    """The noisy sample in the variance-preserving scale, x = (x0 + sigma eps) /
    sqrt(1 + sigma^2). x0, noise: (B, ...); sigma: (B,) -> (B, ...)"""
    return (x0 + column(sigma, x0) * noise) / column((1 + sigma**2).sqrt(), x0)


def lattice_from_sigmas(sigmas: Tensor, name: str) -> NoiseSchedule:
    """The schedule whose sigma table is ``sigmas`` (T,) increasing: alpha-bar_t =
    1 / (1 + sigma_t^2), beta_t = 1 - alpha-bar_t / alpha-bar_{t-1} (alpha-bar_{-1} = 1)."""
    sigmas = sigmas.to(F64)
    if not bool((sigmas[1:] > sigmas[:-1]).all()) or float(sigmas[0]) <= 0:
        raise ValueError("a lattice needs positive, increasing noise levels")
    abar = 1.0 / (1.0 + sigmas**2)
    prev = torch.cat([torch.ones(1, dtype=F64), abar[:-1]])
    return NoiseSchedule(betas=1.0 - abar / prev, name=name)


@dataclass(frozen=True)
class Continuous(ABC):
    """A continuous-time objective: coefficients, training noise levels, loss weight, lattice.

    Subclasses set ``name`` and implement :meth:`precondition`, :meth:`sample_sigma` and
    :meth:`lattice_sigmas`; :meth:`loss_weight` defaults to 1 (in F's units)."""

    name: ClassVar[str] = "continuous"
    continuous: ClassVar[bool] = True

    @abstractmethod
    def precondition(self, sigma: Tensor) -> Coefficients:
        """c_in, c_noise, c_skip, c_out at noise levels sigma (B,) float64; each (B,)."""

    @abstractmethod
    def noise_level(self, c_noise: Tensor) -> Tensor:
        """The sigma (B,) float64 whose network time input is c_noise (B,)."""

    @abstractmethod
    def sample_sigma(self, n: int, device: torch.device | str = "cpu",
                     generator: torch.Generator | None = None) -> Tensor:
        """n training noise levels drawn from the objective's p(sigma). (n,) float64"""

    @abstractmethod
    def lattice_sigmas(self, num: int = LATTICE) -> Tensor:
        """``num`` increasing noise levels spanning the range sampling starts from. (num,)"""

    def loss_weight(self, sigma: Tensor) -> Tensor:
        """w(sigma) of the loss in F's units (:func:`objective_loss`). (B,) float64"""
        return torch.ones_like(sigma, dtype=F64)

    def lattice(self, num: int = LATTICE) -> NoiseSchedule:
        """The sampling lattice: :meth:`lattice_sigmas` as a schedule the samplers step on."""
        return lattice_from_sigmas(self.lattice_sigmas(num), self.name)

    def uncertainty(self) -> nn.Module | None:
        """A learned loss weighting trained alongside the network (EDM2), or None."""
        return None

    def training_target(self, x0: Tensor, x: Tensor, pre: Coefficients) -> Tensor:
        """The network's training target (x0 - c_skip x) / c_out for the noisy x (B, ...)."""
        return (x0 - column(pre.c_skip, x) * x) / column(pre.c_out, x)


def objective_loss(objective: Continuous, net: Callable[[Tensor, Tensor], Tensor], x0: Tensor,
                   *, uncertainty: nn.Module | None = None,
                   generator: torch.Generator | None = None,
                   noise: Tensor | None = None) -> Tensor:
    """One batch's loss: sigma ~ p(sigma), x = (x0 + sigma eps) / sqrt(1 + sigma^2),
    w(sigma) || F - (x0 - c_skip x) / c_out ||^2 averaged over each sample's elements, then over
    the batch. With ``uncertainty`` u(sigma) (EDM2, Karras et al. 2024, eq. 21) each sample's
    loss L becomes L / exp(u) + u. ``noise`` (B, ...): the eps paired with each x0 (a coupling,
    e.g. reflow's (z, ODE(z)) pairs, Liu et al. 2023, Sec. 2.2) instead of independent draws.
    x0: (B, ...) -> scalar."""
    sigma = objective.sample_sigma(x0.shape[0], x0.device, generator)  # (B,)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    elif noise.shape != x0.shape:
        raise ValueError(f"noise of shape {tuple(noise.shape)} for data of shape "
                         f"{tuple(x0.shape)}: give one eps per sample, shaped like it")
    x = to_vp(x0, noise.to(x0), sigma)
    pre = objective.precondition(sigma)
    out = net(column(pre.c_in, x) * x, pre.c_noise.to(torch.float32))
    err = (out - objective.training_target(x0, x, pre)) ** 2
    per_sample = err.flatten(1).mean(1) * objective.loss_weight(sigma).to(err)
    if uncertainty is not None:
        u = uncertainty(pre.c_noise.to(torch.float32)).reshape(-1).to(err)
        per_sample = per_sample / u.exp() + u
    return per_sample.mean()


def check_combination(objective: object, loss: str, learn_sigma: bool,
                      min_snr_gamma: float | None) -> None:
    """EDM and flow own their target and weighting: the DDPM chain's ``loss=hybrid|vlb``,
    learned variances and Min-SNR weighting do not apply to them. ValueError, one line naming
    both settings; nothing for the DDPM chain."""
    if not getattr(objective, "continuous", False):
        return
    name = f"objective={getattr(objective, 'name', '?')}"
    if loss != "simple":
        raise ValueError(f"loss={loss} is a loss of the DDPM chain's bound; {name} has its own "
                         "loss: use loss=simple (or objective=ddpm)")
    if learn_sigma:
        raise ValueError(f"model.learn_sigma=true learns the DDPM chain's variances; {name} has "
                         "none: set model.learn_sigma=false (or objective=ddpm)")
    if min_snr_gamma is not None:
        raise ValueError(f"module.min_snr_gamma weights the DDPM chain's loss; {name} has its "
                         "own weighting: set module.min_snr_gamma=null (or objective=ddpm)")


def for_data(objective: Any, shape: tuple[int, ...]) -> Any:
    """``objective`` with what depends on the data's size filled in: flow's resolution-dependent
    shift (null) from images (C, H, W); unchanged otherwise (points, or nothing to fill)."""
    fill = getattr(objective, "for_images", None)
    if fill is None or len(shape) != 3:
        return objective
    return fill(int(shape[1]), int(shape[2]))
