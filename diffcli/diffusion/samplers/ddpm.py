"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on any subsequence of timesteps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor

from diffcli.diffusion.grids import Grid, GridKind
from diffcli.diffusion.process import Prediction, posterior_coefficients
from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    Sampler,
    SamplerStep,
    StepCallback,
    _member,
    check,
    learned_variance,
    randn_like,
)
from diffcli.diffusion.schedules import NoiseSchedule


class Variance(str, Enum):
    """The fixed variances: sigma_t^2 = beta_t (upper bound) or beta-tilde_t (lower bound)
    (Ho et al. 2020, Sec. 3.2)."""

    BETA = "beta"
    BETA_TILDE = "beta_tilde"


class VarianceChoice(str, Enum):
    """The values of ``DDPM.variance``: a fixed :class:`Variance`; ``learned``, the model's
    (Nichol & Dhariwal 2021, eq. 15; needs a model whose predictions carry ``var_frac``); or
    ``auto``: learned when the model's predictions carry ``var_frac``, else beta_tilde."""

    AUTO = "auto"
    LEARNED = "learned"
    BETA = "beta"
    BETA_TILDE = "beta_tilde"


@dataclass(frozen=True)
class DDPM(Sampler):
    """x_{t-1} = mu-tilde(x_t, x0_hat) + sigma_t z (Ho et al. 2020, eqs. 6-7 and Algorithm 2).

    With ``steps`` < T the chain is respaced (Nichol & Dhariwal 2021, Sec. 4): between visited
    steps s < t, beta = 1 - abar_t / abar_s. No noise is added at the last step. The chain is
    the trained one: its grid must lie on training timesteps (a timestep grid, or
    ``custom_timesteps`` of integers).

    ``variance`` (:class:`VarianceChoice`): sigma_t^2 = beta, beta-tilde (the respaced step's
    posterior variance), or ``learned``: sigma_t^2 = exp(v log beta + (1 - v) log beta-tilde)
    per element (Nichol & Dhariwal 2021, eq. 15) with v the model's ``var_frac`` and the
    respaced step's beta and beta-tilde (:func:`~diffcli.diffusion.samplers.base.step_betas`),
    as Improved DDPM samples a respaced chain. ``auto`` (the default) is ``learned`` for a
    model with learned variances and ``beta_tilde`` otherwise, so fixed-variance models sample
    as before.
    """

    variance: VarianceChoice = VarianceChoice.AUTO

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "variance", _member(VarianceChoice, self.variance,
                                                     "variance"))
        check(self.grid not in (GridKind.KARRAS, GridKind.LOGSNR),
              f"grid={self.grid.value} is off the training timesteps, which DDPM's ancestral "
              "chain needs: use sampler.grid=leading|trailing|linspace|custom (or sampler=ddim "
              "sampler.eta=1)")
        ts = self.custom_timesteps or ()
        check(all(float(t).is_integer() for t in ts),
              f"custom_timesteps must be integers for DDPM (training timesteps), got {list(ts)}")

    def make_grid(self, schedule: NoiseSchedule) -> Grid:
        """The grid of :meth:`Sampler.make_grid`, refused unless on training timesteps."""
        grid = super().make_grid(schedule)
        check(grid.on_lattice, "custom_sigmas must be training timesteps' sigmas for DDPM: use "
                               "custom_timesteps (or sampler=ddim eta=1)")
        return grid

    def resolved(self, pred: Prediction) -> VarianceChoice:
        """The variance used with the prediction ``pred``: ``auto`` resolved (learned when
        ``pred.var_frac`` is given, else beta_tilde); ``learned`` without var_frac is refused
        (one-line ValueError)."""
        learned = pred.var_frac is not None
        if self.variance is VarianceChoice.AUTO:
            return VarianceChoice.LEARNED if learned else VarianceChoice.BETA_TILDE
        check(learned or self.variance is not VarianceChoice.LEARNED,
              "variance=learned needs a model trained with model.learn_sigma=true")
        return self.variance

    def noise_std(self, grid: Grid, i: int, pred: Prediction) -> float | Tensor:
        """sigma_t of step i (not the last) on ``grid``: sqrt(beta), sqrt(beta-tilde) (floats)
        or the learned sqrt(exp(eq. 15)) (B, ...) of ``pred.var_frac``."""
        variance = self.resolved(pred)
        if variance is VarianceChoice.LEARNED:
            return learned_variance(grid, i, pred.var_frac).sqrt()
        abar_t, abar_prev = grid.alphas_cumprod[i], grid.alphas_cumprod[i + 1]
        if variance is VarianceChoice.BETA:
            return math.sqrt(1 - abar_t / abar_prev)
        _, _, var = posterior_coefficients(torch.tensor(abar_t, dtype=torch.float64),
                                           torch.tensor(abar_prev, dtype=torch.float64))
        return math.sqrt(float(var))

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        grid = self.make_grid(model.schedule)
        x, n = noise, len(grid)
        for i in range(n):
            abar_t, abar_prev = grid.alphas_cumprod[i], grid.alphas_cumprod[i + 1]
            pred = model.predict(x, grid.sigmas[i])
            self.resolved(pred)  # refuses variance=learned (also on a one-step chain)
            x0 = self.denoised(pred.x0)
            if callback is not None:
                callback(SamplerStep(i, n, grid.timesteps[i], x, x0))
            c0, ct, _ = posterior_coefficients(torch.tensor(abar_t, dtype=torch.float64),
                                               torch.tensor(abar_prev, dtype=torch.float64))
            mean = float(c0) * x0 + float(ct) * x
            if i + 1 == n:
                return mean
            x = mean + self.noise_std(grid, i, pred) * randn_like(x, generator)
        return x
