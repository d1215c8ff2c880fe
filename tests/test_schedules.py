"""Schedule values against the papers' formulas, computed independently in numpy."""

import math

import numpy as np
import pytest
import torch

from diffcli.diffusion.schedules import (
    NoiseSchedule,
    cosine_schedule,
    linear_schedule,
    make_schedule,
    sigmoid_schedule,
)


def test_linear_matches_ddpm():
    s = linear_schedule()
    assert s.num_timesteps == 1000 and s.betas.dtype == torch.float64
    assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)
    expected = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(s.alphas_cumprod.numpy(), expected, rtol=1e-12)
    # DDPM's choice keeps L_T tiny: alpha-bar_T ~ 4e-5 (Ho et al. 2020, Sec. 4).
    assert 3e-5 < s.alphas_cumprod[-1].item() < 5e-5


def test_cosine_matches_improved_ddpm_eq17():
    T, s = 1000, 0.008
    sched = cosine_schedule(T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    abar = np.array([f(t) / f(0) for t in range(1, T + 1)])
    betas = np.minimum(1 - abar / np.concatenate([[1.0], abar[:-1]]), 0.999)
    np.testing.assert_allclose(sched.betas.numpy(), betas, rtol=1e-10)
    assert sched.betas.max().item() == pytest.approx(0.999)
    # Away from the clipped last step alpha-bar follows f(t)/f(0) exactly.
    np.testing.assert_allclose(sched.alphas_cumprod[:-1].numpy(), abar[:-1], rtol=1e-10)


def test_sigmoid_is_a_valid_schedule():
    sched = sigmoid_schedule(1000)
    ab = sched.alphas_cumprod
    assert bool((ab[1:] < ab[:-1]).all()) and 0.99 < ab[0].item() < 1 and ab[-1].item() < 1e-3


def test_posterior_variance_and_snr():
    sched = linear_schedule()
    b, ab = sched.betas.numpy(), sched.alphas_cumprod.numpy()
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    np.testing.assert_allclose(sched.posterior_variance.numpy(), (1 - ab_prev) / (1 - ab) * b)
    np.testing.assert_allclose(sched.log_snr.numpy(), np.log(ab / (1 - ab)), rtol=1e-10)
    assert sched.posterior_variance[0].item() == 0.0


def test_make_schedule_and_validation():
    assert make_schedule("cosine", 100).num_timesteps == 100
    with pytest.raises(ValueError, match="unknown schedule"):
        make_schedule("nope")
    with pytest.raises(ValueError):
        NoiseSchedule(betas=torch.tensor([0.1, 1.5]))
