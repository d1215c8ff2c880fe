"""Autoguidance (Karras et al. 2024, Eq. 1) against exact references: a guide equal to the main
model is the main model exactly; with ideal Gaussian denoisers D_w is the closed-form
combination; the interval and the labels reach both models; every sampler runs on it."""

from __future__ import annotations

import pytest
import torch

from diffcli.diffusion.autoguidance import Autoguidance
from diffcli.diffusion.denoiser import Denoiser
from diffcli.diffusion.gaussian import (
    GaussianData,
    IdealConditionalNetwork,
    IdealNetwork,
    two_d_mixture,
)
from diffcli.diffusion.guidance import ClassifierFreeGuidance
from diffcli.diffusion.process import Parameterization, alpha_bar
from diffcli.diffusion.samplers import DDIM, DPMSolverPP2M, Heun
from diffcli.diffusion.schedules import linear_schedule

F64 = torch.float64
SCHED = linear_schedule()


def _gauss(std: float, kind: Parameterization = Parameterization.EPS) -> Denoiser:
    data = GaussianData(torch.zeros(2, dtype=F64), torch.full((2,), std, dtype=F64))
    return Denoiser(IdealNetwork(data, SCHED, kind), SCHED, kind)


def _states(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return 2 * torch.randn(n, 2, generator=gen, dtype=F64), torch.randint(0, 1000, (n,),
                                                                           generator=gen)


@pytest.mark.parametrize("kind", list(Parameterization))
def test_a_guide_equal_to_the_main_model_is_the_main_model(kind):
    main = _gauss(0.7, kind)
    x, t = _states()
    for w in (0.0, 2.5, 7.0):
        got, want = Autoguidance.around(main, main, w)(x, t), main(x, t)
        assert torch.equal(got.x0, want.x0) and torch.equal(got.eps, want.eps)


def test_ideal_gaussian_denoisers_combine_as_eq_1():
    """N(0, s^2 I) data: E[x0 | x_t] = sqrt(abar) s^2 / (abar s^2 + 1 - abar) x_t, so D_w is
    that with the coefficient w c_main + (1 - w) c_guide."""
    s_main, s_guide, w = 0.6, 1.3, 2.0
    x, t = _states()
    abar = alpha_bar(SCHED, t, x)

    def coef(s: float) -> torch.Tensor:
        return abar.sqrt() * s**2 / (abar * s**2 + 1 - abar)

    got = Autoguidance.around(_gauss(s_main), _gauss(s_guide), w)(x, t)
    want = (w * coef(s_main) + (1 - w) * coef(s_guide)) * x
    assert torch.allclose(got.x0, want, atol=1e-10)
    assert torch.allclose(got.eps, (x - abar.sqrt() * want) / (1 - abar).sqrt(), atol=1e-8)


def test_outside_the_interval_it_is_the_main_model():
    main, guide = _gauss(0.6), _gauss(1.3)
    x, t = _states()
    guided = Autoguidance.around(main, guide, 3.0, interval=(0.5, 2.0))
    sigma = ((1 - alpha_bar(SCHED, t, x)) / alpha_bar(SCHED, t, x)).sqrt().flatten()
    out, plain = guided(x, t), main(x, t)
    inside = (sigma >= 0.5) & (sigma <= 2.0)
    assert inside.any() and (~inside).any()
    assert torch.equal(out.x0[~inside], plain.x0[~inside])
    assert not torch.allclose(out.x0[inside], plain.x0[inside])


def test_labels_reach_both_models():
    """Class-conditional main and guide (conditional, w = 1 in CFG terms): autoguidance keeps
    the label on both sides; with the guide equal to the main model it is the conditional
    model."""
    data = two_d_mixture(radius=1.5, std=0.5, k=3)
    net = IdealConditionalNetwork(data, SCHED, Parameterization.EPS)
    cond = ClassifierFreeGuidance(net, SCHED, Parameterization.EPS, num_classes=3)
    x, t = _states()
    labels = torch.zeros(len(x), dtype=torch.long)
    guided = Autoguidance.around(cond, cond, 4.0).with_labels(labels)
    assert guided.takes_labels
    assert torch.equal(guided(x, t).x0, cond.with_labels(labels)(x, t).x0)
    assert not torch.equal(guided(x, t).x0, cond(x, t).x0)  # the null label's output differs


@pytest.mark.parametrize("sampler", [DDIM(steps=10), DPMSolverPP2M(steps=10), Heun(steps=5)])
def test_every_sampler_runs_on_it(sampler):
    """w = 1 gives the main model's samples bit for bit; w = 2 with a wider guide gives finite
    samples closer to zero (the main model's N(0, 0.6^2) pushed away from N(0, 1.3^2))."""
    main, guide = _gauss(0.6), _gauss(1.3)
    noise = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    plain = sampler.sample(main, noise.clone())
    same = sampler.sample(Autoguidance.around(main, guide, 1.0), noise.clone())
    assert torch.equal(plain, same)
    pushed = sampler.sample(Autoguidance.around(main, guide, 2.0), noise.clone())
    assert torch.isfinite(pushed).all() and pushed.std() < plain.std()
