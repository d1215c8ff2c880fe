"""The grids samplers step on: which noise levels are visited, in which order.

A sampler is a step rule; the grid is chosen separately (``sampler.grid``). Every grid is a
decreasing list of N noise levels sigma_0 > ... > sigma_{N-1} > 0 at which the network is
evaluated, followed by sigma_N = 0 (the clean data). sigma is the variance-exploding noise level
sqrt((1 - abar)/abar) of x_t / sqrt(abar) (Karras et al. 2022, Sec. 2), so that a timestep grid
and a sigma grid are the same kind of object:

* timestep grids pick N training timesteps out of 0..T-1 (Lin et al. 2024, Table 2):
  :func:`leading`, :func:`trailing`, :func:`linspace` (= ``uniform``);
* sigma grids pick N real noise levels between sigma_max and sigma_min: :func:`karras`
  (Karras et al. 2022, eq. 5) and :func:`logsnr` (uniform in log-SNR, as Lu et al. 2022 step
  DPM-Solver); their points fall between training timesteps, where the network is evaluated
  at an interpolated timestep (:meth:`NoiseSchedule.level`);
* ``custom``: an explicit list of timesteps (:func:`custom_timestep_grid`) or of sigmas
  (:func:`custom_sigma_grid`).

:func:`make_grid` builds a :class:`Grid` (sigmas, timesteps and alpha-bars together) for a
schedule. The functions are pure; they know nothing of networks or samplers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise

from diffcli.diffusion.schedules import NoiseSchedule


class GridKind(str, Enum):
    """The values of ``sampler.grid``."""

    LEADING = "leading"
    TRAILING = "trailing"
    LINSPACE = "linspace"
    UNIFORM = "uniform"  # the same grid as linspace
    KARRAS = "karras"
    LOGSNR = "logsnr"
    CUSTOM = "custom"

    @property
    def on_timesteps(self) -> bool:
        """Whether the grid is made of training timesteps (so it has at most T points)."""
        return self in _TIMESTEP_KINDS


_TIMESTEP_KINDS = frozenset({GridKind.LEADING, GridKind.TRAILING, GridKind.LINSPACE,
                             GridKind.UNIFORM})


def _check_steps(num_timesteps: int, steps: int) -> None:
    if not 1 <= steps <= num_timesteps:
        raise ValueError(f"steps must be between 1 and {num_timesteps}, got {steps}")


def leading(num_timesteps: int, steps: int) -> list[int]:
    """t_i = i floor(T/N), i = 0..N-1, decreasing: 'leading' spacing (Lin et al. 2024, Table 2;
    DDIM's original choice). Never visits T-1. N distinct ints in 0..T-1."""
    _check_steps(num_timesteps, steps)
    return sorted({i * (num_timesteps // steps) for i in range(steps)}, reverse=True)


def trailing(num_timesteps: int, steps: int) -> list[int]:
    """t_i = round(T - i T/N) - 1, i = 0..N-1: 'trailing' spacing (Lin et al. 2024, Table 2),
    which always starts at T-1, the noisiest training timestep. Up to N distinct ints in
    0..T-1, decreasing."""
    _check_steps(num_timesteps, steps)
    T = num_timesteps
    return sorted({round(T - i * T / steps) - 1 for i in range(steps)}, reverse=True)


def linspace(num_timesteps: int, steps: int) -> list[int]:
    """t_i = round(i (T-1)/(N-1)), i = 0..N-1: 'linspace' spacing (Lin et al. 2024, Table 2),
    uniform in t from T-1 down to 0. Up to N distinct ints in 0..T-1, decreasing."""
    _check_steps(num_timesteps, steps)
    T = num_timesteps
    return sorted({round(i * (T - 1) / max(steps - 1, 1)) for i in range(steps)}, reverse=True)


def karras(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> list[float]:
    """sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho for
    i = 0..N-1, then sigma_N = 0 (Karras et al. 2022, eq. 5; rho = 7 spends the steps near
    sigma_min). N + 1 decreasing floats."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    a, b = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
    ramp = [i / max(steps - 1, 1) for i in range(steps)]
    return [(a + r * (b - a)) ** rho for r in ramp] + [0.0]


def logsnr(sigma_min: float, sigma_max: float, steps: int) -> list[float]:
    """log sigma_i = log sigma_max + i/(N-1) (log sigma_min - log sigma_max), i = 0..N-1, then
    sigma_N = 0: uniform in log-SNR, since log-SNR = -2 log sigma (the 'logSNR' time steps of Lu
    et al. 2022, Sec. 3.3, where the half log-SNR lambda = -log sigma). N + 1 decreasing floats."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    a, b = math.log(sigma_max), math.log(sigma_min)
    ramp = [i / max(steps - 1, 1) for i in range(steps)]
    return [math.exp(a + r * (b - a)) for r in ramp] + [0.0]


def _decreasing(values: Sequence[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if not out:
        raise ValueError(f"{what} must not be empty")
    if any(not math.isfinite(v) for v in out) or any(a <= b for a, b in pairwise(out)):
        raise ValueError(f"{what} must be finite and strictly decreasing, got {out}")
    return out


def custom_timestep_grid(num_timesteps: int, values: Sequence[float]) -> list[int | float]:
    """An explicit grid of timesteps in [0, T-1], strictly decreasing; integral values stay ints
    (training timesteps), others are evaluated by interpolation. N values."""
    out = _decreasing(values, "custom_timesteps")
    if out[0] > num_timesteps - 1 or out[-1] < 0:
        raise ValueError(f"custom_timesteps must lie in [0, {num_timesteps - 1}], got {out}")
    return [int(v) if v.is_integer() else v for v in out]


def custom_sigma_grid(values: Sequence[float]) -> list[float]:
    """An explicit grid of noise levels, strictly decreasing and positive, with sigma_N = 0
    appended unless the list already ends at 0. N + 1 floats."""
    out = _decreasing(values, "custom_sigmas")
    body = out[:-1] if out[-1] == 0.0 else out
    if not body or body[-1] <= 0:
        raise ValueError(f"custom_sigmas must be positive (a last 0 is optional), got {out}")
    return [*body, 0.0]


@dataclass(frozen=True)
class Grid:
    """N noise levels to evaluate at, then the clean end point, for one schedule.

    ``sigmas``: (N + 1,) decreasing, sigmas[N] = 0. ``timesteps``: (N,) the network's timestep
    at sigmas[:N], an int on a training timestep, else a float. ``alphas_cumprod``: (N + 1,)
    alpha-bar = 1 / (1 + sigma^2), exactly the schedule's table entry on training timesteps,
    and 1 at the end.
    """

    sigmas: tuple[float, ...]
    timesteps: tuple[int | float, ...]
    alphas_cumprod: tuple[float, ...]

    def __len__(self) -> int:
        """N, the number of steps (points the network is evaluated at, for one-stage rules)."""
        return len(self.timesteps)

    @property
    def on_lattice(self) -> bool:
        """Whether every point is a training timestep."""
        return all(isinstance(t, int) for t in self.timesteps)

    @classmethod
    def from_sigmas(cls, schedule: NoiseSchedule, sigmas: Sequence[float]) -> Grid:
        """The grid of N + 1 decreasing sigmas (the last 0)."""
        levels = [schedule.level(s) for s in sigmas[:-1]]
        return cls(tuple(float(s) for s in sigmas), tuple(lv.t for lv in levels),
                   tuple(lv.alpha_bar for lv in levels) + (1.0,))

    @classmethod
    def from_timesteps(cls, schedule: NoiseSchedule, timesteps: Sequence[int | float]) -> Grid:
        """The grid through N decreasing timesteps (training ones exactly, others by the
        schedule's log-sigma interpolation), then sigma = 0."""
        sigmas = [_sigma_at(schedule, t) for t in timesteps]
        return cls.from_sigmas(schedule, [*sigmas, 0.0])


def _sigma_at(schedule: NoiseSchedule, t: int | float) -> float:
    """sigma at timestep t: the table's value at an int, log-linear interpolation between."""
    if isinstance(t, int):
        return float(schedule.sigmas[t])
    lo = min(math.floor(t), schedule.num_timesteps - 2)
    w = t - lo
    log_sig = schedule.log_sigmas
    return math.exp((1 - w) * float(log_sig[lo]) + w * float(log_sig[lo + 1]))


def sigma_range(schedule: NoiseSchedule, sigma_min: float | None,
                sigma_max: float | None) -> tuple[float, float]:
    """(sigma_min, sigma_max) for a sigma grid: the given values clipped to the schedule's
    range [sigma(0), sigma(T-1)], which is also the default; refuses an empty range."""
    lo, hi = float(schedule.sigmas[0]), float(schedule.sigmas[-1])
    smin = lo if sigma_min is None else max(float(sigma_min), lo)
    smax = hi if sigma_max is None else min(float(sigma_max), hi)
    if smin >= smax:
        raise ValueError(f"sigma_min ({smin:g}) must be below sigma_max ({smax:g}) within the "
                         f"schedule's range [{lo:g}, {hi:g}]")
    return smin, smax


def make_grid(schedule: NoiseSchedule, kind: GridKind | str, steps: int | None = None, *,
              rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None,
              custom_timesteps: Sequence[float] | None = None,
              custom_sigmas: Sequence[float] | None = None) -> Grid:
    """The grid ``kind`` on ``schedule`` with ``steps`` points (default: T).

    ``rho``, ``sigma_min``, ``sigma_max`` shape the sigma grids (``karras``, ``logsnr``; the
    sigma range defaults to the schedule's). A ``custom`` grid is exactly one of the lists
    ``custom_timesteps`` or ``custom_sigmas`` (then ``steps`` is its length).
    """
    kind = GridKind(kind)
    T = schedule.num_timesteps
    if kind is GridKind.CUSTOM:
        if (custom_timesteps is None) == (custom_sigmas is None):
            raise ValueError("grid=custom needs exactly one of custom_timesteps, custom_sigmas")
        if custom_timesteps is not None:
            return Grid.from_timesteps(schedule, custom_timestep_grid(T, custom_timesteps))
        return Grid.from_sigmas(schedule, _in_range(schedule, custom_sigma_grid(custom_sigmas)))
    n = T if steps is None else steps
    if kind in (GridKind.KARRAS, GridKind.LOGSNR):
        smin, smax = sigma_range(schedule, sigma_min, sigma_max)
        sigmas = karras(smin, smax, n, rho) if kind is GridKind.KARRAS else logsnr(smin, smax, n)
        return Grid.from_sigmas(schedule, sigmas)
    pick = {GridKind.LEADING: leading, GridKind.TRAILING: trailing}.get(kind, linspace)
    return Grid.from_timesteps(schedule, pick(T, n))


def _in_range(schedule: NoiseSchedule, sigmas: list[float]) -> list[float]:
    """``sigmas`` unchanged if its nonzero values lie in the schedule's [sigma(0), sigma(T-1)]
    (up to rounding): the network was trained there and nowhere else."""
    lo, hi = float(schedule.sigmas[0]), float(schedule.sigmas[-1])
    if sigmas[0] > hi * (1 + 1e-12) or sigmas[-2] < lo * (1 - 1e-12):
        raise ValueError(f"custom_sigmas must lie in the schedule's range [{lo:g}, {hi:g}], "
                         f"got {sigmas[:-1]}")
    return sigmas
