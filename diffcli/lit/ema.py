"""Exponential moving averages of the weights: how much of the old average each step keeps.

Two profiles:

* constant decay ``beta`` (with an optional warm-up), the DDPM / ADM habit: it averages over
  about ``1 / (1 - beta)`` steps whatever the run's length, so one value is too long for a short
  run and too short for a long one;
* the power-function EMA of Karras et al. 2024 (EDM2, Sec. 3.1, Eq. 2-3):
  ``beta_t = (1 - 1/t) ** (gamma + 1)`` after the t-th update (t = 1, 2, ...), which averages
  the weights with density ``~ tau ** gamma`` over the whole run so far. Its width relative to
  the run's length, ``sigma_rel``, stays fixed, so it suits runs whose length is set by a
  wall-clock budget (``trainer.max_time``) and not known in steps in advance.
"""

from __future__ import annotations

import functools
import math


def sigma_rel_of_gamma(gamma: float) -> float:
    """EDM2 Eq. 3: the relative standard deviation of the power-function EMA's profile,
    ``sqrt(gamma + 1) / ((gamma + 2) * sqrt(gamma + 3))``; 0.2887 at gamma = 0, falling
    for gamma >= 0."""
    return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))


@functools.cache  # solved once per width, not at every EMA update
def gamma_of_sigma_rel(sigma_rel: float) -> float:
    """The exponent gamma >= 0 whose profile has relative width ``sigma_rel`` in
    (0, 0.2886] (EDM2 Eq. 3 inverted by bisection; e.g. 0.05 -> 16.97, 0.10 -> 6.94)."""
    if not 0.0 < sigma_rel <= sigma_rel_of_gamma(0.0):
        raise ValueError(f"ema_sigma_rel={sigma_rel} is out of range: use 0 < sigma_rel <= "
                         f"{math.floor(sigma_rel_of_gamma(0.0) * 1e4) / 1e4} (e.g. 0.05 or 0.1)")
    lo, hi = 0.0, 1.0
    while sigma_rel_of_gamma(hi) > sigma_rel:  # sigma_rel_of_gamma falls for gamma >= 0
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sigma_rel_of_gamma(mid) > sigma_rel else (lo, mid)
    return 0.5 * (lo + hi)


def power_ema_decay(t: int, gamma: float) -> float:
    """EDM2 Eq. 2: ``(1 - 1/t) ** (gamma + 1)``, the decay of the t-th update (t >= 1; the
    first update copies the weights)."""
    if t < 1:
        raise ValueError(f"the power-function EMA counts updates from t = 1, got {t}")
    return (1.0 - 1.0 / t) ** (gamma + 1.0)


def constant_ema_decay(step: int, decay: float, warmup: bool = True) -> float:
    """EMA decay after ``step`` optimizer steps: ``min(decay, (1 + n) / (10 + n))`` with warm-up.

    The warm-up (as in TensorFlow's ExponentialMovingAverage with ``num_updates``) keeps the
    first EMA weights from being dominated by the random initialisation.
    """
    return min(decay, (1 + step) / (10 + step)) if warmup else decay


def ema_decay_for(step: int, decay: float | None, warmup: bool = True,
                  sigma_rel: float | None = None) -> float:
    """The decay of the update after ``step`` optimizer steps (step >= 0): the power-function
    profile when ``sigma_rel`` is set, else the constant ``decay``."""
    if sigma_rel is not None:
        return power_ema_decay(step + 1, gamma_of_sigma_rel(sigma_rel))
    if decay is None:
        raise ValueError("an EMA needs ema_decay or ema_sigma_rel")
    return constant_ema_decay(step, decay, warmup)


def check_ema(decay: float | None, sigma_rel: float | None = None) -> None:
    """Raise ValueError unless ``decay`` is None or in [0, 1) (1 or more diverges) and
    ``sigma_rel`` is None or a valid power-function width."""
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ValueError(f"ema_decay={decay} is out of range: use 0 <= ema_decay < 1 "
                         "(e.g. 0.999), or null to keep no EMA")
    if sigma_rel is not None:
        gamma_of_sigma_rel(sigma_rel)
