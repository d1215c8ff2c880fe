"""Restart sampling (Xu et al. 2023, "Restart Sampling for Improving Generative Processes"):
Heun's ODE pass on any grid (default: the Karras sigma grid), plus K restart cycles that add
forward noise to jump back up a restart interval and solve the ODE down it again."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor

from diffcli.diffusion import grids
from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    SamplerStep,
    StepCallback,
    check,
    randn_like,
)
from diffcli.diffusion.samplers.karras import (
    MAX_SIGMA_RATIO,
    KarrasSampler,
    check_max_ratio,
    corrects,
    euler_steps_note,
    heun_step,
    to_vp,
    to_xbar,
)
from diffcli.diffusion.schedules import NoiseSchedule


def _count(value: object, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _positive(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


@dataclass(frozen=True)
class Restart(KarrasSampler):
    """Restart sampling (Xu et al. 2023) with one restart interval [t_min, t_max].

    Everything happens in the variance-exploding scale of the Karras samplers: the state is
    xbar = x_t / sqrt(abar_t) at noise level sigma = sqrt((1 - abar)/abar) = t (EDM's sigma(t) = t,
    Karras et al. 2022), where the probability-flow ODE is dxbar/dsigma = (xbar - D(xbar; sigma))
    / sigma and the forward process from sigma to sigma' > sigma adds N(0, sigma'^2 - sigma^2)
    noise to xbar. The network's VP state x_T = ``noise`` enters as xbar = x_T sqrt(1 + sigma_0^2).

    1. Main pass: Heun's method (Karras et al. 2022, Algorithm 2 without churn) on the sampler's
       grid sigma_0 > ... > sigma_{N-1} > sigma_N = 0:
       d = (xbar - D(xbar; sigma_i)) / sigma_i, xbar' = xbar + (sigma_{i+1} - sigma_i) d,
       d' = (xbar' - D(xbar'; sigma_{i+1})) / sigma_{i+1},
       xbar <- xbar + (sigma_{i+1} - sigma_i) (d + d') / 2 (a plain Euler step to sigma = 0).
    2. When it reaches t_min, K = ``restart_k`` times (Xu et al. 2023, the Restart algorithm):
       restart forward: xbar <- xbar + sqrt(t_max^2 - t_min^2) z, z ~ N(0, I) (drawn with
       :func:`randn_like`, so per-sample generators keep each sample seed-invariant);
       restart backward: the same Heun ODE from t_max down to t_min in ``restart_steps`` steps
       on the Karras grid (eq. 5, this sampler's ``rho``) between them.
    3. The main pass continues from t_min.

    ``t_min`` is snapped to the main grid: the restart interval ends at the grid level sigma_j
    nearest t_min among those in (0, t_max), so the cycles start and end on the main pass's own
    state and need no extra main-pass evaluation (with ``restart_k`` = 0 this is exactly
    :class:`~diffcli.diffusion.samplers.heun.Heun`); the noise is sqrt(t_max^2 - sigma_j^2) z. A
    grid with no level in (0, t_max) gets no restarts.

    Every Heun step here, main pass and restarts, is an Euler step where it shrinks sigma more
    than ``max_ratio``-fold (:func:`~diffcli.diffusion.samplers.karras.heun_step`, as in
    :class:`~diffcli.diffusion.samplers.heun.Heun`; :meth:`notice` names them).

    Network evaluations (:meth:`nfe`): 2N - 1 for the main pass and 2 ``restart_steps`` per cycle
    (every restart step ends at sigma_j > 0, so each is a full Heun step):
    NFE = 2N - 1 + 2 K ``restart_steps`` = 2 (N + K ``restart_steps``) - 1. The defaults give
    2 * 18 - 1 + 2 * 2 * 3 = 47.

    Defaults: ``steps`` = 18, ``restart_k`` = 2, ``restart_steps`` = 3, [t_min, t_max] =
    [0.06, 0.30]: one short interval near the data, restarted a few times with few steps, the
    shape of setting Xu et al. recommend at small NFE (larger budgets: more K, more intervals).
    These values are the issue's; they were not checked against the paper's appendix tables,
    which give the per-dataset settings - consult them before tuning for a given model.

    ``callback`` is called once per main-pass step (N calls, matching :meth:`timesteps`); the
    restart steps report nothing. A learned variance (``Prediction.var_frac``) is ignored.
    """

    restart_k: int = 2
    restart_steps: int = 3
    t_min: float = 0.06
    t_max: float = 0.30
    max_ratio: float | None = MAX_SIGMA_RATIO

    def __post_init__(self) -> None:
        super().__post_init__()
        check_max_ratio(self.max_ratio)
        check(_count(self.restart_k, 0),
              f"restart_k must be an integer >= 0, got {self.restart_k!r}")
        check(_count(self.restart_steps, 1),
              f"restart_steps must be an integer >= 1, got {self.restart_steps!r}")
        for name in ("t_min", "t_max"):
            value = getattr(self, name)
            check(_positive(value), f"{name} must be > 0, got {value!r}")
        check(self.t_min < self.t_max,
              f"t_min ({self.t_min}) must be below t_max ({self.t_max})")

    def restart_index(self, sigmas: tuple[float, ...] | list[float]) -> int | None:
        """j: the main-grid level sigma_j in (0, t_max) nearest t_min, where the restart cycles
        run (before main step j); None when no level lies there or ``restart_k`` is 0."""
        inside = [j for j, s in enumerate(sigmas) if 0 < s < self.t_max]
        if self.restart_k == 0 or not inside:
            return None
        return min(inside, key=lambda j: abs(sigmas[j] - self.t_min))

    def restart_sigmas(self, schedule: NoiseSchedule) -> list[float]:
        """The restart backward grid: ``restart_steps`` + 1 Karras levels from t_max down to
        sigma_j (empty when there are no restarts)."""
        sigmas = self.make_grid(schedule).sigmas
        j = self.restart_index(sigmas)
        if j is None:
            return []
        top = float(schedule.sigmas[-1])
        check(self.t_max <= top, f"t_max ({self.t_max}) must not exceed the schedule's largest "
                                 f"sigma ({top:g})")
        inner = grids.karras(sigmas[j], self.t_max, self.restart_steps + 1, self.rho)[1:-2]
        return [self.t_max, *inner, sigmas[j]]  # the ends exact, not re-rounded by eq. 5

    def nfe(self, schedule: NoiseSchedule) -> int:
        """Network evaluations per sample: 2N - 1 + 2 K ``restart_steps`` (no restarts: 2N - 1),
        less one per main-pass step that ``max_ratio`` makes an Euler step."""
        sigmas = self.sigmas(schedule)
        main = len(sigmas) - 1 + sum(corrects(a, b, self.max_ratio) for a, b in pairwise(sigmas))
        restart = self.restart_sigmas(schedule)
        cycles = self.restart_k if restart else 0
        return main + cycles * sum(1 + corrects(a, b, self.max_ratio)
                                   for a, b in pairwise(restart))

    def notice(self, schedule: NoiseSchedule) -> str | None:
        return euler_steps_note("restart", self.sigmas(schedule), self.max_ratio)

    def _heun(self, model: Denoiser, x: Tensor, sigma: float, nxt: float) -> tuple[Tensor, Tensor]:
        """One Heun step from sigma to nxt (:func:`heun_step`: Euler when nxt = 0 or sigma
        shrinks more than ``max_ratio``-fold): (xbar at nxt, D at sigma)."""
        return heun_step(lambda z, s: self.denoised(model.denoise(z, s)), x, sigma, nxt,
                         self.max_ratio)

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        grid = self.make_grid(model.schedule)
        sigmas, n = grid.sigmas, len(grid)
        j = self.restart_index(sigmas)
        restart = self.restart_sigmas(model.schedule)
        x = to_xbar(noise, sigmas[0])
        for i in range(n):
            if i == j:
                jump = math.sqrt(self.t_max**2 - sigmas[j] ** 2)
                for _ in range(self.restart_k):
                    x = x + jump * randn_like(x, generator)
                    for sigma, nxt in pairwise(restart):
                        x, _ = self._heun(model, x, sigma, nxt)
            x_next, x0 = self._heun(model, x, sigmas[i], sigmas[i + 1])
            if callback is not None:
                callback(SamplerStep(i, n, grid.timesteps[i], to_vp(x, sigmas[i]), x0))
            x = x_next
        return x
