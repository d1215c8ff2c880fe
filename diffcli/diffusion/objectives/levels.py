"""Where each objective trains: its law of noise levels, over ln sigma.

Every objective draws the noise level of a training example from a law p(sigma) of its own: the
DDPM chain a timestep uniform in 0..T-1 (Ho et al. 2020, Algorithm 1), EDM ln sigma ~
N(P_mean, P_std^2) (Karras et al. 2022, Table 1), flow a logit-normal or uniform t, shifted
(Esser et al. 2024, Sec. 3.1 and 5.3.2), with sigma = s(t) / alpha(t). In the one coordinate
ln sigma (log-SNR = -2 ln sigma) they compare directly, as Kingma & Gao (2023, Fig. 2) compare
objectives by their density over log-SNR.

The laws here are the continuous ones: flow's training keeps t inside [1e-3, 1 - 1e-3], which
moves the mass beyond those ends (about 1e-3 at each end for uniform t, none to speak of for
logit-normal t) onto them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffcli.diffusion.objectives.continuous import F64, Continuous
from diffcli.diffusion.objectives.edm import EDM
from diffcli.diffusion.objectives.flow import Flow
from diffcli.diffusion.schedules import NoiseSchedule


def _unknown(objective: object) -> TypeError:
    return TypeError(f"no training law of noise levels for {type(objective).__name__}")


def log_sigma_cdf(objective: Continuous, log_sigma: Tensor) -> Tensor:
    """P(ln sigma <= log_sigma) under the objective's training law: EDM Phi((x - P_mean) /
    P_std); flow F_t(t(sigma / shift)) with F_t the logit-normal (Phi((logit t - m) / s)) or
    uniform CDF. log_sigma (B,) -> (B,) float64"""
    x = log_sigma.to(F64)
    if isinstance(objective, EDM):
        return torch.special.ndtr((x - objective.p_mean) / objective.p_std)
    if isinstance(objective, Flow):
        t = objective.t_of_sigma(x.exp() / objective.shift_value).clamp(0, 1)
        if objective.t_sampling == "uniform":
            return t
        z = (torch.log(t) - torch.log1p(-t) - objective.logit_mean) / objective.logit_std
        return torch.special.ndtr(z)
    raise _unknown(objective)


def log_sigma_density(objective: Continuous, log_sigma: Tensor) -> Tensor:
    """The density p(ln sigma) of the training law: d/dx of :func:`log_sigma_cdf` (by autograd,
    so any interpolant's t(sigma) is differentiated exactly); 0 where the law has no mass (the
    vp path's t(sigma) passes 1 at its largest sigma). (B,) -> (B,) float64"""
    x = log_sigma.detach().to(F64).requires_grad_(True)
    with torch.enable_grad():
        (density,) = torch.autograd.grad(log_sigma_cdf(objective, x).sum(), x)
    return density.nan_to_num(0.0)


def sigma_quantile(objective: Continuous, q: Tensor) -> Tensor:
    """The noise level below which a fraction q of training examples fall: EDM
    exp(P_mean + P_std Phi^-1(q)); flow shift sigma(t_q), t_q = sigmoid(m + s Phi^-1(q))
    (logit-normal) or q (uniform). q (B,) in (0, 1) -> (B,) float64"""
    q = q.to(F64)
    if isinstance(objective, EDM):
        return (objective.p_mean + objective.p_std * torch.special.ndtri(q)).exp()
    if isinstance(objective, Flow):
        t = q if objective.t_sampling == "uniform" else torch.sigmoid(
            objective.logit_mean + objective.logit_std * torch.special.ndtri(q))
        return objective.shift_value * objective.sigma_of_t(t)
    raise _unknown(objective)


def schedule_log_sigma_density(schedule: NoiseSchedule) -> tuple[Tensor, Tensor]:
    """The DDPM chain's uniform training timesteps as a density over ln sigma: timestep k's mass
    1/T spread evenly over the cell between the midpoints to its neighbours' ln sigma_k (the end
    cells mirrored about ln sigma_0 and ln sigma_{T-1}). Returns (edges (T+1,), density (T,)),
    with sum(density * diff(edges)) = 1."""
    log_sigma = schedule.log_sigmas
    if log_sigma.numel() < 2:
        raise ValueError("a schedule of one timestep has no density over ln sigma")
    mid = (log_sigma[1:] + log_sigma[:-1]) / 2
    edges = torch.cat([(2 * log_sigma[0] - mid[0]).reshape(1), mid,
                       (2 * log_sigma[-1] - mid[-1]).reshape(1)])
    return edges, 1.0 / (log_sigma.numel() * edges.diff())
