"""`diffcli train` end to end: kill and resume, DDP on CPU, loggers, presets (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_cli import EXE, assert_one_line_error, run_here

from diffcli.cli import CONF_DIR
from diffcli.components import build_net
from diffcli.nets.layers import count_parameters

TINY_NET = ["dataset.image_size=8", "model.base_channels=8", "model.groups=4",
            "dataset.batch_size=16"]
TINY = [*TINY_NET, "callbacks.preview=null"]


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


def last_checkpoints(cwd: Path) -> list[Path]:
    return sorted(cwd.glob("outputs/*/*/checkpoints/last.ckpt"))


@pytest.mark.parametrize("name,params", [("ddpm_cifar10", 35.7e6), ("iddpm_cifar10", None)])
def test_experiment_presets(name: str, params: float | None) -> None:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={name}"])
    assert cfg.dataset.name == "cifar10" and cfg.dataset.random_flip
    assert cfg.dataset.batch_size == 128 and cfg.module.ema_decay == 0.9999
    net = build_net(cfg.model, (3, 32, 32))
    n = count_parameters(net)
    if params is not None:
        assert abs(n - params) <= 0.1e6, n
    if name == "ddpm_cifar10":
        assert (cfg.optimizer.lr, cfg.lr_scheduler.warmup_steps, cfg.trainer.max_steps) == (
            2e-4, 5000, 800000)
        assert cfg.schedule.num_timesteps == 1000 and "linear" in cfg.schedule._target_
        assert cfg.model.dropout == 0.1 and cfg.trainer.gradient_clip_val == 1.0
    else:
        assert "cosine" in cfg.schedule._target_ and cfg.schedule.num_timesteps == 4000


@pytest.mark.slow
def test_sigkill_then_resume_loses_only_the_steps_since_the_last_checkpoint(tmp_path: Path):
    """... and every post-hoc EMA snapshot written before the kill reads back whole, and the
    resumed run's folder starts with them."""
    args = [*TINY, "logger=csv", "callbacks.last.every_n_steps=4",
            "callbacks.phema.every_n_steps=2", "trainer.max_steps=100000"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.Popen([*EXE, "train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            found = last_checkpoints(tmp_path)
            if found and checkpoint_step(found[0]) >= 8:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint at step >= 8 within 300 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    killed = last_checkpoints(tmp_path)[0]
    saved = checkpoint_step(killed)  # loads cleanly: the kill never leaves a torn file
    assert saved >= 8 and saved % 4 == 0
    from diffcli.lit.phema import read_snapshots

    snaps = read_snapshots(killed.parent.parent)  # each file whole (atomic writes)
    assert [s.step for s in snaps][:saved // 2] == list(range(2, saved + 1, 2))
    assert all(s.ema(0.1) for s in snaps)
    out = run_here(tmp_path, "train", *args[:-1], "resume=auto", f"trainer.max_steps={saved + 3}",
              "trainer.log_every_n_steps=1")
    assert f"resuming from step {saved} of {killed.relative_to(tmp_path)}" in out.stderr.replace(
        "\n", "")
    resumed = [p for p in last_checkpoints(tmp_path) if p != killed]
    assert len(resumed) == 1 and checkpoint_step(resumed[0]) == saved + 3
    steps = [s.step for s in read_snapshots(resumed[0].parent.parent)]
    assert steps[: saved // 2] == list(range(2, saved + 1, 2)) and steps[-1] == saved + 3
    metrics = (resumed[0].parent.parent / "logs" / "metrics.csv").read_text()
    assert "train/grad_norm" in metrics and "train/images_per_s" in metrics


@pytest.mark.slow
def test_resume_refuses_a_different_network_and_a_finished_run(tmp_path: Path):
    run_here(tmp_path, "train", *TINY, "logger=none", "trainer.max_steps=2")
    ckpt = last_checkpoints(tmp_path)[0]
    proc = run_here(tmp_path, "train", *TINY, "logger=none", f"ckpt_path={ckpt}",
               "model.base_channels=16", ok=False)
    assert_one_line_error(proc, "model.base_channels: 8 -> 16")
    proc = run_here(tmp_path, "train", *TINY, "logger=none", "resume=auto", "trainer.max_steps=2",
               ok=False)
    assert_one_line_error(proc, "already at step 2")
    proc = run_here(tmp_path, "train", *TINY, "logger=none", "ckpt_path=nope.ckpt", ok=False)
    assert_one_line_error(proc, "nope.ckpt")


@pytest.mark.slow
def test_wandb_is_offline_by_default_and_never_prompts(tmp_path: Path):
    env_home = tmp_path / "home"
    env_home.mkdir()
    env = {**os.environ, "HOME": str(env_home), "COLUMNS": "200",
           "WANDB_CONFIG_DIR": str(env_home / ".config" / "wandb")}
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SILENT"):
        env.pop(key, None)
    proc = subprocess.run([*EXE, "train", *TINY_NET, "trainer.max_steps=2",
                           "callbacks.preview.every_n_steps=1"],
                          cwd=tmp_path, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list(tmp_path.glob("outputs/*/*/wandb/offline-run-*"))
    assert len(runs) == 1, proc.stderr[-2000:]
    assert list(runs[0].glob("*.wandb"))  # the run's data file, ready for `wandb sync`


@pytest.mark.slow
def test_tensorboard_logger_gets_scalars_and_sample_grids(tmp_path: Path):
    run_here(tmp_path, "train", *TINY_NET, "logger=tensorboard", "trainer.max_steps=4",
        "trainer.log_every_n_steps=1", "callbacks.preview.every_n_steps=2")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list(tmp_path.glob("outputs/*/*/tb/events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0]), size_guidance={"images": 0}).Reload()
    tags = acc.Tags()
    assert {"train/loss", "train/lr", "train/grad_norm", "train/images_per_s"} <= set(
        tags["scalars"])
    assert "samples/ema" in tags["images"]
    assert [e.step for e in acc.Images("samples/ema")] == [2, 4]
