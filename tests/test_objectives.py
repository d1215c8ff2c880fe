"""EDM and flow-matching objectives against exact references (issue 27).

For Gaussian data N(m, s^2) the ideal denoiser is closed-form, E[x0 | xbar] = (s^2 xbar +
sigma^2 m) / (s^2 + sigma^2), so each objective's ideal network is known: F* = (D* - c_skip x) /
c_out. Checked here: the papers' formulas (EDM's Table 1, the rectified-flow interpolant and
velocity, SD3's shift), the denoiser built on each objective, the loss at the ideal network
against its closed-form minimum, every sampler's output distribution and the ODE likelihood
against the exact log-density."""

from __future__ import annotations

import math

import pytest
import torch

from diffcli.diffusion.denoiser import Denoiser
from diffcli.diffusion.gaussian import GaussianData, IdealObjectiveNetwork
from diffcli.diffusion.objectives import EDM, Continuous, Flow, objective_loss
from diffcli.diffusion.objectives.continuous import column, to_vp
from diffcli.diffusion.ode_likelihood import ode_log_likelihood
from diffcli.diffusion.samplers import (
    DDIM,
    DDPM,
    DPMSolverPP2M,
    DPMSolverPP2MSDE,
    DPMSolverPP3M,
    Euler,
    Heun,
    Restart,
    UniPC,
)

F64 = torch.float64
DATA = GaussianData(torch.tensor([1.0, -0.5, 0.0], dtype=F64),
                    torch.tensor([0.5, 1.0, 1.5], dtype=F64))
OBJECTIVES = {
    "edm": EDM(),
    "edm-sd1": EDM(sigma_data=1.0, p_mean=-0.5),
    "flow": Flow(),
    "flow-noise-shift3": Flow(target="noise", shift=3.0),
    "flow-gvp": Flow(interpolant="gvp", t_sampling="uniform"),
    "flow-vp": Flow(interpolant="vp"),
}


def IdealNet(objective: Continuous, data: GaussianData = DATA) -> IdealObjectiveNetwork:  # noqa: N802
    """The exact minimiser of ``objective``'s loss for Gaussian ``data``."""
    return IdealObjectiveNetwork(data, objective)


def ideal_denoiser(objective: Continuous) -> Denoiser:
    lattice = objective.lattice()
    return Denoiser(IdealNet(objective), lattice, objective=objective)


def ve_posterior_mean(xbar: torch.Tensor, sigma: float) -> torch.Tensor:
    s2 = DATA.std**2
    return (s2 * xbar + sigma**2 * DATA.mean) / (s2 + sigma**2)


def test_edm_coefficients_are_table_1_on_the_ve_sample():
    """On xbar = x0 + sigma eps, EDM's Table 1: the network sees xbar / sqrt(sigma^2 +
    sigma_data^2) and ln(sigma) / 4 (times time_scale), and D = c_skip xbar + c_out F."""
    edm = EDM(sigma_data=0.5, time_scale=1.0)
    sigma = torch.tensor([0.002, 0.3, 2.0, 80.0], dtype=F64)
    pre = edm.precondition(sigma)
    vp = (1 + sigma**2).sqrt()  # x = xbar / vp
    torch.testing.assert_close(pre.c_in / vp, 1 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(pre.c_skip / vp, 0.25 / (sigma**2 + 0.25))
    torch.testing.assert_close(pre.c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(pre.c_noise, sigma.log() / 4)
    weight = (sigma**2 + 0.25) / (sigma * 0.5) ** 2  # lambda(sigma): unit weight in F's units
    torch.testing.assert_close(weight * pre.c_out**2, torch.ones_like(sigma))


def test_rectified_flow_sees_the_interpolant_and_learns_eps_minus_x0():
    """Linear path, velocity target: the network input is (1 - t) x0 + t eps at time_scale t,
    the target eps - x0; with the noise target it is eps (Lipman et al. 2023; SD3)."""
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64)
    t = torch.tensor([0.01, 0.2, 0.5, 0.7, 0.9, 0.99], dtype=F64)
    for target, want in (("velocity", eps - x0), ("noise", eps)):
        flow = Flow(target=target)
        sigma = flow.sigma_of_t(t)
        x = to_vp(x0, eps, sigma)
        pre = flow.precondition(sigma)
        interpolant = (1 - t[:, None]) * x0 + t[:, None] * eps
        torch.testing.assert_close(column(pre.c_in, x) * x, interpolant)
        torch.testing.assert_close(pre.c_noise, 1000 * t)
        torch.testing.assert_close(flow.training_target(x0, x, pre), want)


@pytest.mark.parametrize("interpolant", ["gvp", "vp"])
def test_other_interpolants_learn_their_time_derivative(interpolant):
    """GVP and VP paths (SiT): the velocity target is alpha' x0 + s' eps, by finite differences
    of the path."""
    flow = Flow(interpolant=interpolant)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(4, 2, generator=g, dtype=F64), torch.randn(4, 2, generator=g, dtype=F64)
    t = torch.tensor([0.1, 0.4, 0.6, 0.95], dtype=F64)
    h = 1e-6
    a_hi, s_hi, _, _ = flow.path(t + h)
    a_lo, s_lo, _, _ = flow.path(t - h)
    velocity = ((a_hi - a_lo)[:, None] * x0 + (s_hi - s_lo)[:, None] * eps) / (2 * h)
    sigma = flow.sigma_of_t(t)
    x = to_vp(x0, eps, sigma)
    torch.testing.assert_close(flow.training_target(x0, x, flow.precondition(sigma)), velocity,
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(flow.t_of_sigma(sigma), t)


def test_the_shift_is_sd3s_time_shift():
    """shift s maps the linear path's t to s t / (1 + (s - 1) t) (Esser et al. 2024, Sec.
    5.3.2): for the same draws, the shifted sigma is s times the unshifted one; null shift is
    sqrt(H W) / base_resolution."""
    base, shifted = Flow(), Flow(shift=3.0)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    t = base.t_of_sigma(base.sample_sigma(1000, generator=g()))
    t3 = shifted.t_of_sigma(shifted.sample_sigma(1000, generator=g()))
    torch.testing.assert_close(t3, 3 * t / (1 + 2 * t))
    assert Flow(shift=None).for_images(1024, 1024).shift == 4.0
    assert Flow(shift=None).for_images(28, 28).shift == pytest.approx(28 / 256)
    with pytest.raises(ValueError, match="not images"):
        Flow(shift=None).lattice()


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_the_denoiser_of_the_ideal_network_is_the_exact_denoiser(name):
    """Between and on lattice points, D(xbar; sigma) through the objective's coefficients is
    E[x0 | xbar] (to the float32 precision of the network's time input, as in training)."""
    objective = OBJECTIVES[name]
    den = ideal_denoiser(objective)
    xbar = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=F64) * 3
    lattice_sigma = float(den.schedule.sigmas[417])
    for sigma in (0.02, 0.7, 5.0, lattice_sigma):  # inside every lattice
        torch.testing.assert_close(den.denoise(xbar, sigma), ve_posterior_mean(xbar, sigma),
                                   rtol=1e-5, atol=1e-6)  # the time input is float32


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_the_loss_at_the_ideal_network_is_its_closed_form_minimum(name):
    """E w(sigma) |F* - target|^2 = E w(sigma) Var[x0 | x] / c_out^2, Var[x0 | xbar] =
    s^2 sigma^2 / (s^2 + sigma^2): estimated on 40,000 draws at the very sigmas the loss draws.
    A network off the minimum scores higher. For EDM with sigma_data = s the minimum is 1 at
    every sigma."""
    objective = OBJECTIVES[name]
    n = 40_000
    x0 = DATA.sample(n, torch.Generator().manual_seed(3))
    loss = objective_loss(objective, IdealNet(objective), x0,
                          generator=torch.Generator().manual_seed(4))
    sigma = objective.sample_sigma(n, generator=torch.Generator().manual_seed(4))
    pre = objective.precondition(sigma)
    s2 = DATA.std**2
    var = s2 * sigma[:, None] ** 2 / (s2 + sigma[:, None] ** 2)  # (n, D)
    floor = (objective.loss_weight(sigma) * (var / pre.c_out[:, None] ** 2).mean(1)).mean()
    assert float(loss) == pytest.approx(float(floor), rel=0.03)
    worse = objective_loss(objective, lambda x, c: 1.1 * IdealNet(objective)(x, c), x0,
                           generator=torch.Generator().manual_seed(4))
    assert float(worse) > float(loss)


def test_edm_loss_minimum_is_one_when_sigma_data_is_the_data_std():
    data = GaussianData(torch.zeros(4, dtype=F64), torch.full((4,), 0.5, dtype=F64))
    edm = EDM()
    x0 = data.sample(40_000, torch.Generator().manual_seed(5))
    loss = objective_loss(edm, IdealNet(edm, data), x0, generator=torch.Generator().manual_seed(6))
    assert float(loss) == pytest.approx(1.0, rel=0.02)


SAMPLERS = {
    "ddim": DDIM(steps=150),  # first order: 50 steps shrink the spread by ~5%
    "dpmpp_2m": DPMSolverPP2M(steps=30),
    "dpmpp_3m": DPMSolverPP3M(steps=30),
    "dpmpp_2m_sde": DPMSolverPP2MSDE(steps=60),
    "euler": Euler(steps=150),
    "heun": Heun(steps=30),
    "unipc": UniPC(steps=30),
    "restart": Restart(steps=40),
    "ddpm": DDPM(steps=200),
}


@pytest.mark.parametrize("sampler_name", sorted(SAMPLERS))
@pytest.mark.parametrize("name", ["edm", "flow", "flow-gvp", "flow-noise-shift3"])
def test_every_sampler_on_every_objective_reproduces_the_data(name, sampler_name):
    """The ideal network of each objective, sampled by each step rule on the objective's
    lattice, gives the data distribution: mean within 4 standard errors (+0.02), std within
    5%."""
    den = ideal_denoiser(OBJECTIVES[name])
    n = 4000
    g = torch.Generator().manual_seed(7)
    x = SAMPLERS[sampler_name].sample(den, torch.randn(n, 3, generator=g, dtype=F64),
                                      generator=g)
    se = DATA.std / math.sqrt(n)
    assert ((x.mean(0) - DATA.mean).abs() < 4 * se + 0.02).all(), x.mean(0)
    assert ((x.std(0) / DATA.std - 1).abs() < 0.05).all(), x.std(0)


@pytest.mark.parametrize("name", ["edm", "flow", "flow-vp"])
def test_ode_likelihood_is_the_exact_log_density(name):
    """The probability-flow ODE of the ideal network on the objective's lattice gives the
    exact log-density of the flow (:meth:`GaussianData.flow_log_prob`)."""
    den = ideal_denoiser(OBJECTIVES[name])
    x0 = DATA.sample(8, torch.Generator().manual_seed(8))
    lo, hi = float(den.schedule.sigmas[0]), float(den.schedule.sigmas[-1])
    out = ode_log_likelihood(den, x0, exact_trace=True, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(-out["nats"], DATA.flow_log_prob(x0, lo, hi), rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("bad, message", [
    (lambda: EDM(sigma_data=0), "sigma_data must be a positive number"),
    (lambda: EDM(sigma_min=5, sigma_max=1), "sigma_min"),
    (lambda: Flow(interpolant="cubic"), "interpolant must be one of linear, gvp, vp"),
    (lambda: Flow(target="x0"), "target must be one of velocity, noise"),
    (lambda: Flow(shift=-1.0), "shift must be a positive number"),
    (lambda: Flow(t_sampling="beta"), "t_sampling"),
])
def test_bad_settings_are_one_line_naming_the_key(bad, message):
    with pytest.raises(ValueError, match=message):
        bad()


class CouplingVelocity:
    """The exact minimiser of the linear path's loss under the deterministic coupling x0 = A z
    (a linear map): x_t = M_t z with M_t = (1 - t) A + t I, so z = M_t^-1 x_t is known from x_t
    and the ideal velocity is (I - A) M_t^-1 x_t, the ideal noise M_t^-1 x_t. Called as the
    network on (x_t (B, D), time_scale t (B,))."""

    def __init__(self, flow: Flow, a: torch.Tensor) -> None:
        self.flow, self.a = flow, a

    def __call__(self, x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        t = (c_noise.to(F64) / self.flow.time_scale)[:, None, None]
        eye = torch.eye(len(self.a), dtype=F64)
        z = torch.linalg.solve((1 - t) * self.a + t * eye, x_in.to(F64))  # (B, D)
        return z if self.flow.target == "noise" else z - (self.a @ z[..., None])[..., 0]


@pytest.mark.parametrize("target", ["velocity", "noise"])
def test_the_loss_with_paired_noise_is_zero_at_the_couplings_velocity_field(target):
    """Reflow's loss (Liu et al. 2023, eq. 1 on pairs): with ``noise=`` the coupling's own z,
    the ideal field of the coupling x0 = A z scores 0 (to the float32 time input); the same
    network on independent noise (another coupling) scores clearly above it; noise shaped
    unlike the data is one line."""
    flow = Flow(target=target, t_sampling="uniform")
    a = torch.tensor([[2.0, 0.5], [0.0, 0.5]], dtype=F64)  # M_t invertible for every t
    z = torch.randn(4096, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    x0 = z @ a.T
    net = CouplingVelocity(flow, a)
    paired = objective_loss(flow, net, x0, noise=z, generator=torch.Generator().manual_seed(10))
    assert float(paired) < 1e-12  # the time input is float32, as in training
    independent = objective_loss(flow, net, x0, generator=torch.Generator().manual_seed(10))
    assert float(independent) > 0.1
    with pytest.raises(ValueError, match="noise of shape"):
        objective_loss(flow, net, x0, noise=z[:, :1])
