"""Training at a wall-clock budget: the power-function EMA (Karras et al. 2024), the cosine LR
that decays over ``trainer.max_time``, and ``max_steps`` lifted when a time limit is given."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Timer
from omegaconf import OmegaConf
from test_cli import TINY_UNET, run_here

from diffcli.cli.resolvers import register_resolvers, steps_unless_timed
from diffcli.lit.ema import (
    check_ema,
    ema_decay_for,
    gamma_of_sigma_rel,
    power_ema_decay,
    sigma_rel_of_gamma,
)
from diffcli.lit.module import update_ema
from diffcli.lit.schedulers import run_progress, warmup_cosine


def test_sigma_rel_and_gamma_match_edm2():
    """EDM2 (Karras et al. 2024, Sec. 3.1) pairs sigma_rel 0.05 with gamma 16.97 and 0.10
    with 6.94; the inverse is exact to the bisection's precision."""
    assert gamma_of_sigma_rel(0.05) == pytest.approx(16.97, abs=0.01)
    assert gamma_of_sigma_rel(0.10) == pytest.approx(6.94, abs=0.01)
    for s in (0.01, 0.05, 0.1, 0.2, 0.28):
        assert sigma_rel_of_gamma(gamma_of_sigma_rel(s)) == pytest.approx(s, rel=1e-9)
    for bad in (0.0, -0.1, 0.3, 1.0):
        with pytest.raises(ValueError, match="ema_sigma_rel"):
            check_ema(None, bad)


@pytest.mark.parametrize("steps", [1, 7, 300])
def test_power_ema_averages_with_weights_t_to_the_gamma(steps: int):
    """After T updates e_T = sum_t w_t p_t with w_t = (t^(g+1) - (t-1)^(g+1)) / T^(g+1)
    (the product of (1 - 1/s)^(g+1) over s > t telescopes): the EDM2 profile ~ t^g."""
    gamma = gamma_of_sigma_rel(0.05)
    net, ema = torch.nn.Linear(1, 1, bias=False), torch.nn.Linear(1, 1, bias=False)
    values = torch.randn(steps, dtype=torch.float64)
    for step in range(steps):  # the module's call: the decay after `step` optimizer steps
        net.weight.data.fill_(float(values[step]))
        update_ema(ema, net, ema_decay_for(step, 0.995, True, sigma_rel=0.05))
    t = torch.arange(1, steps + 1, dtype=torch.float64)
    w = (t ** (gamma + 1) - (t - 1) ** (gamma + 1)) / steps ** (gamma + 1)
    assert float(w.sum()) == pytest.approx(1.0)
    expected = float((w * values).sum())
    assert float(ema.weight.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert power_ema_decay(1, gamma) == 0.0  # the first update copies the weights


def test_power_ema_width_scales_with_the_run():
    """The weights' standard deviation over t / T is sigma_rel for any long run (EDM2 Eq. 3),
    where a constant decay's window is fixed in steps."""
    gamma = gamma_of_sigma_rel(0.05)
    for steps in (2_000, 20_000):
        t = torch.arange(1, steps + 1, dtype=torch.float64)
        w = (t ** (gamma + 1) - (t - 1) ** (gamma + 1)) / steps ** (gamma + 1)
        u = t / steps
        std = math.sqrt(float((w * u**2).sum() - (w * u).sum() ** 2))
        assert std == pytest.approx(0.05, rel=0.01)


def test_cosine_over_a_time_budget_is_continuous_and_ends_at_min_ratio():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    done = {"f": 0.0}
    sched = warmup_cosine(opt, warmup_steps=10, total_steps=-1, min_ratio=0.1,
                          progress=lambda step: done["f"])
    factor = sched.lr_lambdas[0]
    assert factor(0) == pytest.approx(0.1)  # warm-up ramp x cos(0)
    done["f"] = 0.5
    assert factor(10) == pytest.approx(0.1 + 0.9 * 0.5)
    assert factor(9) == pytest.approx(factor(10))  # no jump where the warm-up ends
    done["f"] = 1.0
    assert factor(10_000) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="progress"):
        warmup_cosine(opt, warmup_steps=0, total_steps=-1)


def test_run_progress_counts_time_and_steps():
    timer = Timer(duration="00:00:01:40")  # 100 s
    timer.time_elapsed = lambda stage="train": 25.0
    trainer = SimpleNamespace(estimated_stepping_batches=float("inf"), callbacks=[timer])
    assert run_progress(trainer, 10) == pytest.approx(0.25)
    trainer.estimated_stepping_batches = 20  # both limits: whichever is nearer its end
    assert run_progress(trainer, 10) == pytest.approx(0.5)
    assert run_progress(SimpleNamespace(estimated_stepping_batches=20, callbacks=[]), 40) == 1.0


def test_max_time_lifts_the_step_limit():
    register_resolvers()
    assert steps_unless_timed(1000, None) == 1000
    assert steps_unless_timed(1000, "00:00:15:00") == -1
    cfg = OmegaConf.create({"dataset": {"train_steps": 1000}, "trainer": {
        "max_time": "00:00:15:00",
        "max_steps": "${diffcli.steps_unless_timed:${dataset.train_steps},${trainer.max_time}}"}})
    assert cfg.trainer.max_steps == -1
    cfg.trainer.max_time = None
    assert cfg.trainer.max_steps == 1000


def test_a_timed_run_trains_until_its_budget_with_the_lr_decayed(tmp_path: Path):
    """`trainer.max_time` alone: no step limit, and the last logged LR is near the cosine's end."""
    run_here(tmp_path, "train", *TINY_UNET, "trainer.max_time=00:00:00:04", "logger=csv",
             "lr_scheduler.warmup_steps=0", "callbacks.preview=null",
             "trainer.log_every_n_steps=1")
    metrics = next(tmp_path.glob("outputs/*/*/logs/metrics.csv"))
    rows = [r for r in csv.DictReader(metrics.open()) if r.get("train/lr")]
    lrs = [float(r["train/lr"]) for r in rows]
    # >= 3 logged steps: under a loaded CPU the 4 seconds held only 4 (the decay still shows)
    assert len(lrs) >= 3 and lrs[0] > 0.5 * 2e-3 and lrs[-1] < 0.1 * 2e-3
    ckpt = torch.load(next(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")),
                      map_location="cpu", weights_only=True)
    assert ckpt["diffcli"]["config"]["trainer"]["max_steps"] == -1


def test_python_and_cli_share_the_default_sampler():
    """`diffcli.load(...).sample()` and `diffcli sample` draw with the same default sampler."""
    import yaml

    from diffcli.api import DEFAULT_SAMPLER
    from diffcli.components import conf_dir

    for command in ("sample", "eval_fid"):
        defaults = yaml.safe_load((conf_dir() / f"{command}.yaml").read_text())["defaults"]
        assert {"sampler": DEFAULT_SAMPLER} in defaults, command


def test_progress_lines_give_the_time_left_of_a_timed_run():
    from diffcli.lit.callbacks import plain_progress_line

    line = plain_progress_line(120, -1, 2.0, {}, time_left=61.0)
    assert line.startswith("step 120 |") and line.endswith("ETA 0:01:01")
    assert plain_progress_line(120, 1000, 2.0, {}, time_left=61.0).endswith("ETA 0:01:01")
    assert plain_progress_line(990, 1000, 2.0, {}, time_left=61.0).endswith("ETA 0:00:05")
