"""A run never destroys another run's files; signals and divergence are failures, said as such.

Unit tests for the folder/lock/checkpoint helpers, then the command line as users meet it
(real processes on 2-D toy data, a few seconds each: resume=auto, locks, mtimes and signals
are process-level behaviour).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import POINTS_RUN, copy_points_run
from test_cli import EXE, assert_one_line_error, run_here

from diffcli.checkpoint import first_nonfinite
from diffcli.diffusion.generate import check_finite
from diffcli.errors import DiffcliError
from diffcli.files import MARKER, OutputFolder, claim_dir
from diffcli.lit.saving import AtomicCheckpointIO, TrainingDiverged
from diffcli.runs import LOCK, RunLock, check_run_dir, live_holder

POINTS = ["dataset=moons", "model=mlp", "dataset.n_points=256", "logger=none",
          "callbacks.preview=null"]


# ---------------------------------------------------------------- helpers, one by one

def test_claim_dir_never_hands_out_a_folder_twice(tmp_path: Path):
    got = [claim_dir(tmp_path / "runs" / "12-00-00") for _ in range(3)]
    assert [p.name for p in got] == ["12-00-00", "12-00-00_2", "12-00-00_3"]


def test_output_folder_appears_whole_or_not_at_all(tmp_path: Path):
    final = tmp_path / "samples" / "ddim-5"
    with OutputFolder(final) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"
    with OutputFolder(final) as tmp:  # a second call gets its own folder
        (tmp / "a.txt").write_text("second")
    assert (final.with_name("ddim-5_2") / "a.txt").read_text() == "second"
    with pytest.raises(OSError), OutputFolder(final, overwrite=True) as tmp:
        (tmp / "a.txt").write_text("half")
        raise OSError("disk full")  # the previous results stay exactly as they were
    assert (final / "a.txt").read_text() == "first"
    with pytest.raises(OSError), OutputFolder(final) as tmp:
        raise OSError("disk full")
    assert sorted(p.name for p in final.parent.iterdir()) == ["ddim-5", "ddim-5_2"]
    with OutputFolder(final, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("replaced")
    assert sorted(p.name for p in final.iterdir()) == [MARKER, "b.txt"]  # no stale files
    assert sorted(p.name for p in final.parent.iterdir()) == ["ddim-5", "ddim-5_2"]


def test_a_ctrl_c_while_the_folder_is_made_leaves_nothing(tmp_path: Path, monkeypatch):
    """A real SIGINT raised as the temporary folder's marker is written (inside
    ``__enter__``, which no ``__exit__`` follows): held back until the folders and the marker
    exist, then cleaned up as any Ctrl-C is; nothing stays behind."""
    import signal

    import diffcli.files as files

    final = tmp_path / "samples" / "ddim-5"
    final.parent.mkdir()
    real_chmod = files.os.chmod
    sent = []

    def chmod_then_ctrl_c(path, mode):  # noqa: ANN001, ANN202
        real_chmod(path, mode)
        os.kill(os.getpid(), signal.SIGINT)  # arrives while the signal is held back
        sent.append(path)

    monkeypatch.setattr(files.os, "chmod", chmod_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt), OutputFolder(final):
        raise AssertionError("the block must not run")
    assert sent and list(final.parent.iterdir()) == []


def test_run_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path: Path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK).write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        assert live_holder(tmp_path) == sleeper.pid
        with pytest.raises(DiffcliError, match=f"process {sleeper.pid}"), RunLock(tmp_path):
            pass
    finally:
        sleeper.kill()
        sleeper.wait()
    assert live_holder(tmp_path) is None  # its process is gone: a stale lock
    with RunLock(tmp_path):
        assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    assert not (tmp_path / LOCK).exists()


def test_a_folder_holding_a_checkpoint_is_not_reused(tmp_path: Path):
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    with pytest.raises(DiffcliError, match="already holds a run"):
        check_run_dir(tmp_path, None)
    with pytest.raises(DiffcliError, match="already holds a run"):
        check_run_dir(tmp_path, tmp_path.parent / "elsewhere" / "last.ckpt")
    check_run_dir(tmp_path, ckpt)  # continuing this very run in place


def test_non_finite_weights_never_replace_a_checkpoint(tmp_path: Path):
    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 5}, last)
    bad = {"state_dict": {"w": torch.tensor([1.0, float("nan"), float("inf")])},
           "global_step": 6}
    with pytest.raises(TrainingDiverged, match="w holds 2 NaN/inf values"):
        io.save_checkpoint(bad, last)
    assert io.load_checkpoint(last)["global_step"] == 5
    assert torch.load(tmp_path / "diverged.ckpt", weights_only=True)["global_step"] == 6
    assert first_nonfinite({"a": torch.ones(2), "b": torch.arange(3)}) is None


def test_non_finite_samples_are_refused():
    check_finite(torch.zeros(3, 2))
    with pytest.raises(DiffcliError, match="non-finite values in 1 of 3 samples"):
        check_finite(torch.tensor([[0.0, 1.0], [float("nan"), 0.0], [2.0, 2.0]]))


def test_bad_ema_decay_and_lr_are_refused():
    from diffcli.diffusion.schedules import linear_schedule
    from diffcli.lit.module import DiffusionModule
    from diffcli.nets.mlp import MLP

    for kwargs, match in [({"ema_decay": 2.0}, "ema_decay=2.0"), ({"ema_decay": -0.1}, "ema")]:
        with pytest.raises(ValueError, match=match):
            DiffusionModule(MLP(dim=2), linear_schedule(1000), **kwargs)
    with pytest.raises(ValueError, match="lr=-1"):
        DiffusionModule(MLP(dim=2), linear_schedule(1000),
                        optimizer=functools.partial(torch.optim.Adam, lr=-1.0))


# ---------------------------------------------------------------- the command line

def _ckpts(cwd: Path) -> list[Path]:
    return sorted(cwd.glob("outputs/**/checkpoints/last.ckpt"))


def _step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=True)["global_step"])


@pytest.mark.slow
def test_an_existing_run_folder_is_refused_unless_resumed_in_place(tmp_path: Path):
    run_here(tmp_path, "train", *POINTS, "trainer.max_steps=6", "hydra.run.dir=outputs/mine")
    run_dir = tmp_path / "outputs" / "mine"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = run_here(tmp_path, "train", *POINTS, "trainer.max_steps=2", f"hydra.run.dir={run_dir}",
               ok=False)
    assert_one_line_error(proc, "already holds a run", "resume=auto")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    last = run_dir / "checkpoints" / "last.ckpt"
    run_here(tmp_path, "train", *POINTS, "trainer.max_steps=9", f"hydra.run.dir={run_dir}",
        f"ckpt_path={last}")
    assert _step(last) == 9


@pytest.mark.slow
def test_resume_refuses_another_dataset_and_a_live_run(tmp_path: Path):
    """In-process: what is under test is the check of the stored config and the lock, not the
    process (the signal tests below are real processes)."""
    run_here(tmp_path, "train", *POINTS, "trainer.max_steps=4")
    other = [a.replace("moons", "swiss_roll") for a in POINTS]
    proc = run_here(tmp_path, "train", *other, "resume=auto", "trainer.max_steps=8", ok=False)
    assert_one_line_error(proc, "dataset.name: moons -> swiss_roll")
    (ckpt,) = _ckpts(tmp_path)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (ckpt.parent.parent / LOCK).write_text(f"{sleeper.pid} {os.uname().nodename}\n")
        proc = run_here(tmp_path, "train", *POINTS, "resume=auto", "trainer.max_steps=8", ok=False)
        assert_one_line_error(proc, f"process {sleeper.pid} is still writing")
    finally:
        sleeper.kill()
        sleeper.wait()
    out = run_here(tmp_path, "train", *POINTS, "resume=auto", "trainer.max_steps=8")  # stale lock
    assert f"resuming from step 4 of {ckpt.relative_to(tmp_path)}" in out.stderr.replace("\n", "")
    assert len(_ckpts(tmp_path)) == 2 and len(list(tmp_path.glob("outputs/**/run.lock"))) == 1


def _picked(lead: str, ckpt: Path, cwd: Path, among: str, key: str) -> str:
    """The line a command prints for the run it picked (diffcli.runs.NewestRun.line)."""
    written = datetime.fromtimestamp(ckpt.stat().st_mtime)
    return (f"{lead} {ckpt.parent.parent.relative_to(cwd)} (checkpoints/last.ckpt written "
            f"{written:%Y-%m-%d %H:%M:%S}; {among} under outputs/ and multirun/; {key}=<path> "
            "picks another)")


@pytest.mark.slow
def test_a_smoke_run_saves_nothing_and_the_newest_real_run_is_picked_and_named(
        tmp_path: Path, points_checkpoint: Path):
    """A trained run, an older sweep job, then ``trainer.fast_dev_run=true`` (a real process):
    the smoke run leaves no checkpoint or result.json, so ``sample`` and ``resume=auto`` take
    the trained run, and say which and why."""
    mine = copy_points_run(points_checkpoint, tmp_path)
    job = tmp_path / "multirun" / "2000-01-01" / "00-00-00" / "0"
    shutil.copytree(mine.parent.parent, job)
    os.utime(job / "checkpoints" / "last.ckpt", (1e9, 1e9))  # an older sweep job
    proc = subprocess.run([*EXE, "train", *POINTS, "trainer.fast_dev_run=true",
                           "hydra.run.dir=outputs/smoke"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr.splitlines()[-1] == ("done: smoke run (trainer.fast_dev_run=true): 1 step, "
                                            "nothing saved; drop trainer.fast_dev_run to train")
    smoke = tmp_path / "outputs" / "smoke"
    assert sorted(p.name for p in smoke.iterdir()) == [".hydra", "cli.log"]
    proc = run_here(tmp_path, "sample", "n=4", "steps=2", "sampler=ddim")
    among = "newest of 2 diffusion runs"
    assert proc.stderr.splitlines()[0] == _picked("using the newest diffusion run", mine,
                                                  tmp_path, among, "ckpt")
    assert (mine.parent.parent / "samples" / "ddim-2" / "samples.npz").is_file()
    proc = run_here(tmp_path, "train", *POINTS_RUN, "resume=auto", "trainer.max_steps=3")
    assert proc.stderr.splitlines()[0] == _picked("resume=auto: continuing", mine, tmp_path,
                                                  among, "ckpt_path")


def _train_until_checkpoints(cwd: Path, count: int, *extra: str) -> list[subprocess.Popen]:
    """``count`` training processes started at once, once each has written a checkpoint."""
    args = [*POINTS, "callbacks.last.every_n_steps=5", "trainer.max_steps=1000000", *extra]
    procs = [subprocess.Popen([*EXE, "train", *args], cwd=cwd, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "COLUMNS": "200"}) for _ in range(count)]
    deadline = time.time() + 300
    while len(_ckpts(cwd)) < count:
        for proc in procs:
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
        time.sleep(0.1)
    return procs


@pytest.mark.slow
def test_runs_started_together_get_a_folder_each_and_signals_save_or_exit_at_once(
        tmp_path: Path):
    """Three runs started at once with the same fresh_dir get a folder each (one set of
    processes for all of this: each start pays the imports). Then SIGTERM to the first and
    SIGINT to the second: each saves its checkpoint, says so in one line and exits 143 / 130;
    a second Ctrl-C right after the first makes the third exit 130 at once, and the checkpoint
    it keeps is whole."""
    procs = _train_until_checkpoints(
        tmp_path, 3, "hydra.run.dir=${diffcli.fresh_dir:outputs/together}")
    ckpts = _ckpts(tmp_path)
    assert [p.parent.parent.name for p in ckpts] == ["together", "together_2", "together_3"]
    errs = []
    for proc, signals in zip(procs, ([signal.SIGTERM], [signal.SIGINT],
                                     [signal.SIGINT, signal.SIGINT]), strict=True):
        try:
            for signum in signals:
                proc.send_signal(signum)
            errs.append(proc.communicate(timeout=60 if len(signals) > 1 else 120)[1])
        finally:
            proc.kill()
        assert proc.returncode == 128 + signals[0], errs[-1][-2000:]
        assert "Traceback" not in errs[-1]
    for err, signum in zip(errs[:2], (signal.SIGTERM, signal.SIGINT), strict=True):
        lines = [ln for ln in err.splitlines() if ln.startswith("interrupted:")]
        [ckpt] = [c for c in ckpts if f"saved {c.resolve()};" in "".join(lines)]
        ckpts.remove(ckpt)
        step = _step(ckpt)
        assert lines == [f"interrupted: {signal.Signals(signum).name} at step {step}: saved "
                         f"{ckpt.resolve()}; continue with `diffcli train resume=auto` (or "
                         f"ckpt_path={ckpt.resolve()})"], err[-2000:]
        assert not (ckpt.parent.parent / LOCK).exists()
    (ckpt,) = ckpts  # the third run's: whichever file is there is whole
    assert _step(ckpt) >= 5


@pytest.mark.slow
def test_divergence_stops_training_and_nothing_broken_is_sampled(tmp_path: Path):
    proc = run_here(tmp_path, "train", *POINTS, "trainer.max_steps=50", "optimizer.lr=1e9",
               "lr_scheduler.warmup_steps=0", "callbacks.last.every_n_steps=1", ok=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr  # after the run's header:
    assert proc.stderr.strip().splitlines()[-1].startswith("error: training diverged at step")
    assert "lower optimizer.lr" in proc.stderr and "trainer.gradient_clip_val (now 1" in proc.stderr
    for ckpt in _ckpts(tmp_path):  # what was kept is finite
        state = torch.load(ckpt, weights_only=True)["state_dict"]
        assert first_nonfinite(state) is None
    proc = run_here(tmp_path, "train", *POINTS, "trainer.max_steps=3", "module.ema_decay=2",
               "module.ema_warmup=false", ok=False)
    assert_one_line_error(proc, "ema_decay=2")
    assert proc.returncode == 2  # refused before a run folder was made


@pytest.mark.slow
def test_sampling_refuses_to_write_non_finite_samples(tmp_path: Path):
    run_here(tmp_path, "train", *POINTS, "trainer.max_steps=2")
    (ckpt,) = _ckpts(tmp_path)
    data = torch.load(ckpt, weights_only=True)
    for k, v in data["state_dict"].items():  # finite, but far too large for float32 maths
        if k.endswith("weight"):
            v.mul_(1e30)
    huge = tmp_path / "huge.ckpt"
    torch.save(data, huge)
    proc = run_here(tmp_path, "sample", f"ckpt={huge}", "steps=3", "sampler=ddim", "n=8", ok=False)
    assert_one_line_error(proc, "non-finite values", "nothing was written")
    assert not list(tmp_path.glob("outputs/**/samples/*"))


@pytest.mark.slow
def test_each_sampling_call_gets_its_own_folder(tmp_path: Path):
    run_here(tmp_path, "train", *POINTS, "trainer.max_steps=2")
    run_here(tmp_path, "sample", "sampler=ddim", "steps=3", "n=40")
    run_here(tmp_path, "sample", "sampler=ddim", "steps=3", "n=4")
    first, second = sorted(tmp_path.glob("outputs/*/*/samples/ddim-3*"))
    assert (first.name, second.name) == ("ddim-3", "ddim-3_2")
    assert np.load(first / "samples.npz")["points"].shape == (40, 2)
    run_here(tmp_path, "sample", "sampler=ddim", "steps=3", "n=4", "overwrite=true")
    assert np.load(first / "samples.npz")["points"].shape == (4, 2)
    assert len(list(first.parent.iterdir())) == 2  # no temporaries left behind
