"""The one sampler interface, and the helpers its step rules share.

Samplers are frozen dataclasses of hyperparameters with a single method
``sample(model, noise, *, generator=None, callback=None)``; the network is never owned. A
sampler is a step rule over a grid of noise levels that it does not choose itself: ``grid``
names one of :mod:`diffcli.diffusion.grids` (shaped by ``steps``, ``rho``, ``sigma_min``,
``sigma_max``, ``custom_timesteps``, ``custom_sigmas``), and :meth:`Sampler.make_grid` builds it
for a schedule. The model is the :class:`~diffcli.diffusion.denoiser.Denoiser`, evaluated at the
grid's noise levels.

A model with learned variances (Nichol & Dhariwal 2021) returns ``Prediction.var_frac``; the
stochastic step rules use it (DDPM's ``variance=learned|auto``, DDIM with eta > 0, through
:func:`learned_variance`), the deterministic ODE solvers (DPM-Solver++(2M), Euler, Heun) ignore it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

import torch
from torch import Tensor

from diffcli.diffusion import grids
from diffcli.diffusion.denoiser import Denoiser, Network
from diffcli.diffusion.grids import Grid, GridKind
from diffcli.diffusion.process import learned_log_variance
from diffcli.diffusion.schedules import NoiseSchedule

__all__ = [
    "Denoiser", "Generator", "Grid", "GridKind", "Network", "Sampler", "SamplerStep", "Spacing",
    "StepCallback", "clip_x0", "dynamic_threshold", "learned_variance", "randn_like",
    "step_betas", "timestep_sequence",
]

Generator = torch.Generator | Sequence[torch.Generator] | None


class SamplerStep(NamedTuple):
    """What a sampler reports after each network evaluation (for progress bars and trajectories)."""

    index: int  # 0-based step number
    total: int  # number of steps
    t: int | float  # timestep evaluated: an int on training timesteps, else the exact real value
    x_t: Tensor  # (B, ...) the state the network saw
    x0: Tensor  # (B, ...) its clean-data estimate


StepCallback = Callable[[SamplerStep], None]


class Spacing(str, Enum):
    """How ``steps`` timesteps are picked from 0..T-1 (Lin et al. 2024, Table 2): the timestep
    grids of :class:`~diffcli.diffusion.grids.GridKind`, under their older option name."""

    LEADING = "leading"
    TRAILING = "trailing"
    LINSPACE = "linspace"


def timestep_sequence(num_timesteps: int, steps: int,
                      spacing: Spacing | str = Spacing.TRAILING) -> list[int]:
    """``steps`` distinct timestep indices in 0..T-1, in decreasing order (the sampling order):
    :func:`grids.leading`, :func:`grids.trailing` or :func:`grids.linspace`."""
    pick = {Spacing.LEADING: grids.leading, Spacing.TRAILING: grids.trailing,
            Spacing.LINSPACE: grids.linspace}[Spacing(spacing)]
    return pick(num_timesteps, steps)


def randn_like(x: Tensor, generator: Generator) -> Tensor:
    """Standard normal noise shaped like x. A list of generators draws sample i from generator i,
    so each sample depends only on its own seed, not on the batch it is in."""
    if generator is None or isinstance(generator, torch.Generator):
        dev = generator.device if generator is not None else x.device
        return torch.randn(x.shape, generator=generator, device=dev, dtype=x.dtype).to(x.device)
    if len(generator) != x.shape[0]:
        raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
    draws = [torch.randn(x.shape[1:], generator=g, device=g.device, dtype=x.dtype)
             for g in generator]
    return torch.stack(draws).to(x.device)


def clip_x0(x0: Tensor, enabled: bool, limit: float = 1.0) -> Tensor:
    """Clip the clean-data estimate to [-limit, limit] when enabled (Ho et al. 2020, Sec. 3.3)."""
    return x0.clamp(-limit, limit) if enabled else x0


def dynamic_threshold(x0: Tensor, percentile: float) -> Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3): per sample, s = the
    ``percentile`` quantile of |x0|, s = max(s, 1); x0 -> clamp(x0, -s, s) / s. (B, ...)"""
    flat = x0.flatten(1).abs()
    s = torch.quantile(flat.float(), percentile, dim=1).to(x0.dtype).clamp(min=1.0)
    s = s.reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def step_betas(grid: Grid, i: int) -> tuple[float, float]:
    """(beta, beta-tilde) of step i of the chain on ``grid``, from grid point t = i to s = i + 1:
    beta = 1 - abar_t / abar_s and beta-tilde = (1 - abar_s) / (1 - abar_t) beta, the posterior
    variance (Ho et al. 2020, eq. 7; respaced as Nichol & Dhariwal 2021, Sec. 4).

    The last step goes to abar_s = 1, where beta-tilde = 0; as Improved DDPM clips it
    (``posterior_log_variance_clipped``), it takes the step above's (grid point N - 2; beta for
    a one-step grid), so that log beta-tilde is finite. The samplers add no noise on that step,
    so the clipped value never reaches a sample."""
    n = len(grid)
    abar_t, abar_s = grid.alphas_cumprod[i], grid.alphas_cumprod[i + 1]
    beta = 1 - abar_t / abar_s
    if i + 1 == n:
        return beta, step_betas(grid, i - 1)[1] if n > 1 else beta
    return beta, (1 - abar_s) / (1 - abar_t) * beta


def learned_variance(grid: Grid, i: int, var_frac: Tensor) -> Tensor:
    """sigma^2 = exp(v log beta + (1 - v) log beta-tilde) of step i (Nichol & Dhariwal 2021,
    eq. 15) with the step's respaced (beta, beta-tilde) (:func:`step_betas`) and v =
    ``var_frac`` (B, ...); the logs of the betas are taken in float64. (B, ...) in var_frac's
    dtype."""
    beta, tilde = (torch.tensor(b, dtype=torch.float64) for b in step_betas(grid, i))
    return learned_log_variance(var_frac, beta, tilde).exp()  # 0-dim: var_frac's dtype


def check(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` (one line, naming the option) unless ``ok``."""
    if not ok:
        raise ValueError(message)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _positive(value: object) -> bool:
    return _is_number(value) and math.isfinite(value) and value > 0


def _numbers(values: object) -> tuple[float, ...] | None:
    """A config list as a tuple of numbers, or None if it is not one."""
    if isinstance(values, Sequence) and not isinstance(values, str):
        if all(_is_number(v) for v in values):
            return tuple(values)
    return None


def _member(enum: type[Enum], value: object, option: str) -> Enum:
    """``enum(value)``, or a one-line ValueError naming ``option`` and the choices."""
    try:
        return enum(value)
    except ValueError:
        names = ", ".join(m.value for m in enum)
        raise ValueError(f"{option} must be one of {names}, got {value!r}") from None


@dataclass(frozen=True)
class Sampler(ABC):
    """Base of all samplers: hyperparameters only; history lives in ``sample``'s loop.

    ``steps``: points on the grid (None: T; ignored by ``grid=custom``, whose list sets it).
    ``spacing``: the old name of the timestep grids; when given it sets ``grid``.
    ``grid``, ``rho``, ``sigma_min``, ``sigma_max``, ``custom_timesteps``, ``custom_sigmas``:
    the grid (:func:`diffcli.diffusion.grids.make_grid`); ``rho`` and the sigma range shape the
    ``karras`` and ``logsnr`` grids only (the range defaults to the schedule's, and is clipped
    to it).
    """

    steps: int | None = None  # None: one step per training timestep
    spacing: Spacing | None = None  # deprecated alias: grid=leading|trailing|linspace
    clip_denoised: bool = False
    dynamic_threshold: float | None = None  # e.g. 0.995: Imagen's percentile; overrides clipping
    grid: GridKind = GridKind.TRAILING
    rho: float = 7.0
    sigma_min: float | None = None
    sigma_max: float | None = None
    custom_timesteps: Sequence[float] | None = None
    custom_sigmas: Sequence[float] | None = None

    def __post_init__(self) -> None:
        n = self.steps
        check(n is None or (_is_number(n) and isinstance(n, int) and n >= 1),
              f"steps must be an integer >= 1 (or null), got {n!r}")
        self._set("grid", self._grid_kind())
        self._set("spacing", None)  # folded into grid
        check(isinstance(self.clip_denoised, bool),
              f"clip_denoised must be true or false, got {self.clip_denoised!r}")
        p = self.dynamic_threshold
        check(p is None or (_is_number(p) and 0 < p <= 1),
              f"dynamic_threshold must be in (0, 1] (or null), got {p!r}")
        check(_positive(self.rho), f"rho must be > 0, got {self.rho!r}")
        for name in ("sigma_min", "sigma_max"):
            value = getattr(self, name)
            check(value is None or _positive(value), f"{name} must be > 0 (or null), got {value!r}")
        if self.sigma_min is not None and self.sigma_max is not None:
            check(self.sigma_min < self.sigma_max, f"sigma_min ({self.sigma_min}) must be below "
                                                   f"sigma_max ({self.sigma_max})")
        self._check_custom()

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)

    def _grid_kind(self) -> GridKind:
        """``grid`` as a :class:`GridKind`, or ``spacing`` when that old option is given."""
        if self.spacing is not None:
            return GridKind(_member(Spacing, self.spacing, "spacing").value)
        return _member(GridKind, self.grid, "grid")

    def _check_custom(self) -> None:
        """``grid=custom`` takes exactly one list, which sets ``steps``; other grids none."""
        given = [n for n in ("custom_timesteps", "custom_sigmas") if getattr(self, n) is not None]
        if self.grid is not GridKind.CUSTOM:
            check(not given, f"{given[0] if given else ''} is only used with grid=custom")
            return
        check(len(given) == 1, "grid=custom needs exactly one of custom_timesteps, custom_sigmas")
        name = given[0]
        values = _numbers(getattr(self, name))
        check(values is not None, f"{name} must be a list of numbers, got {getattr(self, name)!r}")
        if name == "custom_sigmas":
            grids.custom_sigma_grid(values)
            steps = len(values) - (values[-1] == 0)
        else:
            grids.custom_timestep_grid(math.inf, values)
            steps = len(values)
        self._set(name, values)
        self._set("steps", steps)

    def make_grid(self, schedule: NoiseSchedule) -> Grid:
        """The grid this sampler steps on for ``schedule``: N noise levels, then sigma = 0."""
        return grids.make_grid(schedule, self.grid, self.steps, rho=self.rho,
                               sigma_min=self.sigma_min, sigma_max=self.sigma_max,
                               custom_timesteps=self.custom_timesteps,
                               custom_sigmas=self.custom_sigmas)

    def timesteps(self, schedule: NoiseSchedule) -> list[int | float]:
        """The N decreasing timesteps this sampler evaluates the network at (ints on training
        timesteps, exact reals between them); ``len`` is the number of steps."""
        return list(self.make_grid(schedule).timesteps)

    def sigmas(self, schedule: NoiseSchedule) -> list[float]:
        """The N + 1 decreasing noise levels of :meth:`make_grid`, the last 0."""
        return list(self.make_grid(schedule).sigmas)

    def notice(self, schedule: NoiseSchedule) -> str | None:
        """One line on how this sampler adapts its step rule to its grid on ``schedule`` (for
        the commands to print), or None when it runs as configured."""
        return None

    def denoised(self, x0: Tensor) -> Tensor:
        """The sampler's post-processing of x0_hat: dynamic thresholding or clipping, or none."""
        if self.dynamic_threshold is not None:
            return dynamic_threshold(x0, self.dynamic_threshold)
        return clip_x0(x0, self.clip_denoised)

    @abstractmethod
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        """Map x_T = ``noise`` (B, ...), the state at the grid's first noise level in the
        variance-preserving scale, to samples x_0 (B, ...)."""
