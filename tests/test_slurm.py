"""Training in a SLURM job, piece by piece: which job this is, its run folder across requeues,
locks of a previous attempt, requeueing, logs that a continued run appends to, and the last
step's metrics."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from submitit.core.utils import FailedJobError, UncompletedJobError

from diffcli import slurm
from diffcli.cli.resolvers import at_least_one
from diffcli.data.datamodule import TensorDataModule
from diffcli.diffusion.schedules import linear_schedule
from diffcli.errors import DiffcliError
from diffcli.lit.callbacks import LastStepMetrics
from diffcli.lit.loggers import RunCSVLogger, trim_metrics
from diffcli.lit.module import DiffusionModule
from diffcli.nets.mlp import MLP
from diffcli.runs import LOCK, RunLock, live_holder
from diffcli.slurm import SlurmJob, job_run_dir, requeue, slurm_job
from diffcli.workflows.launchers import check_devices, failure_line, launch_failure


def test_slurm_job_from_the_environment():
    assert slurm_job({}) is None
    assert slurm_job({"SLURM_JOB_ID": "12"}) == SlurmJob("12", 0, 0)
    job = slurm_job({"SLURM_JOB_ID": "13", "SLURM_ARRAY_JOB_ID": "10", "SLURM_ARRAY_TASK_ID": "3",
                     "SLURM_RESTART_COUNT": "2", "SLURM_PROCID": "1"})
    assert job == SlurmJob("10_3", 2, 1) and job.requeued  # scontrol requeue takes 10_3


def test_a_requeued_job_finds_its_run_folder(tmp_path: Path):
    first = job_run_dir(tmp_path / "outputs" / "day" / "10-00-00", SlurmJob("7", 0, 0))
    assert first == tmp_path / "outputs" / "day" / "10-00-00" and first.is_dir()
    again = job_run_dir(tmp_path / "outputs" / "day2" / "11-30-00", SlurmJob("7", 1, 0))
    assert again.resolve() == first.resolve()  # the requeued attempt: the same folder
    other = job_run_dir(tmp_path / "outputs" / "day2" / "11-30-00", SlurmJob("8", 0, 0))
    assert other.resolve() != first.resolve()
    # a job id SLURM hands out again, not requeued: a fresh folder, not the old run's
    reused = job_run_dir(tmp_path / "outputs" / "day3" / "12-00-00", SlurmJob("7", 0, 0))
    assert reused.resolve() not in (first.resolve(), other.resolve())
    # the other tasks of a multi-task job take rank 0's folder of this attempt
    assert job_run_dir(tmp_path / "outputs" / "x" / "y", SlurmJob("7", 0, 1)).resolve() == \
        reused.resolve()


def test_a_rank_waits_only_so_long_for_rank_0(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(slurm, "POINTER_WAIT_S", 0.3)
    with pytest.raises(DiffcliError, match="did not name its run folder"):
        job_run_dir(tmp_path / "outputs" / "d" / "t", SlurmJob("9", 0, 2))


def test_the_lock_of_a_previous_attempt_of_this_job_is_stale(tmp_path: Path, monkeypatch):
    (tmp_path / LOCK).write_text("4242 another-node 55_1\n")
    assert live_holder(tmp_path) == 4242  # another machine's lock counts as live ...
    monkeypatch.setenv("SLURM_JOB_ID", "56")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "55")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    assert live_holder(tmp_path) is None  # ... unless it was this job's, before its requeue
    with RunLock(tmp_path):
        assert (tmp_path / LOCK).read_text().split() == [str(os.getpid()),
                                                         socket.gethostname(), "55_1"]


def _fake_scontrol(tmp_path: Path, monkeypatch, body: str) -> Path:
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "scontrol"
    script.write_text(f"#!/bin/sh\necho \"$*\" >> {tmp_path}/calls\n{body}\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    return tmp_path / "calls"


def test_requeue_runs_scontrol(tmp_path: Path, monkeypatch):
    calls = _fake_scontrol(tmp_path, monkeypatch, "exit 0")
    assert requeue(SlurmJob("10_3", 0, 0)).startswith("requeued SLURM job 10_3")
    assert calls.read_text() == "requeue 10_3\n"


def test_a_refused_requeue_says_so(tmp_path: Path, monkeypatch):
    _fake_scontrol(tmp_path, monkeypatch, "echo 'slurm_requeue error: Job is not requeueable' "
                                          ">&2; exit 1")
    message = requeue(SlurmJob("11", 0, 0))
    assert "could not requeue SLURM job 11" in message and "not requeueable" in message


def _tiny_fit(root: Path, max_steps: int, every: int, ckpt: str | None = None) -> L.Trainer:
    torch.manual_seed(0)
    module = DiffusionModule(MLP(data_shape=(2,), hidden=16, depth=1), linear_schedule(),
                             ema_decay=None)
    dm = TensorDataModule(torch.randn(64, 2), batch_size=16, kind="points")
    trainer = L.Trainer(max_steps=max_steps, log_every_n_steps=every, accelerator="cpu",
                        logger=RunCSVLogger(root, name="logs", version=""),
                        callbacks=[LastStepMetrics()], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=root)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    return trainer


def _steps(root: Path) -> list[int]:
    with open(root / "logs" / "metrics.csv", newline="") as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_a_run_shorter_than_the_log_interval_logs_its_last_step(tmp_path: Path, capsys):
    _tiny_fit(tmp_path, max_steps=3, every=50)
    assert _steps(tmp_path) == [2]  # Lightning alone logged nothing
    assert "log_every_n_steps=50 is more than this run's 3 steps" in capsys.readouterr().err
    _tiny_fit(tmp_path / "b", max_steps=7, every=3)
    assert _steps(tmp_path / "b") == [2, 5, 6]  # and the last steps of a longer one


def test_a_continued_run_appends_to_its_csv(tmp_path: Path):
    trainer = _tiny_fit(tmp_path, max_steps=6, every=1)
    ckpt = tmp_path / "at-6.ckpt"
    trainer.save_checkpoint(ckpt)
    _tiny_fit(tmp_path, max_steps=8, every=1, ckpt=str(ckpt))  # ran on to 8, then died
    assert trim_metrics(tmp_path / "logs" / "metrics.csv", 6) == 2
    _tiny_fit(tmp_path, max_steps=10, every=1, ckpt=str(ckpt))  # continues from step 6
    assert _steps(tmp_path) == list(range(10))  # Lightning's writer would have deleted 0..5


def test_launcher_checks_and_failure_lines():
    cfg = OmegaConf.create({"trainer": {"devices": 8, "num_nodes": 2}})
    check_devices(cfg, 8, 2)
    with pytest.raises(DiffcliError, match="gpus_per_node=4 but trainer.devices=8"):
        check_devices(cfg, 4, 2)
    with pytest.raises(DiffcliError, match="nodes=1 but trainer.num_nodes=2"):
        check_devices(cfg, 8, 1)
    assert (at_least_one(None), at_least_one(0), at_least_one(4)) == (1, 1, 4)
    refused = FailedJobError("sbatch: error: invalid partition specified: gpu\nsbatch: error: x")
    assert launch_failure(refused, "logs/") == \
        "sbatch refused the sweep: sbatch: error: invalid partition specified: gpu"
    job = UncompletedJobError("Job 5_0 (task: 0) with path x\nhas not produced any output\n"
                              "Error stream produced:\nnote: x\nerror: dataset.root=/nope: no "
                              "such folder\n")
    assert launch_failure(job, "logs/") == \
        "a sweep job failed: error: dataset.root=/nope: no such folder (logs: logs/)"
    crash = UncompletedJobError("Job 5_1\nTraceback ...\nRuntimeError: CUDA out of memory")
    assert failure_line(crash) == "RuntimeError: CUDA out of memory"
    assert launch_failure(ValueError("a bug"), "logs/") is None  # bugs keep their traceback


def test_a_continued_run_continues_its_wandb_run(tmp_path: Path, monkeypatch):
    """The wandb run id is kept in the run folder: a restarted job resumes the same run."""
    from diffcli.lit.loggers import WANDB_ID_FILE, make_wandb_logger, wandb_run_id

    first = make_wandb_logger(str(tmp_path), mode="offline", group="sweep-x")
    run_id = (tmp_path / WANDB_ID_FILE).read_text().strip()
    assert first._wandb_init["id"] == run_id and first._wandb_init["resume"] == "allow"
    assert first._wandb_init["group"] == "sweep-x"
    again = make_wandb_logger(str(tmp_path), mode="offline")
    assert again._wandb_init["id"] == run_id
    assert wandb_run_id(tmp_path / "other", rank=1) != run_id  # rank > 0 writes nothing
    assert not (tmp_path / "other" / WANDB_ID_FILE).exists()
