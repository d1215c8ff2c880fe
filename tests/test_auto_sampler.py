"""sampler=auto (issue 34): the table it reads, the row it picks for a number of steps, and
what `diffcli sample` says and records about the pick."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import copy_points_run
from test_cli import run_here

from diffcli.diffusion.gaussian import IdealNetwork, two_d_mixture
from diffcli.diffusion.process import Parameterization
from diffcli.diffusion.samplers import Auto, Denoiser, DPMSolverPP2M, UniPC
from diffcli.diffusion.samplers.auto import (
    CANDIDATES,
    OBJECTIVES,
    TABLE,
    Choice,
    choose,
    read_table,
)
from diffcli.diffusion.schedules import linear_schedule

ROWS = {"ddpm": [Choice(5, "unipc", {"grid": "logsnr"}),
                 Choice(10, "dpmpp_2m", {"grid": "trailing"}),
                 Choice(20, "dpmpp_3m", {"grid": "logsnr", "lower_order_final": False})]}


@pytest.mark.parametrize("steps, nfe", [(1, 5), (4, 5), (5, 5), (9, 5), (10, 10), (19, 10),
                                        (20, 20), (1000, 20)])
def test_the_row_of_the_largest_ranked_nfe_at_most_the_steps(steps, nfe):
    assert choose(ROWS, "ddpm", steps).nfe == nfe


def test_a_missing_objective_or_an_unknown_sampler_is_one_line(tmp_path: Path):
    with pytest.raises(ValueError, match="no measurements for objective=flow"):
        choose(ROWS, "flow", 10)
    bad = tmp_path / "table.yaml"
    bad.write_text("objectives:\n  ddpm:\n  - {nfe: 5, sampler: heun, options: {}}\n")
    with pytest.raises(ValueError, match="names sampler 'heun'"):
        read_table(bad)


def test_the_packaged_table_covers_every_objective_and_builds():
    table = read_table(TABLE)
    assert set(table) == set(OBJECTIVES)
    for objective, rows in table.items():
        assert [c.nfe for c in rows] == sorted({c.nfe for c in rows}), objective
        for c in rows:
            assert c.sampler in CANDIDATES
            assert len(c.build(7).timesteps(linear_schedule())) == 7


def test_auto_samples_exactly_what_it_picks(tmp_path: Path):
    table = tmp_path / "table.yaml"
    table.write_text("objectives:\n  ddpm:\n"
                     "  - {nfe: 5, sampler: unipc, options: {grid: logsnr, order: 3}}\n"
                     "  - {nfe: 10, sampler: dpmpp_2m, options: {grid: trailing}}\n")
    sched = linear_schedule()
    den = Denoiser(IdealNetwork(two_d_mixture(), sched, Parameterization.EPS), sched,
                   Parameterization.EPS)
    noise = torch.randn(50, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    auto = Auto(steps=6, table=str(table))
    assert auto.pick("ddpm") == UniPC(steps=6, grid="logsnr", order=3)
    assert auto.describe("ddpm") == "auto -> unipc, logsnr, order=3, 6 steps"
    torch.testing.assert_close(auto.sample(den, noise),
                               UniPC(steps=6, grid="logsnr", order=3).sample(den, noise))
    assert Auto(steps=12, table=str(table)).pick("ddpm") == DPMSolverPP2M(steps=12,
                                                                          grid="trailing")


def test_diffcli_sample_says_what_auto_picked(points_checkpoint: Path, tmp_path: Path):
    """The default sampler of `diffcli sample` is auto: one line names the pick, meta.json
    keeps it, and the folder is auto-<steps>."""
    ckpt = copy_points_run(points_checkpoint, tmp_path)
    proc = run_here(tmp_path, "sample", f"ckpt={ckpt}", "steps=5", "n=8")
    pick = choose(read_table(TABLE), "ddpm", 5)
    line = f"auto -> {pick.describe(5)}"
    assert line in proc.stderr
    meta = json.loads((ckpt.parent.parent / "samples" / "auto-5" / "meta.json").read_text())
    assert meta["sampler"] == "auto" and meta["sampler_notes"][0] == line
    bad = run_here(tmp_path, "sample", f"ckpt={ckpt}", "sampler.grid=karras", ok=False)
    assert bad.returncode != 0 and "sampler.grid" in bad.stderr  # auto has no grid key
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
