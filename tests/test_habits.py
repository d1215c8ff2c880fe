"""Habits that Hydra and Lightning users bring (issue 38), through the real entry point: a dry
run (``--cfg``) that runs the whole check, every ``lightning.Trainer`` argument as a
``trainer.X`` key, ``+experiment=`` as well as ``experiment=``, a group typo answered with the
options, and data that is missing refused before a run folder exists."""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning as L
import pytest
from test_cli import assert_one_line_error
from test_cli import run_here as run

MOONS = ["dataset=moons", "model=mlp", "logger=none"]


@pytest.mark.parametrize("args, fragment", [
    (["train", "lr=1e-3"], "lr is now optimizer.lr"),
    (["train", "optimizer.lr=abc"], "optimizer.lr"),
    (["train", "experiment=ddpm_cifar10"], "CIFAR-10 train split not found"),
    (["sample", "ckpt=missing.ckpt"], "missing.ckpt"),
])
@pytest.mark.parametrize("flags", [["--cfg", "job"], ["--cfg", "all", "--resolve"]])
def test_a_dry_run_is_the_whole_check(tmp_path: Path, args, fragment, flags):
    """What the real run would refuse, ``--cfg`` refuses the same way (exit 2, one line)."""
    proc = run(tmp_path, *args, *flags, ok=False)
    assert_one_line_error(proc, fragment)
    assert proc.returncode == 2 and proc.stdout == "" and not any(tmp_path.iterdir())


def test_a_dry_run_that_passes_prints_the_config(tmp_path: Path):
    proc = run(tmp_path, "train", *MOONS, "trainer.overfit_batches=2", "--cfg", "job")
    assert proc.returncode == 0 and "overfit_batches: 2" in proc.stdout
    assert not any(tmp_path.iterdir())


GOOD = {"precision": "32", "max_time": "00:00:01:00", "devices": "1", "profiler": "simple",
        "gradient_clip_algorithm": "norm", "strategy": "auto", "accelerator": "auto",
        "deterministic": "warn", "model_registry": "null", "fast_dev_run": "false"}
SET_BY_DIFFCLI = ("logger", "callbacks", "plugins", "default_root_dir")


def _value(name: str, hint: object) -> str:
    """A value a command line can give the Trainer argument ``name`` of type ``hint``."""
    kinds = (("true", "bool"), ("2", "int"), ("0.5", "float"))
    found = [v for v, marker in kinds if marker in str(hint)]
    return GOOD.get(name) or found[0]


def test_every_trainer_argument_is_a_key_without_plus(tmp_path: Path):
    """Every argument of lightning.Trainer is ``trainer.X=value`` (no ``+``), all in one dry
    run that passes; the four diffcli sets say which key does their job."""
    import typing

    hints = typing.get_type_hints(L.Trainer.__init__)
    names = [n for n in inspect.signature(L.Trainer).parameters if n not in SET_BY_DIFFCLI]
    assert len(names) > 35
    given = [f"trainer.{n}={_value(n, hints[n])}" for n in names]
    proc = run(tmp_path, "train", *MOONS, *given, "--cfg", "job")
    assert proc.returncode == 0, proc.stderr
    trainer = proc.stdout.split("\ntrainer:\n", 1)[1]
    assert all(f"\n  {n}: " in f"\n{trainer}" for n in names)
    for name in SET_BY_DIFFCLI:
        proc = run(tmp_path, "train", *MOONS, f"trainer.{name}=x", "--cfg", "job", ok=False)
        assert_one_line_error(proc, f"trainer.{name} is set by diffcli")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("args, fragment", [
    (["trainer.overfit_batchs=2"], "did you mean trainer.overfit_batches?"),
    (["+trainer.overfit_batches="], "trainer.overfit_batches='' is not an integer or a number"),
    (["trainer.limit_val_batches=abc"], "trainer.limit_val_batches='abc'"),
    (["trainer.deterministic=maybe"], "true or false or warn or null"),
    (["trainer.min_epochs=-1"], "trainer.min_epochs=-1 must be >= 0"),
    (["dataset=mnst"], "dataset=mnst is not an option of dataset (did you mean mnist?); "
                       "choose one of: celeba | cifar10 | digits"),
    (["+experiment=ddpm_cifar"], "did you mean ddpm_cifar10?"),
    (["datset=moons"], "did you mean dataset?"),
])
def test_typos_and_wrong_types_are_one_line_before_anything_is_made(tmp_path: Path, args,
                                                                   fragment):
    proc = run(tmp_path, "train", *MOONS, *args, ok=False)
    assert_one_line_error(proc, fragment)
    assert proc.returncode == 2 and not any(tmp_path.iterdir())


def test_plus_experiment_and_trainer_arguments_train(tmp_path: Path):
    """``+experiment=`` is ``experiment=`` (here refused only for its missing CIFAR-10, before a
    run folder exists); Trainer arguments outside conf/trainer/default.yaml train as given."""
    proc = run(tmp_path, "train", "+experiment=ddpm_cifar10", "logger=none", ok=False)
    assert_one_line_error(proc, "CIFAR-10 train split not found")
    assert not any(tmp_path.iterdir())
    run(tmp_path, "train", *MOONS, "trainer.max_steps=3", "trainer.overfit_batches=1",
        "+trainer.min_epochs=1", "trainer.inference_mode=false", "trainer.limit_val_batches=0")
    assert len(list(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt"))) == 1


def test_a_dry_run_of_a_sweep_checks_every_point(tmp_path: Path):
    proc = run(tmp_path, "train", "-m", *MOONS, "optimizer.lr=1e-3,2e-3", "seed=0,1",
               "--cfg", "job")
    assert proc.returncode == 0 and proc.stdout.startswith("4 sweep points, each passes")
    proc = run(tmp_path, "train", "-m", *MOONS, "optimizer.lr=1e-3,abc", "--cfg", "job", ok=False)
    assert_one_line_error(proc, "sweep point 2 of 2 (optimizer.lr=abc): optimizer.lr")
    assert proc.returncode == 2 and not any(tmp_path.iterdir())
