"""Samplers against exact references: Gaussian data has a closed-form ideal denoiser, and the
samplers' output distribution is Gaussian with moments computable by an independent recursion."""

import math
from itertools import pairwise

import pytest
import torch

from diffcli.diffusion.gaussian import GaussianData, IdealNetwork
from diffcli.diffusion.process import Parameterization
from diffcli.diffusion.samplers import (
    DDIM,
    DDPM,
    Denoiser,
    DPMSolverPP2M,
    Euler,
    Heun,
    timestep_sequence,
)
from diffcli.diffusion.samplers.ddpm import Variance
from diffcli.diffusion.schedules import cosine_schedule, linear_schedule

F64 = torch.float64
DATA = GaussianData(torch.tensor([1.0, -0.5, 0.0], dtype=F64),
                    torch.tensor([0.5, 1.0, 1.5], dtype=F64))
KINDS = list(Parameterization)


def _denoiser(sched, kind, data=DATA):
    return Denoiser(IdealNetwork(data, sched, kind), sched, kind)


def ddim_reference(sched, ts, data):
    """Exact output mean/std of deterministic DDIM for Gaussian data, by a separate derivation:
    DDIM is Euler's method in xbar = x/sqrt(abar) against sigma = sqrt((1-abar)/abar)
    (Song et al. 2021, eq. 14), where eps_hat = sigma (xbar - mu)/(s^2 + sigma^2).
    The map from x_T ~ N(0, 1) is affine: xbar = A z + c. Returns (mean, std) per dimension."""
    ab = sched.alphas_cumprod
    mu, s2 = data.mean, data.std**2
    sig = [math.sqrt((1 - ab[t].item()) / ab[t].item()) for t in ts] + [0.0]
    A = torch.full_like(mu, 1 / math.sqrt(ab[ts[0]].item()))
    c = torch.zeros_like(mu)
    for i in range(len(ts)):
        k = (sig[i + 1] - sig[i]) * sig[i] / (s2 + sig[i] ** 2)
        A, c = A * (1 + k), c * (1 + k) - k * mu
    return c, A.abs()


def ancestral_reference(sched, ts, data, variance):
    """Exact output mean/std of ancestral sampling for Gaussian data, with the posterior written in
    precision form (product of q(x_s|x_0) and q(x_t|x_s)) rather than Ho et al.'s eq. 7."""
    ab = sched.alphas_cumprod
    mu, s2 = data.mean, data.std**2
    m, v = torch.zeros_like(mu), torch.ones_like(mu)
    for i, t in enumerate(ts):
        a_t = ab[t].item()
        g = math.sqrt(a_t) * s2 / (a_t * s2 + 1 - a_t)  # x0_hat = mu + g (x_t - sqrt(a_t) mu)
        if i + 1 == len(ts):
            return mu + g * (m - math.sqrt(a_t) * mu), g * v.sqrt()
        a_s = ab[ts[i + 1]].item()
        alpha = a_t / a_s
        prec = 1 / (1 - a_s) + alpha / (1 - alpha)
        c0, ct = math.sqrt(a_s) / ((1 - a_s) * prec), math.sqrt(alpha) / ((1 - alpha) * prec)
        var = 1 / prec if variance is Variance.BETA_TILDE else 1 - alpha
        m = (c0 * g + ct) * m + c0 * (mu - g * math.sqrt(a_t) * mu)
        v = (c0 * g + ct) ** 2 * v + var


def _mc(sampler, den, n=10_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = sampler.sample(den, torch.randn(n, 3, generator=g, dtype=F64), generator=g)
    return x.mean(0), x.std(0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variance", list(Variance))
def test_ddpm_1000_steps_reproduces_the_data(kind, variance):
    sched = linear_schedule()
    mean, std = _mc(DDPM(variance=variance), _denoiser(sched, kind))
    se = DATA.std / math.sqrt(10_000)
    assert ((mean - DATA.mean).abs() < 4 * se + 0.01).all(), mean
    assert ((std / DATA.std - 1).abs() < 0.03).all(), std
    ref_mean, ref_std = ancestral_reference(sched, DDPM().timesteps(sched), DATA, variance)
    assert ((mean - ref_mean).abs() < 4 * se).all()
    assert ((std / ref_std - 1).abs() < 0.03).all()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("steps", [50, 100])
@pytest.mark.parametrize("make_schedule", [linear_schedule, cosine_schedule])
def test_ddim_matches_exact_reference_and_the_data(kind, steps, make_schedule):
    sched = make_schedule()
    sampler = DDIM(steps=steps)
    den = _denoiser(sched, kind)
    # DDIM (eta=0) is affine in x_T: probe it with z = 0 and z = 1 to read off its exact moments.
    out = sampler.sample(den, torch.stack([torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)]))
    ref_mean, ref_std = ddim_reference(sched, sampler.timesteps(sched), DATA)
    torch.testing.assert_close(out[0], ref_mean, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close((out[1] - out[0]).abs(), ref_std, rtol=1e-7, atol=1e-7)
    # ...and that distribution is the data's, up to DDIM's first-order discretization error,
    # which shrinks the spread (Euler on a convex solution) and halves as steps double.
    assert ((ref_mean - DATA.mean).abs() < 0.01).all()
    tol = {50: 0.07, 100: 0.04}[steps]
    assert ((ref_std / DATA.std - 1).abs() < tol).all(), ref_std / DATA.std


def test_ddim_converges_as_steps_grow():
    sched = linear_schedule()
    errs = []
    for steps in (10, 50, 100, 1000):
        ts = DDIM(steps=steps).timesteps(sched)
        _, std = ddim_reference(sched, ts, DATA)
        errs.append((std / DATA.std - 1).abs().max().item())
    assert errs == sorted(errs, reverse=True) and errs[-1] < 0.01, errs


@pytest.mark.parametrize("kind", KINDS)
def test_ddim_eta_one_and_respaced_ddpm_match_their_references(kind):
    sched = cosine_schedule()
    den = _denoiser(sched, kind)
    for sampler in (DDIM(steps=100, eta=1.0), DDPM(steps=100)):
        mean, std = _mc(sampler, den, n=20_000, seed=1)
        ref_mean, ref_std = ancestral_reference(sched, sampler.timesteps(sched), DATA,
                                                Variance.BETA_TILDE)
        assert ((mean - ref_mean).abs() < 4 * DATA.std / math.sqrt(20_000)).all()
        assert ((std / ref_std - 1).abs() < 0.025).all()


def test_parameterizations_give_the_same_samples():
    sched = linear_schedule()
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(5), dtype=F64)
    outs = [DDIM(steps=20).sample(_denoiser(sched, k), noise) for k in KINDS]
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-6, atol=1e-6)


def test_clip_denoised_keeps_samples_in_range():
    sched = linear_schedule(100)
    wide = GaussianData(torch.zeros(3, dtype=F64), torch.full((3,), 3.0, dtype=F64))
    noise = torch.randn(256, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for sampler in (DDIM(steps=10, clip_denoised=True), DDPM(clip_denoised=True)):
        x = sampler.sample(_denoiser(sched, "eps", wide), noise,
                           generator=torch.Generator().manual_seed(1))
        assert x.abs().max().item() <= 1.0 + 1e-9
    assert DDIM(steps=10).sample(_denoiser(sched, "eps", wide), noise).abs().max() > 1.5


def test_callback_sees_every_step():
    sched = linear_schedule(100)
    seen = []
    DDIM(steps=7).sample(_denoiser(sched, "v"), torch.zeros(2, 3, dtype=F64),
                         callback=lambda s: seen.append((s.index, s.total, s.t)))
    assert [s[0] for s in seen] == list(range(7)) and seen[0][2] == 99 and seen[0][1] == 7


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timestep_sequences(spacing):
    ts = timestep_sequence(1000, 50, spacing)
    assert len(ts) == 50 and ts == sorted(ts, reverse=True) and 0 <= ts[-1] and ts[0] <= 999
    assert timestep_sequence(1000, 1000, spacing) == list(range(999, -1, -1))
    with pytest.raises(ValueError):
        timestep_sequence(1000, 1001, spacing)
    expected_first = {"leading": 980, "trailing": 999, "linspace": 999}[spacing]
    assert ts[0] == expected_first


def _affine_moments(sampler, den):
    """Mean and std of a deterministic sampler's output for x_T ~ N(0, I), read off by probing
    the (affine, for Gaussian data) map with z = 0 and z = 1."""
    out = sampler.sample(den, torch.stack([torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)]))
    return out[0], (out[1] - out[0]).abs()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make_schedule", [linear_schedule, cosine_schedule])
def test_dpm_solver_pp_2m_converges_faster_than_ddim(kind, make_schedule):
    """Lu et al. 2022: DPM-Solver++ at ~20 NFE is as accurate as DDIM at 50 or more NFE."""
    sched = make_schedule()
    den = _denoiser(sched, kind)

    def std_error(sampler):
        mean, std = _affine_moments(sampler, den)
        assert ((mean - DATA.mean).abs() < 0.01).all()
        return (std / DATA.std - 1).abs().max().item()

    dpm = {s: std_error(DPMSolverPP2M(steps=s)) for s in (10, 20, 50)}
    ddim = {s: std_error(DDIM(steps=s)) for s in (50, 100)}
    # Measured std errors, linear: DPM++ 20 steps 4.4% vs DDIM 50 5.7% / 100 2.9%;
    # cosine: DPM++ 20 steps 1.3% vs DDIM 100 1.6%.
    assert dpm[20] < ddim[50], (dpm, ddim)
    assert dpm[50] < 0.01 and dpm[50] < dpm[20] < dpm[10], dpm


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make_schedule", [linear_schedule, cosine_schedule])
def test_karras_euler_and_heun_converge(kind, make_schedule):
    """Euler (1st order) and Heun (2nd order) on the Karras grid (Karras et al. 2022)."""
    den = _denoiser(make_schedule(), kind)
    err = {}
    for cls in (Euler, Heun):
        for steps in (10, 20, 50, 100):
            mean, std = _affine_moments(cls(steps=steps), den)
            # starting at sigma_max = 80 instead of sigma_T leaves about |mean| / 80 of bias
            assert ((mean - DATA.mean).abs() < 0.02).all()
            err[cls.__name__, steps] = (std / DATA.std - 1).abs().max().item()
    for cls in ("Euler", "Heun"):
        assert err[cls, 100] < err[cls, 50] < err[cls, 20] < err[cls, 10], err
    assert err["Heun", 50] < 0.01 and err["Euler", 100] < 0.03, err
    assert err["Heun", 20] < err["Euler", 50] and err["Heun", 50] < err["Euler", 100], err


def test_heun_counts_network_evaluations_and_churn_stays_on_target():
    sched = cosine_schedule()
    calls = []
    ideal = IdealNetwork(DATA, sched, Parameterization.EPS)
    den = Denoiser(lambda x, t: calls.append(1) or ideal(x, t), sched, Parameterization.EPS)
    Heun(steps=18).sample(den, torch.zeros(2, 3, dtype=F64))
    assert len(calls) == 2 * 18 - 1
    mean, std = _mc(Heun(steps=50, s_churn=20.0), _denoiser(sched, "eps"), n=10_000, seed=3)
    assert ((mean - DATA.mean).abs() < 0.05).all() and ((std / DATA.std - 1).abs() < 0.05).all()


def test_dynamic_thresholding_rescales_only_out_of_range_samples():
    """Saharia et al. 2022: s = max(1, quantile_p |x0|); x0 -> clip(x0, -s, s) / s."""
    x0 = torch.stack([torch.linspace(-0.5, 0.5, 101), torch.linspace(-4.0, 4.0, 101)])
    sampler = DDIM(steps=5, dynamic_threshold=0.9)
    out = sampler.denoised(x0)
    torch.testing.assert_close(out[0], x0[0])  # already inside [-1, 1]: untouched
    s = torch.quantile(x0[1].abs(), 0.9)
    torch.testing.assert_close(out[1], x0[1].clamp(-s, s) / s)
    assert out.abs().max() <= 1.0
    wide = GaussianData(torch.zeros(3, dtype=F64), torch.full((3,), 3.0, dtype=F64))
    for cls in (DDPM, DDIM, DPMSolverPP2M, Euler, Heun):
        x = cls(steps=10, dynamic_threshold=0.995).sample(
            _denoiser(linear_schedule(100), "eps", wide),
            torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=F64),
            generator=torch.Generator().manual_seed(1))
        assert x.abs().max().item() <= 1.0 + 1e-6, cls


def ve_reference(sigmas, data, z, multistep):
    """Exact output of a deterministic sampler over the noise levels ``sigmas`` (N + 1, the last
    0) for Gaussian data, written in the variance-exploding form xbar = x0 + sigma eps, where the
    ideal denoiser is D(xbar; sigma) = mu + s^2 / (s^2 + sigma^2) (xbar - mu), from x_T = z (so
    xbar_0 = z sqrt(1 + sigma_0^2)). Each step is xbar' = (sigma'/sigma) xbar + (1 - sigma'/sigma)
    D_hat: Euler on dxbar/dsigma = (xbar - D)/sigma (DDIM, Song et al. 2021, eq. 14) with
    D_hat = D, or, with ``multistep``, DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2 divided by
    alpha_s, where e^{-h} = sigma'/sigma) with D_hat = (1 + 1/2r) D - 1/2r D_prev,
    r = h_prev / h, h = log(sigma / sigma'). The step to sigma = 0 returns D."""
    mu, s2 = data.mean, data.std**2
    xbar, d_prev, h_prev = z * math.sqrt(1 + sigmas[0] ** 2), None, None
    for sigma, nxt in pairwise(sigmas):
        d = mu + s2 / (s2 + sigma**2) * (xbar - mu)
        if nxt == 0:
            return d
        h, d_hat = math.log(sigma / nxt), d
        if multistep and d_prev is not None:
            r = h_prev / h
            d_hat = (1 + 1 / (2 * r)) * d - 1 / (2 * r) * d_prev
        xbar = nxt / sigma * xbar + (1 - nxt / sigma) * d_hat
        d_prev, h_prev = d, h
    return xbar


def karras_eq5(sigma_min, sigma_max, n, rho=7.0):
    """Karras et al. 2022, eq. 5, then 0."""
    i = torch.arange(n, dtype=F64) / (n - 1)
    ramp = sigma_max ** (1 / rho) + i * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))
    return (ramp**rho).tolist() + [0.0]


def _probe(sampler, den):
    """The sampler's output for x_T = 0 and x_T = 1 (it is affine in x_T for Gaussian data)."""
    return sampler.sample(den, torch.stack([torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)]))


def _check_against_ve_reference(sampler, den, sigmas, multistep):
    """The sampler's output equals the reference to 1e-7; returns the reference's std error."""
    out = _probe(sampler, den)
    ref = [ve_reference(sigmas, DATA, torch.full((3,), z, dtype=F64), multistep) for z in (0, 1)]
    torch.testing.assert_close(out, torch.stack(ref), rtol=1e-7, atol=1e-7)
    assert ((ref[0] - DATA.mean).abs() < 0.01).all()
    return ((ref[1] - ref[0]).abs() / DATA.std - 1).abs().max().item()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make_schedule", [linear_schedule, cosine_schedule])
def test_dpm_solver_pp_2m_on_the_karras_grid_matches_its_exact_reference(kind, make_schedule):
    """'DPM++ 2M Karras' is DPMSolverPP2M with grid=karras: the reference steps on Karras eq. 5
    over the schedule's whole sigma range, and converges at second order."""
    sched = make_schedule()
    den = _denoiser(sched, kind)
    lo, hi = float(sched.sigmas[0]), float(sched.sigmas[-1])
    err = {s: _check_against_ve_reference(DPMSolverPP2M(steps=s, grid="karras"), den,
                                          karras_eq5(lo, hi, s), multistep=True)
           for s in (20, 50, 100)}
    # measured: linear 5.1%, 0.70%, 0.15%; cosine (sigma_max ~ 1e4 stretches eq. 5) 15.7%, 4.4%,
    # 0.99%: the error falls by ~4.5 as the steps double, second order
    assert err[100] < err[50] < err[20] and err[100] < 0.015, err
    assert err[50] / err[100] > 3.5, err


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make_schedule", [linear_schedule, cosine_schedule])
def test_ddim_on_the_logsnr_grid_matches_its_exact_reference_and_converges(kind, make_schedule):
    """DDIM with grid=logsnr steps uniformly in log sigma between the schedule's extremes; its
    output distribution tends to the data's at first order (error halves as the steps double)."""
    sched = make_schedule()
    den = _denoiser(sched, kind)
    lo, hi = math.log(sched.sigmas[0]), math.log(sched.sigmas[-1])
    err = {}
    for steps in (25, 50, 100, 200):
        sigmas = torch.linspace(hi, lo, steps, dtype=F64).exp().tolist() + [0.0]
        err[steps] = _check_against_ve_reference(DDIM(steps=steps, grid="logsnr"), den, sigmas,
                                                 multistep=False)
    # measured: linear 9.7%, 4.8%, 2.4%, 1.2%; cosine 14.7%, 7.4%, 3.7%, 1.9%
    assert all(1.8 < err[s] / err[2 * s] < 2.2 for s in (25, 50, 100)), err
    assert err[200] < 0.02, err


def test_euler_on_a_timestep_grid_is_ddim():
    """DDIM with eta = 0 is Euler's method in (xbar, sigma) (Song et al. 2021, eq. 14), so the two
    step rules agree on the same grid - through the same wrapped model."""
    sched = cosine_schedule()
    for kind in KINDS:
        den = _denoiser(sched, kind)
        for grid in ("trailing", "karras"):
            torch.testing.assert_close(_probe(Euler(steps=30, grid=grid, sigma_max=None), den),
                                       _probe(DDIM(steps=30, grid=grid), den),
                                       rtol=1e-10, atol=1e-10)


def test_denoiser_on_training_timesteps_is_the_network_at_integer_t():
    sched = cosine_schedule()
    ideal, seen = IdealNetwork(DATA, sched, Parameterization.V), []
    den = Denoiser(lambda x, t: seen.append(t) or ideal(x, t), sched, "v")
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for k in (0, 1, 500, 999):
        sigma = float(sched.sigmas[k])
        pred = den.predict(x, sigma)
        assert seen[-1].dtype == torch.long and (seen[-1] == k).all()
        ref = den(x, torch.full((4,), k))
        assert torch.equal(pred.x0, ref.x0) and torch.equal(pred.eps, ref.eps)
        xbar = x * math.sqrt(1 + sigma**2)  # the same state in the variance-exploding scale
        torch.testing.assert_close(den.denoise(xbar, sigma), ref.x0, rtol=1e-12, atol=1e-12)
        assert seen[-1].dtype == torch.long and (seen[-1] == k).all()


def test_denoiser_between_timesteps_is_the_exact_ve_denoiser():
    """Off the training timesteps D(xbar; sigma) evaluates the network at the real timestep of
    the schedule's log-sigma interpolation, and is E[x0 | xbar] in closed form."""
    sched = linear_schedule()
    for kind in KINDS:
        ideal, seen = IdealNetwork(DATA, sched, kind), []
        den = Denoiser(lambda x, t, ideal=ideal, seen=seen: seen.append(t) or ideal(x, t), sched,
                       kind)
        xbar = 3 * torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
        for sigma in (0.0123, 0.5, 1.0, 37.0, 150.0):
            d = den.denoise(xbar, sigma)
            assert seen[-1].dtype == torch.float64
            assert seen[-1][0].item() == sched.sigma_to_t(sigma)
            s2 = DATA.std**2
            expected = DATA.mean + s2 / (s2 + sigma**2) * (xbar - DATA.mean)
            torch.testing.assert_close(d, expected, rtol=1e-10, atol=1e-10)
        with pytest.raises(ValueError, match="sigma"):
            den.predict(xbar, 0.0)


def test_callbacks_report_the_exact_grid_timesteps():
    sched = linear_schedule()
    for sampler in (Euler(steps=7), Heun(steps=7), DPMSolverPP2M(steps=7, grid="logsnr")):
        seen = []
        sampler.sample(_denoiser(sched, "eps"), torch.zeros(2, 3, dtype=F64),
                       callback=lambda s, seen=seen: seen.append((s.index, s.total, s.t)))
        assert seen == [(i, 7, t) for i, t in enumerate(sampler.timesteps(sched))]
        assert all(isinstance(t, float) for _, _, t in seen[:-1])
