"""Restart sampling (Xu et al. 2023) on Gaussian data, where the ideal denoiser is exact and the
sampler is affine in its inputs (x_T and each cycle's restart noise), so its output moments
can be read off by probing."""

import math

import pytest
import torch
from omegaconf import OmegaConf
from test_samplers import DATA, F64, _denoiser, _mc

from diffcli.components import build, conf_dir
from diffcli.diffusion.gaussian import IdealNetwork
from diffcli.diffusion.process import Parameterization
from diffcli.diffusion.samplers import Denoiser, Heun, Restart
from diffcli.diffusion.samplers import restart as restart_module
from diffcli.diffusion.schedules import cosine_schedule, linear_schedule

CONF = conf_dir() / "sampler" / "restart.yaml"


def _exact_moments(sampler, den, monkeypatch):
    """Exact output (mean, std) per dimension for x_T ~ N(0, I): probe the affine map
    out = c + a z + sum_k b_k w_k with unit inputs, the restart noise w_k of cycle k fed in
    place of :func:`randn_like`; std = sqrt(a^2 + sum_k b_k^2)."""
    k = sampler.restart_k
    rows = 2 + k
    z = torch.zeros(rows, 3, dtype=F64)
    z[1] = 1.0
    draws = []
    for cycle in range(k):
        w = torch.zeros(rows, 3, dtype=F64)
        w[2 + cycle] = 1.0
        draws.append(w)
    monkeypatch.setattr(restart_module, "randn_like", lambda x, g: draws.pop(0))
    out = sampler.sample(den, z)
    assert not draws  # one draw per cycle
    c = out[0]
    var = sum((out[i] - c) ** 2 for i in range(1, rows))
    return c, var.sqrt()


@pytest.mark.parametrize("make_schedule", [linear_schedule, cosine_schedule])
def test_restart_reproduces_the_data_and_beats_heun_on_the_same_grid(make_schedule, monkeypatch):
    den = _denoiser(make_schedule(), "eps")
    err = {}
    for k in (0, 2, 6):
        mean, std = _exact_moments(Restart(steps=18, restart_k=k), den, monkeypatch)
        # the grid starts at sigma_max = 80, not sigma_T: about |mean| / 80 of bias
        assert ((mean - DATA.mean).abs() < 0.02).all(), (k, mean)
        err[k] = (std / DATA.std - 1).abs().max().item()
    # measured (linear and cosine): Heun's 18 steps 4.7% / 4.9%; K = 2 (47 NFE) 3.3% / 3.4%;
    # K = 6 (71 NFE) 2.7% / 2.9%: each cycle contracts the main pass's accumulated error. (At
    # equal NFE plain Heun is better here, 24 steps = 47 NFE: 2.5% / 2.6%; the exact denoiser
    # has no learned-score error, which is what restarts are for.)
    assert err[6] < err[2] < err[0] and err[2] < 0.045, err
    monkeypatch.undo()
    # the real noise path gives those moments (Monte Carlo, 4 standard errors)
    exact_mean, exact_std = _exact_moments(Restart(steps=18), den, monkeypatch)
    monkeypatch.undo()
    mean, std = _mc(Restart(steps=18), den, n=10_000, seed=5)
    assert ((mean - exact_mean).abs() < 4 * exact_std / math.sqrt(10_000)).all(), mean
    assert ((std / exact_std - 1).abs() < 4 / math.sqrt(2 * 10_000)).all(), std


@pytest.mark.parametrize("make_schedule", [linear_schedule, cosine_schedule])
@pytest.mark.parametrize("steps", [1, 5, 18])
def test_no_restarts_is_exactly_heun(make_schedule, steps):
    den = _denoiser(make_schedule(), "v")
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    heun = Heun(steps=steps).sample(den, noise)
    assert torch.equal(Restart(steps=steps, restart_k=0).sample(den, noise), heun)
    # t_max below every grid level: no restart interval on the grid, so no restarts either
    assert torch.equal(Restart(steps=steps, t_min=1e-4, t_max=2e-4).sample(den, noise), heun)


def test_samples_depend_only_on_their_own_seed():
    den = _denoiser(cosine_schedule(), "eps")
    sampler = Restart(steps=6, restart_k=3, restart_steps=2)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    seeds = [3, 1, 4, 1]
    noise = torch.randn(4, 3, generator=torch.Generator().manual_seed(9), dtype=F64)
    noise[3] = noise[1]
    batch = sampler.sample(den, noise, generator=gens(seeds))
    alone = torch.cat([sampler.sample(den, noise[i:i + 1], generator=gens(seeds[i:i + 1]))
                       for i in range(4)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=1e-12)
    torch.testing.assert_close(batch[1], batch[3], rtol=0, atol=1e-12)  # same seed and x_T
    other = sampler.sample(den, noise, generator=gens([5, 6, 7, 8]))
    assert not torch.allclose(batch, other)  # the restart noise is really drawn


@pytest.mark.parametrize("options, expected", [
    ({}, 2 * 18 - 1 + 2 * 2 * 3),  # the defaults: 47
    ({"steps": 5, "restart_k": 1, "restart_steps": 2, "max_ratio": None}, 2 * 5 - 1 + 2 * 1 * 2),
    # the Karras grid 80 -> 0.01 in 5 steps shrinks sigma more than 10-fold twice: Euler steps
    ({"steps": 5, "restart_k": 1, "restart_steps": 2}, 2 * 5 - 1 - 2 + 2 * 1 * 2),
    ({"steps": 10, "restart_k": 0}, 2 * 10 - 1),
    ({"steps": 1}, 1),  # the grid is [80, 0]: no level in the restart interval
    ({"steps": 8, "grid": "trailing", "restart_k": 4, "restart_steps": 1, "max_ratio": None},
     2 * 8 - 1 + 2 * 4),
    ({"steps": 8, "grid": "trailing", "restart_k": 4, "restart_steps": 1}, 2 * 8 - 1 - 1 + 2 * 4),
])
def test_nfe_counts_the_network_calls(options, expected):
    sched = cosine_schedule()
    calls = []
    ideal = IdealNetwork(DATA, sched, Parameterization.EPS)
    den = Denoiser(lambda x, t: calls.append(1) or ideal(x, t), sched, Parameterization.EPS)
    sampler = Restart(**options)
    steps = []
    sampler.sample(den, torch.zeros(2, 3, dtype=F64), generator=torch.Generator(),
                   callback=steps.append)
    assert len(calls) == sampler.nfe(sched) == expected
    assert len(steps) == len(sampler.timesteps(sched))  # one progress tick per main step


def test_restart_interval_snaps_to_the_grid():
    sched = linear_schedule()
    sampler = Restart()
    sigmas = sampler.make_grid(sched).sigmas
    j = sampler.restart_index(sigmas)
    assert min(abs(s - 0.06) for s in sigmas[:-1]) == abs(sigmas[j] - 0.06)
    levels = sampler.restart_sigmas(sched)
    assert len(levels) == 3 + 1 and levels[0] == 0.30 and levels[-1] == sigmas[j]
    assert all(a > b for a, b in zip(levels, levels[1:], strict=False))


@pytest.mark.parametrize("steps", [1, 2, 3, 200])
def test_finite_at_small_and_large_step_counts(steps):
    den = _denoiser(linear_schedule(), "x0")
    noise = torch.randn(64, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    x = Restart(steps=steps).sample(den, noise, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(x).all()
    for grid in ("trailing", "logsnr"):
        x = Restart(steps=steps, grid=grid, restart_k=1).sample(den, noise,
                                                               generator=torch.Generator())
        assert torch.isfinite(x).all(), grid


def test_built_from_its_config_and_validated():
    node = OmegaConf.to_container(OmegaConf.load(CONF))
    assert build("sampler", node) == Restart()
    assert build("sampler", node, steps=7, restart_k=1) == Restart(steps=7, restart_k=1)
    assert set(node) - {"_target_"} <= set(Restart.__dataclass_fields__)
    for bad, option in [({"restart_k": -1}, "restart_k"), ({"restart_k": 1.5}, "restart_k"),
                        ({"restart_steps": 0}, "restart_steps"), ({"t_min": 0.0}, "t_min"),
                        ({"t_max": float("nan")}, "t_max"),
                        ({"t_min": 0.5, "t_max": 0.3}, "t_min")]:
        with pytest.raises(ValueError, match=option) as info:
            Restart(**bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="t_max"):
        Restart(t_max=1e6).sample(_denoiser(linear_schedule(), "eps"), torch.zeros(1, 3))


@pytest.mark.parametrize("make_schedule", [linear_schedule, cosine_schedule])
def test_restart_converges_at_second_order(make_schedule, monkeypatch):
    """Its passes are Heun steps, so the error of the exact output std (read off the affine
    map) falls about 4x as the steps double, with restarts on as off."""
    den = _denoiser(make_schedule(), "eps")
    err = {}
    for steps in (9, 18, 36):
        _, std = _exact_moments(Restart(steps=steps, restart_k=2), den, monkeypatch)
        monkeypatch.undo()
        err[steps] = (std / DATA.std - 1).abs().max().item()
    # measured, K = 2: linear 16.5%, 3.3%, 0.90%; cosine 17.4%, 3.4%, 0.90% (9, 18, 36 steps)
    assert err[36] < err[18] < err[9], err
    assert err[9] / err[18] > 3 and err[18] / err[36] > 3, err
