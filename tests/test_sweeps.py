"""Sweeps and clusters end to end: hydra/launcher=local and =slurm (a fake SLURM cluster on
PATH, :mod:`fake_slurm`), preemption that requeues and continues the same run folder, logs that
are readable while a run goes, one tracker run per sweep job, sweep-summary."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import fake_slurm
import pytest
from test_cli import EXE, assert_one_line_error, run, run_here

pytestmark = pytest.mark.slow
POINTS = ["dataset=swiss_roll", "model=mlp", "dataset.train_steps=40"]


def _csv_steps(run_dir: Path) -> list[int]:
    with open(run_dir / "logs" / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def _result(run_dir: Path) -> dict:
    return json.loads((run_dir / "result.json").read_text())


def test_local_launcher_sweep_lists_both_points(tmp_path: Path):
    """Two points through submitit's local executor (a process per job, as on SLURM): each
    trains, writes result.json, and the summary after the sweep lists both."""
    proc = run(tmp_path, "train", "-m", "hydra/launcher=local", *POINTS, "logger=csv",
               "trainer.max_steps=4", "schedule=linear,cosine")
    sweep = next(tmp_path.glob("multirun/*/*"))
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0", "1"]
    assert [_result(sweep / j)["status"] for j in jobs] == ["done", "done"]
    assert "schedule=linear" in proc.stderr and "schedule=cosine" in proc.stderr
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["job"] for r in rows) == ["0", "1"]
    assert [float(r["loss"]) for r in rows] == sorted(float(r["loss"]) for r in rows)
    again = run_here(tmp_path, "sweep-summary", str(sweep), "--metric", "step")
    assert "schedule=cosine" in again.stdout and "4/4" in again.stdout


@pytest.mark.serial
def test_slurm_sweep_preempted_job_requeues_and_continues(tmp_path: Path):
    """hydra/launcher=slurm on a fake cluster: job 0 gets USR1 mid-run (its time limit), saves,
    runs ``scontrol requeue``, and its second attempt continues the same folder to max_steps;
    the CSV has every step once."""
    env = {**os.environ, **fake_slurm.install(tmp_path / "bin", tmp_path / "slurm"),
           "FAKE_SLURM_PREEMPT": "0:step 30/", "COLUMNS": "200"}
    proc = subprocess.run(
        [*EXE, "train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition=debug",
         "hydra.launcher.gpus_per_node=null", *POINTS, "logger=csv", "trainer.max_steps=120",
         "trainer.log_every_n_steps=1", "progress_every_n_steps=10",
         "callbacks.last.every_n_steps=25", "schedule=linear,cosine"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "slurm" / "scontrol.log").read_text().split("\n")[0] == "requeue 5000_0"
    sweep = next(tmp_path.glob("multirun/*/*"))
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == [".submitit", "0", "1"]
    job = sweep / "0"
    log = (job / "cli.log").read_text()
    assert "interrupted: SIGUSR1 at step" in log and "requeued SLURM job 5000_0" in log
    assert "resuming from step" in log and "done: 120 steps" in log
    assert _csv_steps(job) == list(range(120))  # one continuous column, no step twice
    result = _result(job)
    assert (result["status"], result["step"], result["attempts"]) == ("done", 120, 2)
    assert _result(sweep / "1")["attempts"] == 1


def test_sbatch_job_logs_while_running_and_requeues_into_the_same_folder(tmp_path: Path):
    """``diffcli train > log 2>&1`` in a SLURM job: the log shows progress lines while it runs;
    USR1 saves and requeues (the fake scontrol records it); the restarted job (SLURM sets
    SLURM_RESTART_COUNT) continues the same folder from that step."""
    env = {**os.environ, **fake_slurm.install(tmp_path / "bin", tmp_path / "slurm"),
           "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "diffcli", "SLURM_NTASKS": "1",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    args = [*EXE, "train", *POINTS, "logger=csv", "trainer.max_steps=200",
            "trainer.log_every_n_steps=1", "progress_every_n_steps=10"]
    log = tmp_path / "log"
    with open(log, "w") as f:
        proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=f, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while "step 20/200" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, log.read_text()  # the log grew while training ran
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == 128 + signal.SIGUSR1
    assert (tmp_path / "slurm" / "scontrol.log").read_text() == "requeue 77\n"
    run_dir = next(tmp_path.glob("outputs/20*/*"))
    stopped = _result(run_dir)
    assert stopped["status"] == "requeued" and 20 <= stopped["step"] < 200
    assert "step 10/200" in (run_dir / "cli.log").read_text()
    subprocess.run(args, cwd=tmp_path, env={**env, "SLURM_RESTART_COUNT": "1"}, check=True,
                   capture_output=True, timeout=300)
    assert list(tmp_path.glob("outputs/20*/*")) == [run_dir]
    assert _csv_steps(run_dir) == list(range(200))
    assert f"resuming from step {stopped['step']}" in (run_dir / "cli.log").read_text()
    assert (_result(run_dir)["status"], _result(run_dir)["attempts"]) == ("done", 2)


def test_each_sweep_job_has_its_own_wandb_run(tmp_path: Path):
    """A 2-point multirun (one process, Hydra's basic launcher) logs to two wandb runs (offline):
    each job folder holds its own run and history, in one group named after the sweep."""
    run(tmp_path, "train", "-m", *POINTS, "logger=wandb", "logger.mode=offline",
        "trainer.max_steps=3", "trainer.log_every_n_steps=1", "schedule=linear,cosine")
    sweep = next(tmp_path.glob("multirun/*/*"))
    group = f"sweep-{sweep.parent.name}_{sweep.name}".encode()
    ids = []
    for job in ("0", "1"):
        ids.append((sweep / job / "wandb-run-id").read_text().strip())
        [history] = (sweep / job / "wandb").glob(f"offline-run-*-{ids[-1]}/run-{ids[-1]}.wandb")
        data = history.read_bytes()
        assert group in data and b"train/loss" in data
        assert f"schedule={['linear', 'cosine'][int(job)]}".encode() in data  # its name
    assert ids[0] != ids[1]


def test_slurm_launcher_bad_inputs_are_one_line(tmp_path: Path, monkeypatch):
    """No sbatch on PATH; a partition the cluster does not have (sbatch's own error); GPUs per
    node that disagree with trainer.devices."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    common = ["train", "-m", "hydra/launcher=slurm", *POINTS, "trainer.max_steps=2"]
    assert_one_line_error(run_here(tmp_path, *common, ok=False), "sbatch", "not on PATH",
                          "hydra/launcher=local")
    assert not list(tmp_path.glob("multirun/*/*"))  # refused before a folder was made
    env = fake_slurm.install(tmp_path / "bin", tmp_path / "slurm")
    monkeypatch.setenv("PATH", env["PATH"])
    monkeypatch.setenv("FAKE_SLURM_DIR", env["FAKE_SLURM_DIR"])
    assert_one_line_error(run_here(tmp_path, *common, "hydra.launcher.partition=nope", ok=False),
                          "sbatch refused the sweep", "invalid partition specified: nope")
    assert_one_line_error(run_here(tmp_path, *common, "hydra.launcher.gpus_per_node=4",
                                   "trainer.devices=1", ok=False),
                          "gpus_per_node=4", "trainer.devices=1")


TINY = ["dataset=moons", "model=mlp", "trainer.max_steps=2", "logger=none"]


def test_a_bad_last_sweep_point_refuses_the_sweep_before_any_job(tmp_path: Path, monkeypatch):
    """Every point is composed and checked in the launching process before the first job: a
    bad last point refuses the whole sweep in one line naming it (exit 2) and nothing is
    created. hydra/launcher=slurm (the fake cluster) goes through the same check before its
    launcher acts: sbatch is never called. glob() sweeps a group's options (3 schedules)."""
    proc = run(tmp_path, "train", "-m", *TINY, "optimizer.lr=1e-3,2e-3,abc", ok=False)
    assert_one_line_error(proc, "sweep point 3 of 3 (optimizer.lr=abc): optimizer.lr: 'abc' is "
                                "not a valid value")
    assert proc.returncode == 2 and not (tmp_path / "multirun").exists()
    env = fake_slurm.install(tmp_path / "bin", tmp_path / "slurm")
    for name in ("PATH", "FAKE_SLURM_DIR"):
        monkeypatch.setenv(name, env[name])
    # no "checking 6 sweep points ..." line, which a loaded machine prints (slow checks)
    monkeypatch.setattr("diffcli.cli.sweep_points.SLOW_CHECK_S", float("inf"))
    proc = run_here(tmp_path, "train", "-m", "hydra/launcher=slurm", "hydra.launcher.partition="
                    "debug", "hydra.launcher.gpus_per_node=null", *TINY, "seed=0,-1",
                    "schedule=glob(*)", ok=False)  # Hydra's job order: seed=0 with each first
    assert_one_line_error(proc, "sweep point 4 of 6 (seed=-1 schedule=cosine): seed=-1 must be")
    assert proc.returncode == 2 and not (tmp_path / "multirun").exists()
    assert not (tmp_path / "slurm" / "next-job").exists()  # nothing was submitted


def test_a_sweep_whose_job_fails_at_run_time_goes_on_and_writes_its_summary(tmp_path: Path):
    """Point 1 diverges at step 2 (a NaN loss, which no check sees coming): it is recorded as
    failed, point 2 still runs, the summary lists both, and the sweep exits 1 with one last
    line naming the failed point."""
    proc = run(tmp_path, "train", "-m", *TINY, "optimizer.lr=1e30,1e-3", ok=False)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[-1].startswith(
        "error: sweep point 1 of 2 (optimizer.lr=1e+30) failed: training diverged at step 2")
    sweep = next(tmp_path.glob("multirun/*/*"))
    with open(sweep / "summary.csv", newline="") as f:
        rows = {r["job"]: r for r in csv.DictReader(f)}
    assert (rows["0"]["status"], rows["1"]["status"], rows["1"]["step"]) == ("failed", "done", "2")
    failed = _result(sweep / "0")
    assert (failed["job_num"], failed["exit_code"]) == (0, 1)
    assert failed["error"].startswith("training diverged at step 2")
