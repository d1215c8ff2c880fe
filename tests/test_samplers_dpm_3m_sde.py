"""DPM-Solver++(3M) and DPM-Solver++(2M) SDE (Lu et al. 2022) against exact references: the
probability-flow ODE of Gaussian data in closed form, x0 quadratic in lambda (which a third-order
step integrates exactly), and the output moments of the SDE solver by an exact recursion."""

import math
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf
from test_samplers import DATA, F64, KINDS, _denoiser

from diffcli.components import build, conf_dir
from diffcli.diffusion.gaussian import GaussianData, IdealNetwork
from diffcli.diffusion.generate import generate
from diffcli.diffusion.samplers import (
    Denoiser,
    DPMSolverPP2M,
    DPMSolverPP2MSDE,
    DPMSolverPP3M,
)
from diffcli.diffusion.samplers.dpm_solver import half_log_snr
from diffcli.diffusion.schedules import cosine_schedule, linear_schedule

SAMPLER_CONFS = conf_dir() / "sampler"
NEW = (DPMSolverPP3M, DPMSolverPP2MSDE)
PROBES = torch.tensor([[0.0] * 3, [1.0] * 3, [-2.0] * 3], dtype=F64)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def exact_flow(sampler, sched, z, data=DATA):
    """The exact probability-flow ODE solution from x_T = z (B, 3) at the grid's first noise
    level sigma_0 down to its last, sigma_m, then denoised there - what a sampler's final step
    returns. In the variance-exploding form xbar = x / sqrt(abar), Gaussian data flows as
    xbar(sigma) - mu = (xbar(sigma_0) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)) (the score
    of N(mu, s^2 + sigma^2) in dxbar/dsigma = -sigma grad log p), and D(xbar; sigma_m) =
    mu + s^2 / (s^2 + sigma_m^2) (xbar - mu)."""
    sigmas = sampler.sigmas(sched)
    s0, sm = sigmas[0], sigmas[-2]
    mu, s2 = data.mean, data.std**2
    xbar0 = z * math.sqrt(1 + s0**2)
    return mu + (xbar0 - mu) * s2 / torch.sqrt((s2 + sm**2) * (s2 + s0**2))


def ode_error(sampler, den, sched):
    """Max |sampler - exact ODE solution| over the probes x_T = 0, 1, -2."""
    return (sampler.sample(den, PROBES) - exact_flow(sampler, sched, PROBES)).abs().max().item()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("make_schedule, grid", [(linear_schedule, "logsnr"),
                                                 (linear_schedule, "karras"),
                                                 (cosine_schedule, "logsnr")])
def test_3m_converges_at_third_order_and_beats_2m(kind, make_schedule, grid):
    """The error against the exact ODE solution falls ~8x or more per doubling of the steps
    for 3M (third order), ~4x for 2M (second order)."""
    sched = make_schedule()
    den = _denoiser(sched, kind)
    steps = (10, 20, 40, 80)
    err = {cls: [ode_error(cls(steps=s, grid=grid), den, sched) for s in steps]
           for cls in (DPMSolverPP2M, DPMSolverPP3M)}
    ratios = {cls: [a / b for a, b in zip(e, e[1:], strict=False)] for cls, e in err.items()}
    # measured (eps): linear logsnr 3M 1.6e-1, 1.1e-2, 5.9e-4, 3.2e-5 (ratios 15, 18, 18) vs
    # 2M 1.2e-1, 4.4e-2, 1.1e-2, 2.8e-3 (2.6, 3.9, 4.0); linear karras 3M 5.8e-1, 7.2e-2,
    # 5.3e-3, 6.0e-4 (8.1, 13.6, 8.8) vs 2M (3.5, 4.7, 4.3); cosine logsnr 3M 1.0, 4.9e-2,
    # 3.5e-3, 2.0e-4 (20, 14, 17) vs 2M 3.7e-2, 8.8e-2, 2.6e-2, 6.6e-3 (0.4, 3.4, 3.9)
    three, two = ratios[DPMSolverPP3M], ratios[DPMSolverPP2M]
    assert all(r > 7 for r in three), (three, err)
    assert all(r < 5 for r in two), (two, err)
    assert all(a > 1.5 * b for a, b in zip(three, two, strict=True)), (three, two)
    for i in (1, 2, 3):  # from 20 steps on 3M is the more accurate
        assert err[DPMSolverPP3M][i] < err[DPMSolverPP2M][i], err
    assert err[DPMSolverPP3M][3] < 1e-3, err


def _quadratic_x0_model(sched, coef):
    """A 'denoiser' whose x0 is p(lambda) = c0 + c1 lambda + c2 lambda^2 at every x: the samplers
    only call ``predict(x, sigma).x0`` (lambda = -log sigma)."""
    def predict(x, sigma):
        lam = -math.log(sigma)
        return SimpleNamespace(x0=torch.full_like(x, coef[0] + coef[1] * lam + coef[2] * lam**2))
    return SimpleNamespace(schedule=sched, predict=predict)


def _exact_step(x, lam_t, lam_s, coef):
    """x at lambda_s from x at lambda_t under x0(lambda) = p(lambda), exactly:
    (sigma_s / sigma_t) x + sigma_s [F(lambda_s) - F(lambda_t)] with F' = e^lambda p, i.e.
    F = e^lambda (c0 + c1 (lambda - 1) + c2 (lambda^2 - 2 lambda + 2)), and
    sigma = (1 + e^{2 lambda})^(-1/2)."""
    def big_f(lam):
        return math.exp(lam) * (coef[0] + coef[1] * (lam - 1) + coef[2] * (lam**2 - 2 * lam + 2))

    def sigma(lam):
        return 1 / math.sqrt(1 + math.exp(2 * lam))

    return sigma(lam_s) / sigma(lam_t) * x + sigma(lam_s) * (big_f(lam_s) - big_f(lam_t))


@pytest.mark.parametrize("lower_order_final", [False, True])
@pytest.mark.parametrize("grid", ["karras", "trailing", "logsnr"])
def test_3m_third_order_steps_are_exact_for_x0_quadratic_in_lambda(grid, lower_order_final):
    """From its third step on, 3M integrates the quadratic through the last three x0 exactly,
    so each step is the exact solution when x0(lambda) is a quadratic (on any, uneven, grid);
    the second step (2M's) is not, nor, with lower_order_final on 12 steps, the step into the
    last grid point (second order there)."""
    sched, coef = linear_schedule(), (0.3, -0.2, 0.05)
    sampler = DPMSolverPP3M(steps=12, grid=grid, lower_order_final=lower_order_final)
    states = []
    out = sampler.sample(_quadratic_x0_model(sched, coef), PROBES,
                         callback=lambda step: states.append(step.x_t))
    lam = [half_log_snr(a) for a in sampler.make_grid(sched).alphas_cumprod[:-1]]
    errors = [(states[i + 1] - _exact_step(states[i], lam[i], lam[i + 1], coef)).abs().max().item()
              for i in range(len(states) - 1)]
    assert errors[1] > 1e-6, errors  # the second-order step
    third = errors[2:-1] if lower_order_final else errors[2:]
    assert max(third) < 1e-11, errors
    if lower_order_final:
        assert errors[-1] > 1e-9, errors  # second order into the last grid point
    torch.testing.assert_close(out, torch.full_like(PROBES, coef[0] + coef[1] * lam[-1]
                                                    + coef[2] * lam[-1] ** 2))


def test_3m_starts_as_2m_and_both_return_a_point_mass_exactly():
    sched = cosine_schedule()
    den = _denoiser(sched, "v")
    torch.testing.assert_close(DPMSolverPP3M(steps=3).sample(den, PROBES),
                               DPMSolverPP2M(steps=3).sample(den, PROBES), rtol=1e-12, atol=1e-12)
    seen = {cls: [] for cls in (DPMSolverPP2M, DPMSolverPP3M)}
    for cls, states in seen.items():
        cls(steps=20).sample(den, PROBES, callback=lambda s, states=states: states.append(s.x_t))
    for a, b in zip(seen[DPMSolverPP2M][:3], seen[DPMSolverPP3M][:3], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert (seen[DPMSolverPP2M][3] - seen[DPMSolverPP3M][3]).abs().max() > 1e-6
    point = GaussianData(DATA.mean, torch.zeros(3, dtype=F64))
    for kind in KINDS:
        den = Denoiser(IdealNetwork(point, sched, kind), sched, kind)
        for sampler in (DPMSolverPP3M(steps=15), DPMSolverPP2MSDE(steps=15)):
            out = sampler.sample(den, torch.randn(8, 3, generator=_gen(0), dtype=F64),
                                 generator=_gen(1))
            torch.testing.assert_close(out, DATA.mean.expand(8, 3), rtol=0, atol=1e-10)


def sde_moments(sampler, sched, data=DATA):
    """Exact mean and std (per dimension) of DPMSolverPP2MSDE's output for x_T ~ N(0, I) and
    Gaussian data. The ideal x0 = mu + g (x - sqrt(abar) mu), g = sqrt(abar) s^2 /
    (abar s^2 + 1 - abar), is affine in x, so (x, x0_prev) stays jointly Gaussian: its mean and
    2x2 covariance are carried through x' = A x + B x0 + C x0_prev + S z, the step of the
    docstring with A = (sigma_s / sigma_t) e^{-eta h}, B + C = alpha_s (1 - e^{-(1 + eta) h}),
    C = -(B + C) / (2r) (0 on the first step), S^2 = sigma_s^2 (1 - e^{-2 eta h})."""
    grid = sampler.make_grid(sched)
    mu, s2, eta = data.mean, data.std**2, sampler.eta
    mx, mp = torch.zeros_like(mu), torch.zeros_like(mu)
    pxx, pxp, ppp = torch.ones_like(mu), torch.zeros_like(mu), torch.zeros_like(mu)
    h_prev = None
    for i in range(len(grid)):
        a, a_s = grid.alphas_cumprod[i], grid.alphas_cumprod[i + 1]
        g = math.sqrt(a) * s2 / (a * s2 + 1 - a)
        k = (1 - g * math.sqrt(a)) * mu
        if a_s >= 1.0:
            return g * mx + k, g * pxx.sqrt()
        h = math.log(math.sqrt(a_s / (1 - a_s))) - math.log(math.sqrt(a / (1 - a)))
        w = math.sqrt(a_s) * (1 - math.exp(-(1 + eta) * h))
        r = None if h_prev is None else h_prev / h
        b, c = (w, 0.0) if r is None else (w * (1 + 1 / (2 * r)), -w / (2 * r))
        s_2 = (1 - a_s) * (1 - math.exp(-2 * eta * h))
        u = math.sqrt((1 - a_s) / (1 - a)) * math.exp(-eta * h) + b * g
        mx, mp = u * mx + c * mp + b * k, g * mx + k
        pxx, pxp, ppp = (u * u * pxx + 2 * u * c * pxp + c * c * ppp + s_2,
                         g * (u * pxx + c * pxp), g * g * pxx)
        h_prev = h
    raise AssertionError("the grid does not end at sigma = 0")


@pytest.mark.parametrize("steps, grid, eta", [(50, "trailing", 1.0), (10, "karras", 1.0),
                                              (10, "trailing", 0.5)])
def test_2m_sde_samples_have_the_exact_moments(steps, grid, eta):
    """20000 samples' mean and std match the exact recursion within 4.5 standard errors, and at
    50 steps the data's (mean within 0.05, std within 5%)."""
    n, sched = 20_000, linear_schedule()
    sampler = DPMSolverPP2MSDE(steps=steps, grid=grid, eta=eta)
    g = _gen(7)
    x = sampler.sample(_denoiser(sched, "eps"), torch.randn(n, 3, generator=g, dtype=F64),
                       generator=g)
    mean, std = sde_moments(sampler, sched)
    assert ((x.mean(0) - mean).abs() < 4.5 * std / math.sqrt(n)).all(), (x.mean(0), mean)
    assert ((x.std(0) / std - 1).abs() < 4.5 / math.sqrt(2 * n)).all(), (x.std(0), std)
    if steps == 50:
        assert ((x.mean(0) - DATA.mean).abs() < 0.05).all(), x.mean(0)
        assert ((x.std(0) / DATA.std - 1).abs() < 0.05).all(), x.std(0)


def test_2m_sde_converges_in_distribution():
    """On the logsnr grid (which ends at the schedule's smallest sigma) the exact output std
    tends to the data's at about second order; measured 3.4%, 0.63%, 0.16%, 0.037% at 20, 50,
    100, 200 steps. The mean is exact up to the last grid point's shrinkage."""
    sched = linear_schedule()
    err = {}
    for steps in (20, 50, 100, 200):
        mean, std = sde_moments(DPMSolverPP2MSDE(steps=steps, grid="logsnr"), sched)
        assert ((mean - DATA.mean).abs() < 1e-4).all(), mean
        err[steps] = (std / DATA.std - 1).abs().max().item()
    assert err[50] < 0.01 and err[200] < 1e-3, err
    assert err[50] / err[100] > 3 and err[100] / err[200] > 3, err


def test_2m_sde_with_eta_zero_is_2m():
    sched = cosine_schedule()
    den = _denoiser(sched, "x0")
    noise = torch.randn(16, 3, generator=_gen(2), dtype=F64)
    for grid in ("trailing", "karras", "logsnr"):
        ode = DPMSolverPP2M(steps=12, grid=grid).sample(den, noise)
        sde = DPMSolverPP2MSDE(steps=12, grid=grid, eta=0.0).sample(den, noise, generator=_gen(3))
        assert torch.equal(sde, ode), grid
        noisy = DPMSolverPP2MSDE(steps=12, grid=grid).sample(den, noise, generator=_gen(3))
        assert (noisy - ode).abs().max() > 0.1, grid


def test_2m_sde_samples_depend_only_on_their_seed():
    sched = linear_schedule()
    den = _denoiser(sched, "eps")
    sampler = DPMSolverPP2MSDE(steps=25)
    together = generate(sampler, den, (3,), [0, 1, 2], batch_size=3, device=torch.device("cpu"))
    alone = generate(sampler, den, (3,), [0, 1, 2], batch_size=1, device=torch.device("cpu"))
    assert torch.equal(together, alone)
    reordered = generate(sampler, den, (3,), [2, 0], batch_size=2, device=torch.device("cpu"))
    assert torch.equal(reordered, together[[2, 0]])
    # directly: one generator per sample, in float64
    noise = torch.stack([torch.randn(3, generator=_gen(s), dtype=F64) for s in (5, 6)])
    both = sampler.sample(den, noise, generator=[_gen(50), _gen(60)])
    first = sampler.sample(den, noise[:1], generator=[_gen(50)])
    assert torch.equal(both[:1], first)
    assert not torch.equal(both, sampler.sample(den, noise, generator=[_gen(51), _gen(60)]))


@pytest.mark.parametrize("cls", NEW, ids=lambda c: c.__name__)
def test_finite_at_any_step_count_and_one_evaluation_per_step(cls):
    sched = linear_schedule()
    ideal, calls = IdealNetwork(DATA, sched, "eps"), []
    den = Denoiser(lambda x, t: calls.append(t) or ideal(x, t), sched, "eps")
    noise = torch.randn(4, 3, generator=_gen(0), dtype=F64)
    for steps in (1, 2, 3, 5, 10, 50, 200, 999, 1000):
        calls.clear()
        seen = []
        x = cls(steps=steps).sample(den, noise, generator=_gen(1),
                                    callback=lambda s, seen=seen: seen.append((s.index, s.t)))
        assert torch.isfinite(x).all(), steps
        assert len(calls) == steps, (steps, len(calls))
        assert seen == list(enumerate(cls(steps=steps).timesteps(sched))), steps
    x = cls(steps=1000).sample(den, noise.float(), generator=_gen(1))
    assert x.dtype == torch.float32 and torch.isfinite(x).all()


@pytest.mark.parametrize("cls", NEW, ids=lambda c: c.__name__)
def test_every_grid_kind(cls):
    sched = cosine_schedule()
    ideal, calls = IdealNetwork(DATA, sched, "v"), []
    den = Denoiser(lambda x, t: calls.append(1) or ideal(x, t), sched, "v")
    noise = torch.randn(64, 3, generator=_gen(0), dtype=F64)
    samplers = [cls(steps=30, grid=g)
                for g in ("leading", "trailing", "linspace", "uniform", "karras", "logsnr")]
    samplers += [cls(grid="custom", custom_timesteps=[999, 700, 400.5, 100, 5]),
                 cls(grid="custom", custom_sigmas=[80.0, 8.0, 0.8, 0.08]),
                 cls(steps=30, grid="karras", rho=3.0, sigma_min=0.01, sigma_max=50.0)]
    for sampler in samplers:
        calls.clear()
        x = sampler.sample(den, noise, generator=_gen(1))
        assert torch.isfinite(x).all() and len(calls) == len(sampler.make_grid(sched)), sampler
        assert (x.mean(0) - DATA.mean).abs().max() < 0.6, (sampler, x.mean(0))


@pytest.mark.parametrize("name, cls", [("dpmpp_3m", DPMSolverPP3M),
                                       ("dpmpp_2m_sde", DPMSolverPP2MSDE)])
def test_built_from_their_configs(name, cls):
    node = OmegaConf.to_container(OmegaConf.load(SAMPLER_CONFS / f"{name}.yaml"))
    shipped = {"grid": "logsnr"} if cls is DPMSolverPP3M else {}  # diffcli sample's default
    assert build("sampler", node) == cls(**shipped)
    assert build("sampler", node, grid="karras", steps=7) == cls(grid="karras", steps=7)
    assert set(node) - {"_target_"} <= set(cls.__dataclass_fields__)
    if cls is DPMSolverPP2MSDE:
        assert build("sampler", node, eta=0.25).eta == 0.25
        for bad in (-1.0, float("nan"), "1"):
            with pytest.raises(ValueError, match="eta"):
                DPMSolverPP2MSDE(eta=bad)
