"""Shared pieces of the samplers of Karras et al. (2022), which integrate in the
variance-exploding scale.

They move xbar = x_t / sqrt(abar_t), whose noise level is sigma = sqrt((1 - abar)/abar), so that
the probability-flow ODE reads dxbar/dsigma = (xbar - D(xbar; sigma)) / sigma (Karras et al. 2022,
eq. 1 with s(t) = 1, sigma(t) = t, and eq. 3), with D the wrapped network
(:meth:`Denoiser.denoise`). Any grid works; by default they step on the Karras grid (eq. 5).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from diffcli.diffusion.grids import GridKind
from diffcli.diffusion.samplers.base import Sampler


def to_xbar(noise: Tensor, sigma_max: float) -> Tensor:
    """x_T ~ N(0, I) in the VP scale -> xbar = x_T / sqrt(abar_T) = x_T sqrt(1 + sigma_max^2).
    (B, ...)"""
    return noise * math.sqrt(1 + sigma_max**2)


def to_vp(xbar: Tensor, sigma: float) -> Tensor:
    """xbar -> x_t = xbar sqrt(abar) = xbar / sqrt(1 + sigma^2), the state the network sees
    (for callbacks). (B, ...)"""
    return xbar / math.sqrt(1 + sigma**2)


@dataclass(frozen=True)
class KarrasSampler(Sampler):
    """Base of the samplers in the xbar scale: by default ``steps`` = 18 points of the Karras
    grid (eq. 5, rho = 7) from sigma_max = 80 (EDM's choice; None: the schedule's largest
    sigma) down to the schedule's smallest sigma, then 0. Starting below sigma_T ignores the
    data mean's share of x_T, an error of about |mean| / sigma_max."""

    steps: int | None = 18
    grid: GridKind = GridKind.KARRAS
    sigma_max: float | None = 80.0


MAX_SIGMA_RATIO = 10.0  # Heun's correction only on steps that shrink sigma at most this much


def check_max_ratio(value: object) -> None:
    """``max_ratio`` must be a number > 1, or None."""
    ok = value is None or (isinstance(value, int | float) and not isinstance(value, bool)
                           and value > 1)
    if not ok:
        raise ValueError(f"max_ratio must be a number > 1 (or null), got {value!r}")


def corrects(sigma: float, nxt: float, max_ratio: float | None) -> bool:
    """Whether Heun's step from ``sigma`` to ``nxt`` gets its trapezoidal correction: never on
    the step to sigma = 0 (Karras et al. 2022, Algorithm 2), nor on one that shrinks sigma more
    than ``max_ratio``-fold (None: no limit)."""
    return nxt > 0 and (max_ratio is None or sigma <= max_ratio * nxt)


def heun_step(denoise: Callable[[Tensor, float], Tensor], x: Tensor, sigma: float, nxt: float,
              max_ratio: float | None) -> tuple[Tensor, Tensor]:
    """One step of Heun's method on dxbar/dsigma = (xbar - D(xbar; sigma)) / sigma (Karras et al.
    2022, Algorithm 2, lines 7-10): the Euler step to ``nxt``, then the average of the slopes at
    both ends where :func:`corrects` allows. A long step into a small sigma gets no correction:
    there the slope at the end, (xbar' - D(xbar'; nxt)) / nxt, is stiff (a point between modes
    has a slope of order its distance to the nearest mode / nxt) and the trapezoid throws
    samples far off; the Euler step is stable. ``denoise(x, sigma)`` -> D; x (B, ...).
    Returns (xbar at nxt, D at sigma)."""
    x0 = denoise(x, sigma)
    d = (x - x0) / sigma
    x_next = x + (nxt - sigma) * d
    if corrects(sigma, nxt, max_ratio):
        d2 = (x_next - denoise(x_next, nxt)) / nxt
        x_next = x + (nxt - sigma) * (d + d2) / 2
    return x_next, x0


def euler_steps_note(name: str, sigmas: Sequence[float], max_ratio: float | None) -> str | None:
    """One line naming the steps of ``sigmas`` that :func:`heun_step` takes as Euler steps
    (None when every step but the last is corrected)."""
    long = [(a, b) for a, b in zip(sigmas, sigmas[1:], strict=False)
            if b > 0 and not corrects(a, b, max_ratio)]
    if not long:
        return None
    worst = max(long, key=lambda p: p[0] / p[1])
    return (f"{name}: {len(long)} of the grid's {len(sigmas) - 1} steps shrink sigma more than "
            f"{max_ratio:g}-fold (the longest {worst[0]:.3g} -> {worst[1]:.3g}); they are Euler "
            f"steps, since Heun's correction diverges there (more steps or grid=trailing avoid it)")
