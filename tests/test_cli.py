"""The command line end to end, as a user runs it, on tiny data. ``run`` starts a real process;
``run_here`` calls the same entry point in this process (for single commands whose process
boundary is not what is tested: it saves the ~6 s of imports each new process pays)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow
EXE = [shutil.which("diffcli")] if shutil.which("diffcli") else [sys.executable, "-m", "diffcli"]
TINY_UNET = ["dataset.image_size=8", "model.base_channels=8", "model.groups=4"]


def run(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run([*EXE, *args], cwd=cwd, capture_output=True, text=True, env=env,
                          timeout=600)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def run_here(cwd: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """``diffcli <args>`` through :func:`diffcli.cli.main`'s app in this process, from ``cwd``,
    with stdout and stderr captured: the same result object as :func:`run`."""
    import contextlib
    import io

    from conftest import fresh_hydra

    from diffcli.cli import app

    fresh_hydra()
    out, err = io.StringIO(), io.StringIO()
    here, argv, environ = Path.cwd(), sys.argv, dict(os.environ)
    code: int | str | None = 0
    try:
        os.chdir(cwd)
        sys.argv = ["diffcli"]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                app(list(args))
            except SystemExit as e:
                code = e.code
    finally:
        os.chdir(here)
        sys.argv = argv
        os.environ.clear()  # a command sets variables for its own child processes (ranks)
        os.environ.update(environ)
    returncode = code if isinstance(code, int) else (0 if code is None else 1)
    proc = subprocess.CompletedProcess(["diffcli", *args], returncode, out.getvalue(),
                                       err.getvalue())
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture(scope="module")
def points_run(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("points")
    run_here(cwd, "train", "dataset=swiss_roll", "model=mlp", "trainer.max_steps=40",
             "callbacks.last.every_n_steps=20", "callbacks.snapshot.every_n_steps=20",
             "dataset.n_points=2000", "logger=csv")
    return cwd


def test_train_then_sample_points(points_run: Path):
    ckpts = list(points_run.glob("outputs/*/*/checkpoints/*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt", "step-20.ckpt", "step-40.ckpt"}
    run_dir = ckpts[0].parent.parent
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    proc = run(points_run, "sample", "sampler=ddim", "steps=10", "n=300")
    assert "last.ckpt" in proc.stderr  # says which checkpoint it picked
    out = run_dir / "samples" / "ddim-10"
    assert (out / "scatter.png").stat().st_size > 1000
    assert np.load(out / "samples.npz")["points"].shape == (300, 2)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["steps"] == 10 and meta["nfe"] == 10 and meta["seeds"] == "0-299"


@pytest.mark.parametrize("sampler, nfe", [("ddpm", 3), ("ddim", 3), ("dpmpp_2m", 3),
                                          ("dpmpp_3m", 3), ("dpmpp_2m_sde", 3),
                                          ("euler", 3), ("unipc", 3), ("auto", 3),
                                          # Karras 80 -> 3.46 -> 0.01: both steps shrink sigma
                                          # more than 10-fold, so Euler steps (max_ratio): 3
                                          ("heun", 3),
                                          # 3 main calls + K=2 cycles x 3 steps, on
                                          # flow's noise levels (the default objective)
                                          # one step a cycle is an Euler step (max_ratio)
                                          ("restart", 13)])
def test_every_sampler_runs_from_the_cli(points_run: Path, sampler: str, nfe: int):
    run_here(points_run, "sample", f"sampler={sampler}", "steps=3", "n=50")
    out = next(points_run.glob(f"outputs/*/*/samples/{sampler}-3"))
    assert json.loads((out / "meta.json").read_text())["nfe"] == nfe
    assert np.isfinite(np.load(out / "samples.npz")["points"]).all()


@pytest.mark.serial
def test_sampling_shards_seeds_across_processes(points_checkpoint: Path, tmp_path: Path):
    """Under torchrun (2 CPU processes, gloo) each process draws every 2nd seed; the gathered
    result equals the single-process one (to float rounding)."""
    from conftest import copy_points_run

    points_run = tmp_path
    copy_points_run(points_checkpoint, points_run)
    common = ["sampler=ddim", "steps=5", "seeds=0-10", "batch_size=4", "overwrite=true"]
    run(points_run, "sample", *common)
    out = next(points_run.glob("outputs/*/*/samples/ddim-5"))
    single = np.load(out / "samples.npz")["points"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2", "-m", "diffcli", "sample", *common]
    proc = subprocess.run(torchrun, cwd=points_run, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # equal up to float32 rounding: BLAS kernels differ with the batch shape
    np.testing.assert_allclose(np.load(out / "samples.npz")["points"], single, rtol=1e-5,
                               atol=1e-5)
    assert json.loads((out / "meta.json").read_text())["processes"] == 2


def test_checkpoint_is_self_describing_and_safe(points_run: Path):
    ckpt = next(points_run.glob("outputs/*/*/checkpoints/last.ckpt"))
    data = torch.load(ckpt, map_location="cpu", weights_only=True)  # no pickled code needed
    assert data["diffcli"]["config"]["model"]["_target_"] == "diffcli.nets.mlp.MLP"
    data["diffcli"]["config"]["model"]["_target_"] = "os.system"
    evil = points_run / "evil.ckpt"
    torch.save(data, evil)
    # in this process (as real processes: tests/test_crafted_checkpoints.py)
    assert_one_line_error(run_here(points_run, "sample", f"ckpt={evil}", ok=False), "refusing")


def test_train_and_sample_images(tmp_path: Path):
    proc = run_here(tmp_path, "train", *TINY_UNET, "trainer.max_steps=3", "logger=none")
    # a run shorter than the defaults' LR warm-up and preview interval says so, once, up front
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("note: ")]
    assert notes == [
        "note: lr_scheduler.warmup_steps=100 is longer than the run (3 steps): the LR never "
        "reaches optimizer.lr; set lr_scheduler.warmup_steps=1 (about 10% of the run) or fewer",
        "note: callbacks.preview.every_n_steps=1000 is longer than the run (3 steps): no "
        "preview will be written; set callbacks.preview.every_n_steps=1"], proc.stderr
    assert proc.stderr.index(notes[-1]) < proc.stderr.index("done: 3 steps")
    run_here(tmp_path, "sample", "sampler=ddpm", "steps=4", "n=6", "batch_size=4")
    out = next(tmp_path.glob("outputs/*/*/samples/ddpm-4"))
    images = np.load(out / "samples.npz")["images"]
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
    assert (out / "grid.png").is_file()
    # Each image depends on its seed only, not on the batch it was drawn in.
    run_here(tmp_path, "sample", "sampler=ddpm", "steps=4", "n=6", "batch_size=6", "overwrite=true")
    np.testing.assert_array_equal(np.load(out / "samples.npz")["images"], images)
    # Karras samplers evaluate between training timesteps; Heun reports 2N - 1 evaluations.
    # Explicit seeds, per-seed PNGs, the trajectory of the first samples.
    run_here(tmp_path, "sample", "sampler=heun", "steps=2", "seeds=3-8", "batch_size=4",
             "trajectory=2", "sampler.dynamic_threshold=0.99", "sampler.max_ratio=null")
    heun = next(tmp_path.glob("outputs/*/*/samples/heun-2"))
    assert "Infinity" not in (heun / "meta.json").read_text()  # strict JSON (s_tmax = inf)
    meta = json.loads((heun / "meta.json").read_text())
    assert meta["nfe"] == 3 and meta["seeds"] == "3-8" and meta["n"] == 6
    assert sorted(p.name for p in (heun / "images").iterdir())[0] == "000003.png"
    together = np.load(heun / "samples.npz")["images"]
    traj = np.load(heun / "trajectory.npz")
    assert traj["x_t"].shape == (2, 2, 1, 8, 8) and traj["x0"].shape == (2, 2, 1, 8, 8)
    # seed 5 is the same image whether drawn with seeds 3-8 or on its own
    run_here(tmp_path, "sample", "sampler=heun", "steps=2", "seeds=5",
             "sampler.dynamic_threshold=0.99", "sampler.max_ratio=null")
    alone = np.load(heun.with_name("heun-2_2") / "samples.npz")  # a new folder per call
    assert list(alone["seeds"]) == [5]
    np.testing.assert_array_equal(alone["images"][0], together[2])


def test_multirun_sweeps(tmp_path: Path):
    """In this process (a sweep as a real process: tests/test_sweeps.py)."""
    run_here(tmp_path, "train", "-m", "dataset=moons", "model=mlp", "trainer.max_steps=2",
             "seed=0,1", "logger=none")
    assert len(list(tmp_path.glob("multirun/*/*/*/checkpoints/last.ckpt"))) == 2


def test_cfg_job_prints_the_config(tmp_path: Path):
    proc = run_here(tmp_path, "train", "schedule=cosine", "--cfg", "job")
    assert "cosine_schedule" in proc.stdout and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args, fragment", [
    (["train", "schedule=nope"], "schedule"),
    (["train", "trainer.max_stepz=3"], "max_stepz"),
    (["train", "notanoverride"], "notanoverride"),
    (["sample", "ckpt=missing.ckpt"], "missing.ckpt"),
    (["train", "dataset=mnist", "dataset.root=/nonexistent"], "/nonexistent"),
    (["train", "dataset=swiss_roll"], "model=mlp"),
])
def test_bad_input_gives_one_line(tmp_path: Path, args, fragment):
    assert_one_line_error(run_here(tmp_path, *args, ok=False), fragment)


def test_corrupt_and_absent_checkpoints(tmp_path: Path):
    assert_one_line_error(run_here(tmp_path, "sample", ok=False), "no trained run")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert_one_line_error(run_here(tmp_path, "sample", f"ckpt={bad}", ok=False),
                          "is not a diffcli checkpoint")


def test_help_lists_config_groups(tmp_path: Path):
    out = run(tmp_path, "train", "--help").stdout
    assert "schedule=" in out and "cosine" in out and "swiss_roll" in out
