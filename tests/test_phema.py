"""Post-hoc EMA end to end: ``callbacks.phema`` writes power-EMA snapshots while training (their
0.05 profile is the run's own EMA), a resumed run continues them, and ``diffcli ema`` rebuilds a
width as a checkpoint that ``diffcli sample`` takes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import POINTS_RUN
from test_cli import run_here

from diffcli.checkpoint import load_checkpoint
from diffcli.lit.ema import gamma_of_sigma_rel, power_ema_decay
from diffcli.lit.phema import read_snapshots

PHEMA = ["callbacks.phema.every_n_steps=2", "trainer.max_steps=5", "callbacks.last.every_n_steps=2"]


def _run_dir(cwd: Path) -> Path:
    return next(cwd.glob("outputs/*/*/checkpoints/last.ckpt")).parent.parent


@pytest.fixture(scope="module")
def phema_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 5-step 2-D run with snapshots at steps 2, 4 and 5 (the end)."""
    cwd = tmp_path_factory.mktemp("phema")
    run_here(cwd, "train", *POINTS_RUN, *PHEMA)
    return cwd


def test_snapshots_are_written_and_the_0_05_profile_is_the_runs_ema(phema_run: Path):
    snaps = read_snapshots(_run_dir(phema_run))
    assert [s.step for s in snaps] == [2, 4, 5]
    assert all(s.widths == [0.05, 0.1] for s in snaps)
    run = load_checkpoint(_run_dir(phema_run) / "checkpoints" / "last.ckpt")
    ema = run.weights("ema_net.")
    stored = snaps[-1].ema(0.05)
    assert stored.keys() <= ema.keys() and stored
    for name, value in stored.items():  # the same update rule (EDM2 Eq. 2) on the same weights
        assert torch.allclose(value, ema[name].float(), atol=1e-6), name
    assert not torch.equal(snaps[-1].ema(0.1)[name], stored[name])  # another width


def test_ema_rebuilds_a_width_that_sample_takes(phema_run: Path):
    run_dir = _run_dir(phema_run)
    proc = run_here(phema_run, "ema", "sigma_rel=[0.1,0.07]")
    assert "largest weight" in proc.stderr
    rebuilt = run_dir / "checkpoints" / "ema-0.100-step5.ckpt"
    assert rebuilt.is_file() and (run_dir / "checkpoints" / "ema-0.070-step5.ckpt").is_file()
    run = load_checkpoint(rebuilt)
    assert run.raw["posthoc_ema"]["sigma_rel"] == 0.1
    stored = read_snapshots(run_dir)[-1].ema(0.1)
    for name, value in stored.items():  # a stored width at its own step comes back as stored
        assert torch.allclose(run.state_dict["ema_net." + name], value, atol=1e-5), name
    proc = run_here(phema_run, "sample", f"ckpt={rebuilt}", "n=8", "steps=2")
    assert "wrote 8 samples" in proc.stderr


def test_ema_refuses_bad_input_in_one_line(phema_run: Path, points_checkpoint: Path):
    proc = run_here(phema_run, "ema", "sigma_rel=0.5", ok=False)
    assert proc.returncode != 0 and "sigma_rel=0.5 is out of range" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_here(phema_run, "ema", "step=1", ok=False)
    assert proc.returncode != 0 and "no EMA snapshot at or before step 1" in proc.stderr
    proc = run_here(phema_run, "ema", f"ckpt={points_checkpoint}", ok=False)
    assert proc.returncode != 0 and "callbacks.phema.every_n_steps=N" in proc.stderr


def test_a_resumed_run_continues_its_profiles(tmp_path: Path):
    """Stopped at step 4 and resumed to 5 (in a new run folder, which gets the snapshots of
    steps 2 and 4): the step-5 snapshot is the step-4 one moved by one update (EDM2 Eq. 2)
    toward the resumed run's weights, not a fresh copy of them."""
    run_here(tmp_path, "train", *POINTS_RUN, *PHEMA[:1], "trainer.max_steps=4", *PHEMA[2:])
    run_here(tmp_path, "train", *POINTS_RUN, *PHEMA, "resume=auto")
    resumed = sorted(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt"))[-1].parent.parent
    snaps = read_snapshots(resumed)
    assert [s.step for s in snaps] == [2, 4, 5]
    four, five = snaps[-2:]
    net = load_checkpoint(resumed / "checkpoints" / "last.ckpt").weights("net.")
    for width in (0.05, 0.1):
        decay = power_ema_decay(5, gamma_of_sigma_rel(width))
        for name, value in five.ema(width).items():
            want = four.ema(width)[name].lerp(net[name].float(), 1 - decay)
            assert torch.allclose(value, want, atol=1e-6), (width, name)
            assert not torch.allclose(value, net[name].float(), atol=1e-6), (width, name)


def test_a_resumed_run_equals_an_uninterrupted_one_bit_for_bit(tmp_path: Path):
    """Stopped at step 4 (mid-epoch: 3 batches an epoch) and resumed to 9: the weights, the EMA,
    the optimizer state, both post-hoc EMA profiles and every logged loss equal those of one
    9-step run (one process, CPU; the data order and each step's noise are functions of
    (seed, step))."""
    import csv

    whole, parts = tmp_path / "whole", tmp_path / "parts"
    whole.mkdir(), parts.mkdir()
    common = [a for a in POINTS_RUN if "max_steps" not in a and "n_points" not in a and
              "logger" not in a] + ["dataset.n_points=400", "dataset.batch_size=128",
                                    "logger=csv", "trainer.log_every_n_steps=1",
                                    "callbacks.phema.every_n_steps=3"]
    run_here(whole, "train", *common, "trainer.max_steps=9")
    run_here(parts, "train", *common, "trainer.max_steps=4", "callbacks.last.every_n_steps=2")
    run_here(parts, "train", *common, "trainer.max_steps=9", "resume=auto")
    a = sorted(whole.glob("outputs/*/*/checkpoints/last.ckpt"))[-1]
    b = sorted(parts.glob("outputs/*/*/checkpoints/last.ckpt"))[-1]
    ca, cb = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    for key, value in ca["state_dict"].items():
        assert torch.equal(value, cb["state_dict"][key]), key
    for sa, sb in zip(ca["optimizer_states"][0]["state"].values(),
                      cb["optimizer_states"][0]["state"].values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    last_a, last_b = read_snapshots(a.parent.parent)[-1], read_snapshots(b.parent.parent)[-1]
    for width in (0.05, 0.1):
        for name, value in last_a.ema(width).items():
            assert torch.equal(value, last_b.ema(width)[name]), (width, name)

    def losses(ckpt: Path) -> dict[int, str]:
        with open(ckpt.parent.parent / "logs" / "metrics.csv") as f:
            return {int(r["step"]): r["train/loss"] for r in csv.DictReader(f)
                    if r.get("train/loss")}

    tail = losses(b)
    assert tail and all(losses(a)[step] == value for step, value in tail.items())
