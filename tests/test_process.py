"""The forward process q(x_t | x_0), its posterior and the eps / x0 / v parameterizations against
exact references."""

import pytest
import torch

from diffcli.diffusion.process import (
    Parameterization,
    extract,
    q_mean_variance,
    q_posterior,
    q_sample,
    target_for,
    to_x0_eps,
)
from diffcli.diffusion.schedules import cosine_schedule, linear_schedule

KINDS = list(Parameterization)


def test_q_sample_moments():
    sched = linear_schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1), 0.7, dtype=torch.float64)
    t = torch.full((200_000,), 300)
    xt = q_sample(sched, x0, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
    mean, var = q_mean_variance(sched, x0[:1], t[:1])
    assert xt.mean().item() == pytest.approx(mean.item(), abs=5e-3)
    assert xt.var().item() == pytest.approx(var.item(), rel=1e-2)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1}|x_t,x_0) from the product of q(x_{t-1}|x_0) and q(x_t|x_{t-1}) (precision form)."""
    sched = cosine_schedule()
    t = torch.tensor([1, 10, 500, 999])
    x0 = torch.tensor([[0.3], [-1.0], [0.5], [2.0]], dtype=torch.float64)
    xt = torch.tensor([[0.1], [0.4], [-0.7], [1.3]], dtype=torch.float64)
    mean, var = q_posterior(sched, x0, xt, t)
    ab_prev = sched.alphas_cumprod[t - 1][:, None]
    alpha, beta = sched.alphas[t][:, None], sched.betas[t][:, None]
    prec = 1 / (1 - ab_prev) + alpha / beta
    expected_mean = (ab_prev.sqrt() * x0 / (1 - ab_prev) + alpha.sqrt() * xt / beta) / prec
    torch.testing.assert_close(var, 1 / prec)
    torch.testing.assert_close(mean, expected_mean)


@pytest.mark.parametrize("kind", KINDS)
def test_parameterizations_round_trip(kind):
    sched = linear_schedule()
    g = torch.Generator().manual_seed(1)
    x0, eps = (torch.randn(8, 3, generator=g, dtype=torch.float64) for _ in range(2))
    t = torch.randint(0, 1000, (8,), generator=g)
    xt = q_sample(sched, x0, t, eps)
    abar = extract(sched.alphas_cumprod, t, xt)
    pred = to_x0_eps(target_for(kind, x0, eps, abar), kind, xt, abar)
    torch.testing.assert_close(pred.x0, x0)
    torch.testing.assert_close(pred.eps, eps)
