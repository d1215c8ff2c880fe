"""The sampling grids (diffcli.diffusion.grids) against their defining equations, and the
sampler options that choose them."""

import math
from itertools import pairwise

import pytest
import torch
from omegaconf import OmegaConf

from diffcli.components import build, conf_dir
from diffcli.diffusion import grids
from diffcli.diffusion.grids import Grid, GridKind, make_grid
from diffcli.diffusion.samplers import (
    DDIM,
    DDPM,
    DPMSolverPP2M,
    DPMSolverPP2MSDE,
    DPMSolverPP3M,
    Euler,
    Heun,
)
from diffcli.diffusion.schedules import cosine_schedule, linear_schedule
from diffcli.errors import DiffcliError

SAMPLERS = (DDPM, DDIM, DPMSolverPP2M, DPMSolverPP3M, DPMSolverPP2MSDE, Euler, Heun)
SAMPLER_CONFS = conf_dir() / "sampler"


def timestep_sequence_before_grids(T, steps, spacing):
    """The timestep sequences exactly as diffcli computed them before grids.py (the reference
    for 'the default grids did not change')."""
    if spacing == "leading":
        ts = [i * (T // steps) for i in range(steps)]
    elif spacing == "trailing":
        ts = [round(T - i * T / steps) - 1 for i in range(steps)]
    else:
        ts = [round(i * (T - 1) / max(steps - 1, 1)) for i in range(steps)]
    return sorted(set(ts), reverse=True)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timestep_grids_equal_the_previous_sequences(spacing):
    fn = getattr(grids, spacing)
    for T in (7, 100, 1000):
        for steps in sorted({1, 2, 3, 5, T // 3, T - 1, T} - {0}):
            ts = fn(T, steps)
            assert ts == timestep_sequence_before_grids(T, steps, spacing), (T, steps)
            assert ts == sorted(set(ts), reverse=True) and 0 <= ts[-1] and ts[0] <= T - 1
    assert grids.trailing(1000, 50)[0] == 999 and grids.linspace(1000, 50)[::49] == [999, 0]
    assert grids.leading(1000, 50)[0] == 980 and grids.leading(1000, 50)[-1] == 0
    with pytest.raises(ValueError, match="steps"):
        fn(1000, 1001)


def test_karras_grid_is_eq_5():
    smin, smax, n, rho = 0.002, 80.0, 18, 7.0
    sig = grids.karras(smin, smax, n, rho)
    i = torch.arange(n, dtype=torch.float64)
    eq5 = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
    torch.testing.assert_close(torch.tensor(sig[:-1], dtype=torch.float64), eq5,
                               rtol=1e-14, atol=0)
    assert len(sig) == n + 1 and sig[-1] == 0.0 and all(a > b for a, b in pairwise(sig))
    assert sig[0] == pytest.approx(smax, rel=1e-14) and sig[-2] == pytest.approx(smin, rel=1e-12)
    lin = grids.karras(1.0, 3.0, 5, rho=1.0)  # rho = 1: uniform in sigma
    assert lin == pytest.approx([3.0, 2.5, 2.0, 1.5, 1.0, 0.0], rel=1e-14)
    assert grids.karras(0.1, 10.0, 1) == pytest.approx([10.0, 0.0], rel=1e-14)


def test_logsnr_grid_is_uniform_in_log_sigma():
    sig = grids.logsnr(0.01, 100.0, 5)
    assert sig == pytest.approx([100.0, 10.0, 1.0, 0.1, 0.01, 0.0], rel=1e-12)
    sig = torch.tensor(grids.logsnr(0.0123, 157.0, 30)[:-1], dtype=torch.float64)
    steps = torch.diff(torch.log(sig))
    torch.testing.assert_close(steps, steps.mean().expand(29), rtol=1e-9, atol=0)


@pytest.mark.parametrize("kind", ["leading", "trailing", "linspace", "uniform"])
def test_timestep_grid_uses_the_schedule_tables_exactly(kind):
    sched = cosine_schedule()
    grid = make_grid(sched, kind, 25)
    ts = timestep_sequence_before_grids(1000, 25, "linspace" if kind == "uniform" else kind)
    assert list(grid.timesteps) == ts and len(grid) == 25 and grid.on_lattice
    assert all(type(t) is int for t in grid.timesteps)
    assert list(grid.sigmas) == [float(sched.sigmas[t]) for t in ts] + [0.0]
    assert list(grid.alphas_cumprod) == [float(sched.alphas_cumprod[t]) for t in ts] + [1.0]
    assert len(make_grid(sched, kind)) == 1000  # steps=None: every training timestep


@pytest.mark.parametrize("kind", ["karras", "logsnr"])
def test_sigma_grids_span_the_schedule_and_interpolate_timesteps(kind):
    sched = linear_schedule()
    lo, hi = float(sched.sigmas[0]), float(sched.sigmas[-1])
    grid = make_grid(sched, kind, 12)
    assert len(grid.sigmas) == 13 and grid.sigmas[-1] == 0.0 and grid.alphas_cumprod[-1] == 1.0
    assert grid.sigmas[0] == pytest.approx(hi, rel=1e-12)
    assert grid.sigmas[-2] == pytest.approx(lo, rel=1e-12)
    assert all(a > b for a, b in pairwise(grid.sigmas))
    assert all(a > b for a, b in pairwise(grid.timesteps))
    inner = grid.timesteps[1:-1]
    assert not grid.on_lattice and all(isinstance(t, float) for t in inner)
    for t, s, ab in zip(grid.timesteps, grid.sigmas[:-1], grid.alphas_cumprod[:-1],
                        strict=True):
        assert t == pytest.approx(sched.sigma_to_t(s), abs=1e-9)
        assert ab == pytest.approx(1 / (1 + s**2), rel=1e-12)
        t64 = torch.tensor([float(t)], dtype=torch.float64)
        assert float(sched.alpha_bar_at(t64)) == pytest.approx(ab, rel=1e-9)
    # the sigma range is clipped to the schedule's, and may be narrowed
    clipped = make_grid(sched, kind, 12, sigma_min=1e-6, sigma_max=1e6)
    assert clipped.sigmas == pytest.approx(grid.sigmas, rel=1e-12)
    narrow = make_grid(sched, kind, 12, sigma_min=0.1, sigma_max=80.0)
    assert narrow.sigmas[0] == pytest.approx(80.0) and narrow.sigmas[-2] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="sigma_min"):
        make_grid(sched, kind, 12, sigma_min=200.0, sigma_max=300.0)


def test_custom_grids():
    sched = linear_schedule()
    grid = make_grid(sched, "custom", custom_timesteps=[999, 500.5, 250, 0])
    assert grid.timesteps == (999, 500.5, 250, 0) and len(grid) == 4
    assert grid.sigmas[0] == float(sched.sigmas[999]) and grid.sigmas[-1] == 0.0
    assert grid.sigmas[1] == pytest.approx(math.sqrt(sched.sigmas[500] * sched.sigmas[501]))
    assert grid.timesteps[1] == pytest.approx(500.5, abs=1e-9)
    sig = make_grid(sched, "custom", custom_sigmas=[80.0, 1.0, 0.1])
    assert sig.sigmas == (80.0, 1.0, 0.1, 0.0) and len(sig) == 3
    assert make_grid(sched, "custom", custom_sigmas=[80.0, 1.0, 0.1, 0.0]) == sig
    on_lattice = [float(sched.sigmas[t]) for t in (900, 10)]
    assert make_grid(sched, "custom", custom_sigmas=on_lattice).timesteps == (900, 10)
    bad = [({"custom_timesteps": [5, 10]}, "decreasing"), ({"custom_timesteps": []}, "empty"),
           ({"custom_timesteps": [1000, 5]}, r"\[0, 999\]"),
           ({"custom_sigmas": [1.0, -1.0]}, "positive"), ({"custom_sigmas": [500.0, 1.0]}, "range"),
           ({}, "exactly one"), ({"custom_timesteps": [9], "custom_sigmas": [1.0]}, "exactly one")]
    for kwargs, match in bad:
        with pytest.raises(ValueError, match=match):
            make_grid(sched, "custom", **kwargs)


def test_grid_round_trip_between_timesteps_and_sigmas():
    sched = cosine_schedule()
    ts = [998.25, 600.0, 123.5, 0.75]
    by_t = Grid.from_timesteps(sched, ts)
    assert by_t.timesteps[1] == 600 and type(by_t.timesteps[1]) is int
    torch.testing.assert_close(torch.tensor(by_t.timesteps, dtype=torch.float64),
                               torch.tensor(ts, dtype=torch.float64), rtol=0, atol=1e-9)
    assert Grid.from_sigmas(sched, by_t.sigmas) == by_t


def test_samplers_default_to_their_previous_grids():
    sched = linear_schedule()
    for sampler, kind in [(DDPM(), "trailing"), (DDIM(), "trailing"), (DPMSolverPP2M(), "trailing"),
                          (DPMSolverPP3M(), "trailing"), (DPMSolverPP2MSDE(), "trailing"),
                          (Euler(), "karras"), (Heun(), "karras")]:
        assert sampler.grid is GridKind(kind)
    assert DDIM().timesteps(sched) == timestep_sequence_before_grids(1000, 50, "trailing")
    assert len(DDPM().timesteps(sched)) == 1000
    top = min(80.0, float(sched.sigmas[-1]))
    assert Heun().sigmas(sched) == grids.karras(float(sched.sigmas[0]), top, 18, 7.0)
    # reporting: the exact (real) timesteps of the Karras grid, no rounding
    ts = Euler(steps=10).timesteps(sched)
    assert len(ts) == 10 and ts == [sched.sigma_to_t(s) for s in Euler(steps=10).sigmas(sched)[:-1]]
    # the old option name still works, and is folded into grid
    assert DDIM(spacing="leading") == DDIM(grid="leading")
    assert DDIM(spacing="leading").timesteps(sched) == grids.leading(1000, 50)


def test_any_sampler_takes_any_grid_where_the_maths_allows():
    sched = linear_schedule(100)
    x = torch.zeros(2, 3, dtype=torch.float64)
    den_calls = []

    def net(x_t, t):
        den_calls.append(t)
        return torch.zeros_like(x_t)

    from diffcli.diffusion.samplers import Denoiser

    den = Denoiser(net, sched, "eps")
    for cls in SAMPLERS:
        for kind in ("leading", "trailing", "linspace", "uniform", "karras", "logsnr"):
            if cls is DDPM and kind in ("karras", "logsnr"):
                continue
            out = cls(steps=4, grid=kind).sample(den, x, generator=torch.Generator())
            assert torch.isfinite(out).all(), (cls, kind)
        grid = DDIM(grid="custom", custom_timesteps=[99, 50, 0])
        assert grid.steps == 3 and grid.timesteps(sched) == [99, 50, 0]


def _one_line_error(make, option):
    with pytest.raises(ValueError) as info:
        make()
    message = str(info.value)
    assert option in message and "\n" not in message, message


def test_sampler_options_are_validated():
    sched = linear_schedule()
    _one_line_error(lambda: DDIM(steps=0), "steps")
    _one_line_error(lambda: DDIM(steps=2.5), "steps")
    _one_line_error(lambda: DDIM(eta=-0.1), "eta")
    _one_line_error(lambda: Euler(rho=0), "rho")
    _one_line_error(lambda: Euler(sigma_max=-1.0), "sigma_max")
    _one_line_error(lambda: Euler(sigma_min=10.0, sigma_max=1.0), "sigma_min")
    _one_line_error(lambda: DDIM(grid="cosine"), "grid")
    _one_line_error(lambda: DDIM(spacing="karras"), "spacing")
    _one_line_error(lambda: DDIM(custom_sigmas=[1.0, 0.5]), "custom_sigmas")
    _one_line_error(lambda: DDIM(grid="custom"), "custom_timesteps")
    _one_line_error(lambda: DDIM(grid="custom", custom_timesteps=[1, 2]), "custom_timesteps")
    _one_line_error(lambda: DDIM(dynamic_threshold=1.5), "dynamic_threshold")
    _one_line_error(lambda: Heun(s_churn=-1.0), "s_churn")
    _one_line_error(lambda: Heun(s_tmin=5.0, s_tmax=1.0), "s_tmin")
    _one_line_error(lambda: DDPM(variance="beta_hat"), "variance")
    _one_line_error(lambda: DDPM(grid="karras"), "grid=karras")
    _one_line_error(lambda: DDPM(grid="custom", custom_timesteps=[999, 500.5, 0]),
                    "custom_timesteps")
    _one_line_error(lambda: DDPM(grid="custom", custom_sigmas=[80.0, 1.0]).timesteps(sched),
                    "custom_sigmas")
    _one_line_error(lambda: DDIM(steps=1001).timesteps(sched), "steps")


def test_shipped_sampler_configs_build_and_take_grid_overrides():
    for path in sorted(SAMPLER_CONFS.glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        if path.stem == "auto":  # it picks the grid: a grid override is refused in one line
            assert len(build("sampler", node).timesteps(linear_schedule())) == node["steps"]
            with pytest.raises(DiffcliError, match="picks the grid itself"):
                build("sampler", node, grid="karras")
            continue
        assert node["grid"] in {g.value for g in GridKind}, path
        sampler = build("sampler", node)
        assert len(sampler.timesteps(linear_schedule())) == sampler.steps or sampler.steps is None
        if not isinstance(sampler, DDPM):
            karras = build("sampler", node, grid="karras", rho=5.0)
            assert karras.grid is GridKind.KARRAS and len(karras.make_grid(cosine_schedule())) \
                == karras.steps
    dpm = build("sampler", {"_target_": "diffcli.diffusion.samplers.dpm_solver.DPMSolverPP2M",
                            "grid": "custom", "custom_sigmas": [80, 8, 0.8, 0.08]})
    assert dpm.steps == 4 and dpm.sigmas(linear_schedule()) == [80.0, 8.0, 0.8, 0.08, 0.0]
