"""UniPC (Zhao et al. 2023) against exact references: its coefficients integrate polynomials
exactly, and on Gaussian data (closed-form ideal denoiser) its output is compared with the exact
solution of the probability-flow ODE."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from test_samplers import DATA, KINDS, _denoiser

from diffcli.cli import CONF_DIR
from diffcli.components import build
from diffcli.diffusion.gaussian import IdealNetwork
from diffcli.diffusion.grids import GridKind
from diffcli.diffusion.process import Parameterization
from diffcli.diffusion.samplers import Denoiser, DPMSolverPP2M, UniPC
from diffcli.diffusion.samplers.unipc import phi, weights
from diffcli.diffusion.schedules import cosine_schedule, linear_schedule

F64 = torch.float64
PROBES = torch.stack([torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)])


def ode_reference(sampler, sched, z, data=DATA):
    """The exact probability-flow ODE solution from x_T = z at the grid's first noise level to
    its last one, sigma_{N-1}, then denoised there, as every sampler here ends (the step to
    sigma = 0 returns x0_hat). In the variance-exploding form xbar = x0 + sigma eps the ODE
    dxbar/dsigma = (xbar - D)/sigma with D = mu + s^2/(s^2 + sigma^2)(xbar - mu) has the solution
    xbar - mu = (xbar_0 - mu) sqrt((s^2 + sigma^2)/(s^2 + sigma_0^2)); so the reference isolates
    the solver's discretization error from the (sampler-independent) last jump to sigma = 0."""
    grid = sampler.make_grid(sched)
    s0, last = grid.sigmas[0], grid.sigmas[len(grid) - 1]
    mu, s2 = data.mean, data.std**2
    xbar0 = z * math.sqrt(1 + s0**2)
    return mu + (xbar0 - mu) * s2 / torch.sqrt((s2 + last**2) * (s2 + s0**2))


def ode_error(sampler, sched, kind="eps"):
    """max |x - exact| over the probes x_T = 0 and x_T = 1 (the map is affine in x_T)."""
    out = sampler.sample(_denoiser(sched, kind), PROBES)
    return (out - ode_reference(sampler, sched, PROBES)).abs().max().item()


def _integral(k, h):
    """int_0^h e^{-(h-u)} u^k / k! du by integration by parts, I_k = h^k/k! - I_{k-1}
    (independent of :func:`phi`'s series)."""
    value = -math.expm1(-h)
    for j in range(1, k + 1):
        value = h**j / math.factorial(j) - value
    return value


def test_phi_functions():
    for z in (-3.0, -1.0, -0.999999, -0.3, -1e-6, 0.2, 1.5):
        assert phi(0, z) == pytest.approx(math.exp(z), rel=1e-14)
        assert phi(1, z) == pytest.approx(math.expm1(z) / z, rel=1e-12)
        for k in (1, 2, 3):  # phi_{k+1}(z) = (phi_k(z) - 1/k!)/z, phi_k(0) = 1/k!
            assert phi(k + 1, z) == pytest.approx((phi(k, z) - 1 / math.factorial(k)) / z,
                                                  rel=1e-8, abs=1e-12)
    assert phi(3, 0.0) == 1 / 6
    # both sides of the switch from the series to the recursion agree
    assert phi(4, -1 + 1e-12) == pytest.approx(phi(4, -1 - 1e-12), rel=1e-9)


@pytest.mark.parametrize("h", [0.01, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("rs", [[-1.0, 1.0], [-0.7, -1.9], [-1.3, -2.1, 1.0]])
def test_coefficients_integrate_polynomials_exactly(h, rs):
    """Theorem 3.1's conditions: with K >= 2 differences the update (1 - e^{-h}) m_0 +
    sum_m w_m D_m / r_m is exact for x0_hat(lambda_s + u) any polynomial of degree <= K in u,
    whichever B(h)."""
    big_k = len(rs)
    for variant in ("bh1", "bh2"):
        w = weights(variant, h, rs)
        for degree in range(big_k + 1):
            f = lambda u, d=degree: u**d / math.factorial(d)  # noqa: E731
            approx = -math.expm1(-h) * f(0) + sum(
                w_m * (f(r * h) - f(0)) / r for w_m, r in zip(w, rs, strict=True))
            assert approx == pytest.approx(_integral(degree, h), rel=1e-9, abs=1e-13), degree


def test_one_difference_uses_a_half_and_b_of_h():
    """K = 1: a_1 = 1/2 (the authors' choice), so B(h) makes the variants differ."""
    h = 0.8
    assert weights("bh1", h, [-1.0]) == [0.5 * h]
    assert weights("bh2", h, [-1.0]) == pytest.approx([0.5 * (1 - math.exp(-h))], rel=1e-15)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid", ["trailing", "logsnr", "karras", "leading"])
def test_unip2_bh2_without_corrector_is_dpm_solver_pp_2m(kind, grid):
    """UniP-2 with B(h) = 1 - e^{-h} and a_1 = 1/2 is DPM-Solver++(2M) (Lu et al. 2022)."""
    sched = cosine_schedule()
    den = _denoiser(sched, kind)
    noise = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    for steps in (1, 2, 7, 20):
        torch.testing.assert_close(
            UniPC(steps=steps, grid=grid, corrector=False).sample(den, noise),
            DPMSolverPP2M(steps=steps, grid=grid).sample(den, noise), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("make_schedule", [linear_schedule, cosine_schedule])
def test_converges_at_third_order_on_the_logsnr_grid(make_schedule):
    """UniPC-p is of order p + 1 (Corollary 3.2 with UniC): with h uniform in lambda (logsnr
    grid) the error of UniPC-2 falls by ~8 as the steps double, DPM-Solver++(2M)'s by ~4.
    Measured max |x - exact| (UniPC-2 bh2 | DPM++(2M) | UniPC-3 bh2) at 10/20/40/80 steps:
    linear 7.6e-2, 1.4e-2, 1.8e-3, 2.3e-4 | 5.8e-2, 2.2e-2, 5.6e-3, 1.4e-3 |
    6.0e-2, 6.1e-4, 1.1e-4, 1.1e-5; cosine (lambda spans ~16) 7.1e-2, 4.2e-2, 6.5e-3, 8.3e-4 |
    1.8e-2, 4.4e-2, 1.3e-2, 3.3e-3 | 6.1e-1, 2.0e-2, 1.6e-4, 4.9e-5."""
    sched = make_schedule()
    steps = (10, 20, 40, 80)
    uni = {s: ode_error(UniPC(steps=s, grid="logsnr"), sched) for s in steps}
    dpm = {s: ode_error(DPMSolverPP2M(steps=s, grid="logsnr"), sched) for s in steps}
    uni3 = {s: ode_error(UniPC(steps=s, grid="logsnr", order=3), sched) for s in steps}
    assert uni[80] < uni[40] < uni[20] < uni[10], uni
    assert uni[20] / uni[40] > 6 and uni[40] / uni[80] > 7, uni  # ~order 3
    assert 3 < dpm[40] / dpm[80] < 5, dpm  # order 2
    assert uni[40] < dpm[40] and uni[80] < dpm[80] / 3, (uni, dpm)
    assert uni3[40] < uni[40] and uni3[80] < uni[80] / 4 and uni3[20] / uni3[80] > 30, uni3


@pytest.mark.parametrize("kind", KINDS)
def test_beats_dpm_solver_pp_2m_where_the_paper_says(kind):
    """On each schedule's default (trailing) grid UniPC-2 (bh2, corrector) has a smaller error
    than DPM-Solver++(2M) at the same NFE - except at 10 steps on the linear schedule, where
    DPM-Solver++(2M) is better on this problem. Measured max |x - exact|, UniPC vs DPM++(2M):
    cosine 5: 1.7e-2 vs 1.9e-1, 10: 1.5e-2 vs 5.4e-2, 20: 6.2e-3 vs 1.7e-2, 40: 2.2e-3 vs
    5.2e-3; linear 5: 6.3e-2 vs 1.1e-1, 10: 3.6e-2 vs 1.3e-2 (worse), 20: 1.5e-2 vs 1.8e-2,
    40: 5.9e-3 vs 8.1e-3, 80: 2.4e-3 vs 3.8e-3."""
    cos, lin = cosine_schedule(), linear_schedule()
    for sched, steps in ((cos, (5, 10, 20, 40)), (lin, (5, 20, 40, 80))):
        for s in steps:
            uni = ode_error(UniPC(steps=s), sched, kind)
            dpm = ode_error(DPMSolverPP2M(steps=s), sched, kind)
            assert uni < dpm, (sched, s, uni, dpm)
    assert ode_error(UniPC(steps=10), cos, kind) < ode_error(DPMSolverPP2M(steps=10), cos,
                                                            kind) / 3
    # the exception, pinned so that a change shows: linear, 10 steps
    assert ode_error(UniPC(steps=10), lin, kind) > ode_error(DPMSolverPP2M(steps=10), lin, kind)


def test_corrector_improves_few_step_sampling():
    """UniC on vs off (same NFE), max |x - exact| on the trailing grid, measured (on / off):
    order 2: cosine 5: 1.7e-2 / 1.9e-1, 10: 1.5e-2 / 5.4e-2, 20: 6.2e-3 / 1.7e-2;
             linear 5: 6.3e-2 / 1.1e-1, 10: 3.6e-2 / 1.3e-2 (worse), 20: 1.5e-2 / 1.8e-2;
    order 3: cosine 5: 1.0e-2 / 1.7e-1, 10: 1.1e-2 / 6.4e-2, 20: 4.4e-3 / 2.6e-2;
             linear 5: 4.8e-2 / 8.3e-2, 10: 4.6e-2 / 5.5e-2, 20: 1.19e-2 / 1.19e-2 (a tie)."""
    cos, lin = cosine_schedule(), linear_schedule()
    cases = {(2, cos): (5, 10, 20), (2, lin): (5, 20), (3, cos): (5, 10, 20), (3, lin): (5, 10)}
    for (order, sched), steps in cases.items():
        for s in steps:
            on = ode_error(UniPC(steps=s, order=order), sched)
            off = ode_error(UniPC(steps=s, order=order, corrector=False), sched)
            assert on < off, (order, sched.name, s, on, off)
    for order in (2, 3):
        on = ode_error(UniPC(steps=5, order=order), cos)
        assert on < ode_error(UniPC(steps=5, order=order, corrector=False), cos) / 5


def test_orders_and_variants_run_and_converge():
    """Every (order, variant, corrector) gives finite samples that converge; bh1 and bh2 differ
    (only through a_1 = 1/2). Measured max |x - exact|, cosine trailing, 20 / 80 steps:
    order 2: bh2 6.2e-3 / 6.8e-4, bh1 1.7e-1 / 8.2e-3; order 3: bh2 4.4e-3 / 5.6e-4,
    bh1 1.5e-1 / 7.0e-3: bh1 (B(h) = h) overshoots on the long first lambda-steps."""
    sched = cosine_schedule()
    err = {}
    for order in (2, 3):
        for variant in ("bh1", "bh2"):
            for corrector in (True, False):
                for steps in (5, 20, 80):
                    sampler = UniPC(steps=steps, order=order, variant=variant,
                                    corrector=corrector)
                    out = sampler.sample(_denoiser(sched, "v"), PROBES)
                    assert torch.isfinite(out).all()
                    err[order, variant, corrector, steps] = ode_error(sampler, sched)
    for key, value in err.items():
        if key[-1] == 80:
            assert value < 0.03, (key, value)
    for order in (2, 3):
        assert err[order, "bh2", True, 80] < err[order, "bh2", True, 20] / 5, err
        assert err[order, "bh1", True, 20] != err[order, "bh2", True, 20]


def test_counts_network_evaluations_and_reports_each():
    """NFE = steps: the corrector reuses the next step's evaluation."""
    sched = linear_schedule()
    ideal = IdealNetwork(DATA, sched, Parameterization.EPS)
    for order in (2, 3):
        for corrector in (True, False):
            for steps in (1, 2, 3, 5, 10, 20):
                calls, seen = [], []
                den = Denoiser(lambda x, t, calls=calls: calls.append(1) or ideal(x, t), sched,
                               Parameterization.EPS)
                sampler = UniPC(steps=steps, order=order, corrector=corrector, grid="karras")
                sampler.sample(den, PROBES, callback=lambda s, seen=seen: seen.append(s))
                assert len(calls) == steps
                assert [(s.index, s.total, s.t) for s in seen] == [
                    (i, steps, t) for i, t in enumerate(sampler.timesteps(sched))]


def test_deterministic_and_finite_from_5_to_1000_steps():
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    for sched in (linear_schedule(), cosine_schedule()):
        den = _denoiser(sched, "x0")
        for order in (2, 3):
            for steps in (5, 6, 7, 9, 13, 14, 15, 16, 33, 100, 250, 1000):
                sampler = UniPC(steps=steps, order=order)
                a = sampler.sample(den, noise, generator=torch.Generator().manual_seed(0))
                b = sampler.sample(den, noise, generator=torch.Generator().manual_seed(1))
                assert torch.isfinite(a).all() and torch.equal(a, b), (order, steps)
        # 1000 steps: every training timestep; the solver error is down to ~1e-5
        assert ode_error(UniPC(steps=1000), sched) < 1e-4


@pytest.mark.parametrize("grid", [k.value for k in GridKind if k is not GridKind.CUSTOM])
def test_every_grid_kind(grid):
    """Measured max |x - exact|, linear schedule, 10 / 50 / 200 steps (UniPC-2, UniPC-3):
    trailing 3.6e-2 4.5e-3 4.0e-4, 4.6e-2 3.1e-3 3.0e-4; leading 3.2e-1 2.3e-2 1.1e-3,
    3.3e-1 7.0e-2 1.8e-3; linspace (= uniform) 3.9e-1 2.4e-2 1.1e-3, 4.0e-1 7.3e-2 1.8e-3;
    karras 2.4e-1 2.1e-3 3.0e-5, 5.0e-1 5.0e-4 1.8e-6; logsnr 7.6e-2 9.4e-4 1.4e-5,
    6.0e-2 5.6e-5 3.3e-7. On leading / linspace, whose last lambda-steps are long and uneven,
    order 3 is worse than order 2."""
    sched = linear_schedule()
    for order in (2, 3):
        err = {s: ode_error(UniPC(steps=s, grid=grid, order=order), sched) for s in (10, 50, 200)}
        assert all(math.isfinite(e) for e in err.values()) and err[200] < err[10], err
        assert err[200] < 0.01, err


def test_custom_grids():
    """Measured max |x - exact| (UniPC-2, UniPC-3, DPM++(2M)): the timesteps 4.4e-2, 1.2e-1,
    7.5e-2; the 7 sigmas 2.0e-1, 4.6e-1, 1.1e-1; two sigmas: 7.0e-1 for all (with N = 2 the only
    corrector would act at the last point, so UniPC is DDIM + x0_hat like DPM++(2M))."""
    sched = cosine_schedule()
    for options in ({"custom_timesteps": [999, 900, 700, 500, 300, 150, 60, 20, 0]},
                    {"custom_sigmas": [150.0, 20.0, 5.0, 1.5, 0.5, 0.1, 0.02]}):
        for order in (2, 3):
            sampler = UniPC(grid="custom", order=order, **options)
            out = sampler.sample(_denoiser(sched, "eps"), PROBES)
            assert torch.isfinite(out).all() and sampler.steps == len(sampler.timesteps(sched))
            assert ode_error(sampler, sched) < 0.25 * order
    den = _denoiser(sched, "eps")
    two = {"grid": "custom", "custom_sigmas": [3.0, 0.1, 0.0]}
    torch.testing.assert_close(UniPC(**two).sample(den, PROBES),
                               DPMSolverPP2M(**two).sample(den, PROBES), rtol=1e-12, atol=1e-12)


def test_lower_order_final():
    """Below 15 steps the step k steps before the end has order <= k (only order 3 changes)."""
    assert UniPC(order=3, steps=8).step_orders(8) == [1, 2, 3, 3, 3, 3, 2]
    assert UniPC(order=3, lower_order_final=False).step_orders(8) == [1, 2, 3, 3, 3, 3, 3]
    assert UniPC(order=3).step_orders(15) == [1, 2] + [3] * 12
    assert UniPC(order=2).step_orders(5) == [1, 2, 2, 2]
    sched, noise = cosine_schedule(), PROBES
    den = _denoiser(sched, "eps")
    torch.testing.assert_close(UniPC(steps=8).sample(den, noise),
                               UniPC(steps=8, lower_order_final=False).sample(den, noise),
                               rtol=0, atol=0)
    assert not torch.equal(UniPC(steps=8, order=3).sample(den, noise),
                           UniPC(steps=8, order=3, lower_order_final=False).sample(den, noise))


@pytest.mark.parametrize("bad", [{"order": 1}, {"order": 4}, {"order": "2"}, {"order": True},
                                 {"variant": "bh3"}, {"corrector": "yes"},
                                 {"lower_order_final": 1}, {"steps": 0}])
def test_refuses_bad_options_in_one_line(bad):
    with pytest.raises(ValueError) as err:
        UniPC(**bad)
    assert "\n" not in str(err.value) and next(iter(bad)) in str(err.value)


def test_builds_from_its_yaml():
    node = OmegaConf.load(CONF_DIR / "sampler" / "unipc.yaml")
    sampler = build("sampler", node)
    assert isinstance(sampler, UniPC)
    assert (sampler.steps, sampler.order, sampler.variant, sampler.corrector) == (20, 2, "bh2",
                                                                                  True)
    assert sampler.lower_order_final and sampler.grid is GridKind.TRAILING
    sched = cosine_schedule()
    assert ode_error(sampler, sched) == ode_error(UniPC(), sched)
    node.order, node.variant = 3, "bh1"
    assert build("sampler", node).order == 3
