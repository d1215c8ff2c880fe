"""Training objectives. The network is an argument; nothing here owns it."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from diffcli.diffusion.process import Parameterization, extract, q_sample, target_for
from diffcli.diffusion.schedules import NoiseSchedule

Network = Callable[[Tensor, Tensor], Tensor]


def min_snr_weight(snr: Tensor, gamma: float, kind: Parameterization | str) -> Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, eq. 7 and Sec. 3.4).

    The x0-space weight is min(SNR, gamma); expressed for the network's own target it becomes
    min(SNR, gamma)/SNR for eps, min(SNR, gamma) for x0 and min(SNR, gamma)/(SNR + 1) for v.
    """
    clipped = torch.clamp(snr, max=gamma)
    kind = Parameterization(kind)
    if kind is Parameterization.EPS:
        return clipped / snr
    if kind is Parameterization.X0:
        return clipped
    return clipped / (snr + 1)


def diffusion_loss(
    net: Network,
    schedule: NoiseSchedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    prediction: Parameterization | str = Parameterization.EPS,
    min_snr_gamma: float | None = None,
) -> Tensor:
    """L_simple (Ho et al. 2020, eq. 14) on the chosen target, optionally Min-SNR weighted.

    x0, noise: (B, ...); t: (B,) long. Returns a scalar: the batch mean of the per-sample
    mean squared error between ``net(x_t, t)`` and the target (eps, x0 or v).
    """
    x_t = q_sample(schedule, x0, t, noise)
    abar = extract(schedule.alphas_cumprod, t, x0)
    target = target_for(prediction, x0, noise, abar)
    per_sample = (net(x_t, t) - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    if min_snr_gamma is not None:
        snr = schedule.snr.to(t.device)[t].to(per_sample.dtype)
        per_sample = per_sample * min_snr_weight(snr, min_snr_gamma, prediction)
    return per_sample.mean()
