"""Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself",
Sec. 3, Eq. 1 with D_0 the guide): the main model's denoiser pushed away from a weaker model's
of the same task, conditioning and noise levels,

    D_w(x; sigma, c) = D_guide(x; sigma, c) + w (D_main(x; sigma, c) - D_guide(x; sigma, c)),

w = 1 the main model, w > 1 guided. The guide is an earlier snapshot or a smaller model trained
on the same data; unlike classifier-free guidance it keeps the conditioning on both sides, so it
sharpens without the loss of variety of CFG's unconditional branch. The combination is applied
to the x0 and eps estimates alike (both affine in the network output at fixed (x_t, t), with
weights summing to one), so a guide equal to the main model gives the main model exactly, and
every sampler runs unchanged on it.

Shapes: x_t (B, ...), t (B,), abar broadcastable to x_t; labels (B,) or token ids (B, L).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.denoiser import Denoiser
from diffcli.diffusion.guidance import sigma_of
from diffcli.diffusion.process import Prediction

__all__ = ["Autoguidance"]


@dataclass(frozen=True, eq=False, kw_only=True)
class Autoguidance(Denoiser):
    """``main`` guided by ``guide`` with scale ``scale`` w >= 0 (module docstring), optionally
    only where ``interval`` [lo, hi] contains sigma_t (elsewhere w = 1: the main model,
    Kynkäänniemi et al. 2024). Build it with :meth:`around`. The variance (a learned
    ``var_frac``) is the main model's. Network evaluations: both models once per step (the main
    model alone at w = 1 or outside the interval)."""

    main: Denoiser
    guide: Denoiser
    scale: float = 1.0
    interval: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        w = self.scale
        if not isinstance(w, int | float) or isinstance(w, bool) or not w >= 0:
            raise ValueError(f"autoguidance scale must be a number >= 0, got {w!r}")
        if self.interval is not None:
            lo, hi = (float(v) for v in self.interval)
            if not 0 <= lo <= hi:
                raise ValueError(f"interval must be sigmas 0 <= lo <= hi, got {self.interval!r}")
            object.__setattr__(self, "interval", (lo, hi))

    @classmethod
    def around(cls, main: Denoiser, guide: Denoiser, scale: float,
               interval: tuple[float, float] | None = None) -> Autoguidance:
        """``main`` (its net, schedule, prediction and objective are copied) guided by
        ``guide``."""
        return cls(net=main.net, schedule=main.schedule, prediction=main.prediction,
                   learned_variance=main.learned_variance, objective=main.objective,
                   main=main, guide=guide, scale=scale, interval=interval)

    @property
    def takes_labels(self) -> bool:
        return self.main.takes_labels

    def with_labels(self, labels: Tensor | None) -> Autoguidance:
        """Both models conditioned on ``labels`` (the guide keeps the conditioning)."""
        guide = self.guide.with_labels(labels) if self.guide.takes_labels else self.guide
        return dataclasses.replace(self, main=self.main.with_labels(labels), guide=guide)

    def evaluate(self, x_t: Tensor, t: Tensor, abar: Tensor) -> Prediction:
        """(x0, eps[, var_frac]) of D_w for x_t (B, ...) at t (B,). Each (B, ...)."""
        main = self.main.evaluate(x_t, t, abar)
        if self.scale == 1:
            return main
        if self.interval is None:
            rows = torch.ones(t.shape[0], dtype=torch.bool, device=t.device)
        else:
            sigma = sigma_of(self, t)
            rows = (sigma >= self.interval[0]) & (sigma <= self.interval[1])
        if not bool(rows.any()):
            return main
        bad = self.guide.evaluate(x_t, t, abar)
        rows = rows.reshape(-1, *([1] * (x_t.ndim - 1)))
        x0 = torch.where(rows, bad.x0 + self.scale * (main.x0 - bad.x0), main.x0)
        eps = torch.where(rows, bad.eps + self.scale * (main.eps - bad.eps), main.eps)
        return Prediction(x0, eps, main.var_frac)
