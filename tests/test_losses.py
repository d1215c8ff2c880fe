"""The training losses against exact references: the ideal network attains the minimum, and
Min-SNR-gamma weights agree across parameterizations."""

import pytest
import torch

from diffcli.diffusion.gaussian import GaussianData, IdealNetwork
from diffcli.diffusion.losses import diffusion_loss, min_snr_weight
from diffcli.diffusion.process import Parameterization, extract, q_sample, target_for
from diffcli.diffusion.schedules import linear_schedule

KINDS = list(Parameterization)


@pytest.mark.parametrize("kind", KINDS)
def test_ideal_network_attains_the_minimum_loss(kind):
    """Gaussian data: the eps-loss minimum at fixed t is E Var(eps|x_t) = a^2s^2/(a^2s^2+b^2)."""
    sched = linear_schedule()
    data = GaussianData(torch.tensor([0.5, -1.0], dtype=torch.float64),
                        torch.tensor([0.4, 1.0], dtype=torch.float64))
    g = torch.Generator().manual_seed(2)
    n, t_val = 200_000, 400
    x0 = data.sample(n, g)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.full((n,), t_val)
    ideal = IdealNetwork(data, sched, Parameterization.EPS)
    loss = diffusion_loss(ideal, sched, x0, t, noise, "eps").item()
    a2 = sched.alphas_cumprod[t_val].item()
    expected = (a2 * data.std**2 / (a2 * data.std**2 + 1 - a2)).mean().item()
    assert loss == pytest.approx(expected, rel=1e-2)
    net = IdealNetwork(data, sched, kind)
    best = diffusion_loss(net, sched, x0, t, noise, kind).item()
    worse = diffusion_loss(lambda x, tt: net(x, tt) + 0.05, sched, x0, t, noise, kind).item()
    assert worse > best


def test_min_snr_weights_agree_across_parameterizations():
    """Min-SNR-gamma puts weight min(SNR, gamma) on ||x0 - x0_hat||^2 whatever the target."""
    sched = linear_schedule()
    g = torch.Generator().manual_seed(3)
    x0, eps, x0_hat = (torch.randn(16, 4, generator=g, dtype=torch.float64) for _ in range(3))
    t = torch.linspace(0, 999, 16).long()
    xt = q_sample(sched, x0, t, eps)
    abar = extract(sched.alphas_cumprod, t, xt)
    snr = sched.snr[t]
    expected = torch.clamp(snr, max=5.0) * (x0 - x0_hat).pow(2).mean(1)
    for kind in KINDS:
        eps_hat = (xt - abar.sqrt() * x0_hat) / (1 - abar).sqrt()
        err = (target_for(kind, x0_hat, eps_hat, abar) - target_for(kind, x0, eps, abar))
        weighted = min_snr_weight(snr, 5.0, kind) * err.pow(2).mean(1)
        torch.testing.assert_close(weighted, expected)
