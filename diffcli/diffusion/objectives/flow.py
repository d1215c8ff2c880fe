"""Flow matching / rectified flow (Lipman et al. 2023; Liu et al. 2023) with SD3's recipe.

An interpolant x_t = alpha(t) x0 + s(t) eps, t in [0, 1] from data to noise (Ma et al. 2024,
SiT, Sec. 2):

* ``linear`` (rectified flow; SD3): alpha = 1 - t, s = t;
* ``gvp``: alpha = cos(pi t / 2), s = sin(pi t / 2);
* ``vp``: alpha = exp(-t^2 (beta_max - beta_min) / 4 - t beta_min / 2), s = sqrt(1 - alpha^2)
  (the VP SDE's marginals, Song et al. 2021).

The network sees x_t and ``time_scale`` t and predicts the velocity
dx_t/dt = alpha' x0 + s' eps (``target=velocity``; eps - x0 for the linear path) or the noise
(``target=noise``). Then x0 = (s' x_t - s F) / (alpha s' - s alpha') or (x_t - s F) / alpha:
affine in F, so it is a preconditioned denoiser (:mod:`~diffcli.diffusion.objectives.continuous`) of
sigma = s / alpha, and x_t = alpha sqrt(1 + sigma^2) x in the VP scale of the samplers.

Training t (Esser et al. 2024, Sec. 3.1): ``logit_normal`` (logit t ~ N(m, s^2), their best,
m = 0, s = 1) or ``uniform``; then the ``shift``: sigma -> shift sigma, which for the linear path
is their t -> shift t / (1 + (shift - 1) t) (Sec. 5.3.2), more noise for shift > 1. The shift
moves where training and sampling put their noise levels (the lattice too), not the path: the
network sees x_t at the t whose s / alpha is the sample's sigma. ``shift``
null: resolution-dependent, sqrt(H W / ``base_resolution``^2) of the images (their
sqrt(m / n) with n = 256^2 pixels), set when the data's size is known. The loss is the plain
MSE of the target (weight 1), as SD3's rectified flow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from torch import Tensor

from diffcli.diffusion.denoiser import Coefficients
from diffcli.diffusion.objectives.continuous import F64, LATTICE, Continuous

INTERPOLANTS = ("linear", "gvp", "vp")
TARGETS = ("velocity", "noise")
T_SAMPLING = ("logit_normal", "uniform")
T_EDGE = 1e-3  # training and sampling keep to the noise levels of t in [T_EDGE, 1 - T_EDGE]


def _choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _number(name: str, value: object, positive: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and not value > 0):
        kind = "a positive number" if positive else "a number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


@dataclass(frozen=True)
class Flow(Continuous):
    """Flow matching: ``interpolant`` linear | gvp | vp, ``target`` velocity | noise,
    ``t_sampling`` logit_normal | uniform (``logit_mean``, ``logit_std``), ``shift`` (null:
    resolution-dependent from ``base_resolution``), ``time_scale`` (the network sees
    time_scale t), ``beta_min`` / ``beta_max`` of the vp path."""

    interpolant: str = "linear"
    target: str = "velocity"
    t_sampling: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float | None = 1.0
    base_resolution: int = 256
    time_scale: float = 1000.0
    beta_min: float = 0.1
    beta_max: float = 20.0

    name: ClassVar[str] = "flow"

    def __post_init__(self) -> None:
        _choice("interpolant", self.interpolant, INTERPOLANTS)
        _choice("target", self.target, TARGETS)
        _choice("t_sampling", self.t_sampling, T_SAMPLING)
        _number("logit_mean", self.logit_mean)
        for key in ("logit_std", "time_scale", "base_resolution", "beta_min", "beta_max"):
            _number(key, getattr(self, key), positive=True)
        if self.shift is not None:
            _number("shift", self.shift, positive=True)
        if not self.beta_min < self.beta_max:
            raise ValueError(f"beta_min ({self.beta_min}) must be below "
                             f"beta_max ({self.beta_max})")

    def for_images(self, height: int, width: int) -> Flow:
        """This objective with ``shift`` set: as given, or (null) sqrt(H W) / base_resolution
        (Esser et al. 2024, Sec. 5.3.2)."""
        if self.shift is not None:
            return self
        return replace(self, shift=math.sqrt(height * width) / self.base_resolution)

    @property
    def shift_value(self) -> float:
        if self.shift is None:
            raise ValueError("shift=null (the resolution rule) is set from the images' size, "
                             "and these data are not images: give shift=<number>")
        return float(self.shift)

    # the interpolant: alpha(t), s(t) and their derivatives, t (B,) float64
    def path(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(alpha, s, alpha', s') at t (B,) float64."""
        if self.interpolant == "linear":
            return 1 - t, t, -torch.ones_like(t), torch.ones_like(t)
        if self.interpolant == "gvp":
            a, s = torch.cos(math.pi * t / 2), torch.sin(math.pi * t / 2)
            return a, s, -math.pi / 2 * s, math.pi / 2 * a
        d = self.beta_max - self.beta_min
        log_a = -t**2 * d / 4 - t * self.beta_min / 2
        a = log_a.exp()
        da = a * (-t * d / 2 - self.beta_min / 2)
        s = (1 - a**2).sqrt()
        return a, s, da, -a * da / s

    def sigma_of_t(self, t: Tensor) -> Tensor:
        """sigma = s(t) / alpha(t). (B,) float64"""
        a, s, _, _ = self.path(t.to(F64))
        return s / a

    def t_of_sigma(self, sigma: Tensor) -> Tensor:
        """The inverse of :meth:`sigma_of_t`. (B,) float64"""
        r = sigma.to(F64)
        if self.interpolant == "linear":
            return r / (1 + r)
        if self.interpolant == "gvp":
            return 2 / math.pi * torch.atan(r)
        d, b0 = self.beta_max - self.beta_min, self.beta_min
        log1p = torch.log1p(r**2)  # t^2 d / 2 + t b0 = ln(1 + r^2)
        return (-b0 + (b0**2 + 2 * d * log1p).sqrt()) / d

    def precondition(self, sigma: Tensor) -> Coefficients:
        """At sigma (B,): the network sees x_t = alpha sqrt(1 + sigma^2) x and time_scale t;
        x0 = c_skip x + c_out F for the velocity or noise target. Each (B,) float64."""
        sigma = sigma.to(F64)
        t = self.t_of_sigma(sigma)
        a, s, da, ds = self.path(t)
        c_in = a * (1 + sigma**2).sqrt()
        if self.target == "noise":
            c_skip, c_out = c_in / a, -s / a
        else:
            det = a * ds - s * da
            c_skip, c_out = ds * c_in / det, -s / det
        return Coefficients(c_in=c_in, c_noise=self.time_scale * t, c_skip=c_skip, c_out=c_out)

    def noise_level(self, c_noise: Tensor) -> Tensor:
        """The sigma whose c_noise (= time_scale t) this is. (B,) float64"""
        return self.sigma_of_t(c_noise.to(F64) / self.time_scale)

    def sigma_range(self) -> tuple[float, float]:
        """The noise levels training and sampling keep to, whatever the shift: those of the
        path's t in [1e-3, 1 - 1e-3] (e.g. sigma 0.001 to 999 on the linear path)."""
        edges = self.sigma_of_t(torch.tensor([T_EDGE, 1 - T_EDGE], dtype=F64))
        return float(edges[0]), float(edges[1])

    def sample_sigma(self, n: int, device: torch.device | str = "cpu",
                     generator: torch.Generator | None = None) -> Tensor:
        """t ~ logit-normal(logit_mean, logit_std) or uniform, as sigma with the shift applied,
        kept inside :meth:`sigma_range`. (n,) float64"""
        if self.t_sampling == "uniform":
            t = torch.rand(n, generator=generator, device=device, dtype=F64)
        else:
            z = torch.randn(n, generator=generator, device=device, dtype=F64)
            t = torch.sigmoid(self.logit_mean + self.logit_std * z)
        lo, hi = self.sigma_range()
        return (self.shift_value * self.sigma_of_t(t.clamp(1e-12, 1 - 1e-12))).clamp(lo, hi)

    def lattice_sigmas(self, num: int = LATTICE) -> Tensor:
        """``num`` noise levels spanning :meth:`sigma_range`, at uniform steps of the unshifted
        t (shift applied): a trailing grid on this lattice is the shifted uniform-t Euler grid
        of flow models (SD3), starting at the top of the range for any shift. (num,) float64"""
        lo, hi = self.sigma_range()
        ends = self.t_of_sigma(torch.tensor([lo, hi], dtype=F64) / self.shift_value)
        t = torch.linspace(float(ends[0]), float(ends[1]), num, dtype=F64)
        return self.shift_value * self.sigma_of_t(t)
