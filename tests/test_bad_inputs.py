"""A table of bad inputs, driven through the real CLI entry point: each gives a non-zero exit,
exactly one line on stderr that names the offending key or path, no file written, and no
existing checkpoint changed.

Every case runs through the entry point in this process (``test_cli.run_here``; most are
refused before Hydra starts, a few ms each); ``tests/test_cli.py`` covers real processes.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import copy_points_run
from test_cli import TINY_UNET, assert_one_line_error
from test_cli import run_here as run

MISSING = "missing.ckpt"

# (command and overrides, a fragment the one line must contain, exit code)
USAGE: list[tuple[list[str], str, int]] = [
    # train: moved, misspelt, mistyped and out-of-range keys
    (["train", "lr=abc"], "lr is now optimizer.lr", 2),
    # hints name keys that exist for the command (checked for every case: _suggested_keys)
    (["train", "trainer.max_steps=0"], "trainer.max_steps=0 trains nothing", 2),
    (["train", "trainer.max_epochs=0"], "trainer.max_epochs=0 trains nothing", 2),
    (["train", "trainer.limit_train_batches=0.0"], "fast_dev_run=true for a smoke test", 2),
    (["train", "trainer.limit_train_batches=1.5"], "a fraction <= 1.0", 2),
    (["train", "trainer.fast_dev_run=-1"], "trainer.fast_dev_run=-1 must be >= 0", 2),
    (["train", "resume=auto", "runs_root=nowhere"], "pass ckpt_path=<path to a .ckpt>", 1),
    (["sample", "--cfg-scale=3"], "did you mean guidance=3?", 2),
    (["train", "--lr=1e-3"], "did you mean optimizer.lr=1e-3?", 2),
    (["sample", "ckpt=/dev/zero"], "/dev/zero is not a regular file", 1),
    (["train", "runs_root=/proc/nope"], "runs_root=/proc/nope: cannot write there", 2),
    (["train", "runs_root=/dev/null/x"], "/dev/null is not a folder", 2),
    (["export", "out=/proc/nope/x"], "out=/proc/nope/x: cannot write there", 2),
    (["train", "checkpoint_every=abc"], "callbacks.last.every_n_steps", 2),
    (["train", "prediction=v"], "module.prediction", 2),
    (["train", "ema_decay=0.9"], "module.ema_decay", 2),
    (["train", "optimizer.lr=abc"], "optimizer.lr", 2),
    (["train", "optimizer.lr=-1"], "learning rate", 2),
    (["train", "optimizer=adamw", "optimizer.betas=[2,1]"], "beta", 2),
    (["train", "optimizer.weight_decay=abc"], "optimizer.weight_decay", 2),
    (["train", "lr_scheduler.warmup_steps=-1"], "warmup_steps", 2),
    (["train", "lr_scheduler=cosine", "lr_scheduler.min_ratio=2"], "min_ratio", 2),
    (["train", "seed=-1"], "seed", 2),
    (["train", "seed=abc"], "seed", 2),
    (["train", "module.prediction=foo"], "module.prediction", 2),
    (["train", "module.ema_decay=abc"], "module.ema_decay", 2),
    (["train", "module.ema_sigma_rel=0.5"], "ema_sigma_rel", 2),
    (["train", "module.ema_sigma_rel=abc"], "module.ema_sigma_rel", 2),
    (["train", "trainer.max_time=abc"], "max_time", 2),
    (["train", "module.min_snr_gamma=abc"], "module.min_snr_gamma", 2),
    (["train", "module.ema_decay=2"], "ema_decay=2", 2),
    (["train", "trainer.max_stepz=3"], "did you mean trainer.max_steps", 2),
    (["train", "trainer.max_steps=-5"], "trainer.max_steps", 2),
    (["train", "trainer.max_steps=abc"], "trainer.max_steps", 2),
    (["train", "trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches", 2),
    (["train", "trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val", 2),
    (["train", "trainer.precision=17"], "trainer.precision", 2),
    (["train", "trainer.accelerator=gpu"], "no CUDA device", 2),
    (["train", "trainer=gpu"], "no CUDA device", 2),
    (["train", "trainer=ddp"], "no CUDA device", 2),
    (["train", "trainer.log_every_n_steps=0"], "trainer.log_every_n_steps", 2),
    (["train", "callbacks.snapshot.every_n_steps=-1"], "callbacks.snapshot", 2),
    (["train", "callbacks.last.every_n_steps=abc"], "callbacks.last.every_n_steps", 2),
    (["train", "callbacks.preview.num_images=0"], "callbacks.preview", 2),
    (["train", "callbacks.preview.sampler.steps=0"], "steps", 2),
    (["train", "schedule.num_timesteps=abc"], "schedule.num_timesteps", 2),
    (["train", "schedule.beta_end=2"], "schedule", 2),
    (["train", "model.base_channels=abc"], "model.base_channels", 2),
    (["train", "model.channel_mults=abc"], "model.channel_mults", 2),
    (["train", "model.sneaky=1"], "sneaky", 2),
    (["train", "dataset.batch_size=abc"], "dataset.batch_size", 2),
    (["train", "dataset.image_size=abc"], "dataset.image_size", 2),
    (["train", "dataset.root=~/data"], "quote", 2),
    (["train", "dataset=nope"], "dataset", 2),
    (["train", "model=nope"], "model", 2),
    (["train", "logger=nope"], "logger", 2),
    (["train", "resume=maybe"], "resume", 2),
    (["train", "ckpt_path="], "ckpt_path", 2),
    (["train", "runs_root="], "runs_root", 2),
    (["train", "notanoverride"], "notanoverride", 2),
    (["train", f"ckpt_path={MISSING}"], MISSING, 1),
    # sample
    (["sample", "n=-5"], "n=-5", 2),
    (["sample", "n=abc"], "n=", 2),
    (["sample", "n=0"], "n=0", 2),
    (["sample", "steps=abc"], "steps", 2),
    (["sample", "steps=0"], "steps=0", 2),
    (["sample", "batch_size=0"], "batch_size", 2),
    (["sample", "sampler=ddim", "sampler.eta=abc"], "sampler.eta", 2),
    (["sample", "sampler=ddim", "sampler.eta=-1"], "eta", 2),
    (["sample", "sampler.steps=0"], "steps", 2),
    (["sample", "sampler=ddpm", "sampler.grid=karras"], "grid", 2),
    (["sample", "sampler.grid=foo"], "grid", 2),
    (["sample", "sampler=heun", "sampler.rho=-1"], "rho", 2),
    (["sample", "sampler=nope"], "sampler", 2),
    (["sample", "ckpt="], "ckpt", 2),
    (["sample", "seed=-1"], "seed", 2),
    (["sample", "seeds=abc"], "seeds", 2),
    (["sample", "seeds=5-3"], "seeds", 2),
    (["sample", "seeds=0-999999999"], "seeds", 2),
    (["sample", "n=100000000"], "seeds", 2),
    (["sample", "trajectory=-1"], "trajectory", 2),
    (["sample", "clip_denoised=maybe"], "clip_denoised", 2),
    (["sample", "use_ema=abc"], "use_ema", 2),
    (["sample", "overwrite=maybe"], "overwrite", 2),
    (["sample", "device=tpu"], "device", 2),
    (["sample", "precision=16"], "precision", 2),
    (["sample", "foo=1"], "foo", 2),
    (["sample", f"ckpt={MISSING}"], MISSING, 1),
    # eval-fid
    (["eval-fid", "repeats=0"], "repeats", 2),
    (["eval-fid", "n=1"], "n=1", 2),
    (["eval-fid", "ref_n=abc"], "ref_n", 2),
    (["eval-fid", "batch_size=0"], "batch_size", 2),
    (["eval-fid", "num_workers=-1"], "num_workers", 2),
    (["eval-fid", "samples="], "samples", 2),
    (["eval-fid", "extractor="], "extractor", 2),
    (["eval-fid", "metrics=fid"], "metrics", 2),
    # noise-viz
    (["noise-viz", "num_timesteps=1"], "num_timesteps", 2),
    (["noise-viz", "image_size=0"], "image_size", 2),
    (["noise-viz", "num_images=0"], "num_images", 2),
    (["noise-viz", "gif_frames=1"], "gif_frames", 2),
    (["noise-viz", "reverse=maybe"], "reverse", 2),
]


def run_in_process(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture) -> tuple[int | str | None, list[str]]:
    """``diffcli <args>`` through the real entry point in this process, from ``cwd``: (exit
    code, the non-blank lines of stderr)."""
    from conftest import fresh_hydra

    from diffcli.cli import app

    fresh_hydra()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["diffcli"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        app(args)
    err = capsys.readouterr().err
    return exit_info.value.code, [ln for ln in err.splitlines() if ln.strip()]


def _digest(folder: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, points_checkpoint: Path) -> Path:
    """A folder holding one trained run (so commands that want the newest run find one)."""
    cwd = tmp_path_factory.mktemp("bad-inputs")
    copy_points_run(points_checkpoint, cwd)
    return cwd


def test_the_table_is_large_enough():
    assert len(USAGE) >= 60


@pytest.mark.parametrize("args, fragment, code", USAGE,
                         ids=[" ".join(a) for a, _, _ in USAGE])
def test_bad_input(args: list[str], fragment: str, code: int, workdir: Path,
                   monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    before = _digest(workdir)
    got, lines = run_in_process(args, workdir, monkeypatch, capsys)
    assert got == code, lines
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert fragment in lines[0], lines[0]
    assert not any("Traceback" in ln for ln in lines)
    assert _digest(workdir) == before  # nothing written, no checkpoint changed
    choices = re.findall(r"\b([a-z_]+=[a-z0-9_]+)\b", lines[0])  # e.g. sampler=ddim
    for key in _suggested_keys(lines[0], args):
        assert _is_a_key(args[0].replace("-", "_"), key, choices), f"{key} in: {lines[0]}"


@pytest.mark.parametrize("args", [
    ["train", "trainer=fsdp", "trainer.accelerator=cpu"],
    pytest.param(["train", "trainer=fsdp"], marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="refused only without CUDA")),
], ids=" ".join)
def test_fsdp_on_the_cpu_is_refused_in_one_line_before_any_work(
        args: list[str], workdir: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture):
    """Lightning refuses FSDP with accelerator=cpu and torch's FullyShardedDataParallel needs
    an accelerator device: one line naming trainer=ddp, as the table's cases (kept out of the
    table, whose count the docs state)."""
    test_bad_input(args, "trainer=fsdp needs CUDA GPUs (FSDP has no CPU backend in torch ", 2,
                   workdir, monkeypatch, capsys)
    _, lines = run_in_process(args, workdir, monkeypatch, capsys)
    assert lines[0].endswith("use trainer=ddp trainer.accelerator=cpu on the CPU"), lines


SUGGESTION = re.compile(r"(?:did you mean|is now|use|pass|set|or|lower|e\.g\.) "
                        r"`?(?:diffcli \w+ )?([a-z_][a-z0-9_.]*)(?:=|\?|\b)")


def _suggested_keys(line: str, args: list[str]) -> list[str]:
    """The keys an error line suggests (``did you mean X=``, ``is now X``, ``pass X=``, ...),
    without the ones the user typed."""
    typed = {a.lstrip("-+~").split("=")[0] for a in args}
    message = line.split(": ", 1)[1]
    found = [m for m in SUGGESTION.findall(message) if "." in m or f"{m}=" in message]
    placeholders = {"key", "group"}  # "overrides look like key=value or group=option"
    return [k for k in found if k not in typed | placeholders and not k[0].isdigit()]


def _is_a_key(command: str, key: str, choices: list[str] = ()) -> bool:
    """Whether ``key`` (``optimizer.lr``, ``trainer.max_steps``, ``ckpt_path``) is an override
    that ``diffcli <command>`` takes, with the group ``choices`` the same hint suggests."""
    from omegaconf import OmegaConf

    from diffcli.cli.overrides import group_names, validate
    from diffcli.workflows.trainer_args import trainer_keys

    groups = group_names(command)
    cfg = validate(command, [c for c in choices if c.split("=")[0] in groups])
    top, _, rest = key.partition(".")
    if top not in cfg:
        return False
    if top == "trainer" and rest:
        return rest.split(".")[0] in trainer_keys()
    return not rest or OmegaConf.select(cfg, key, default="<missing>") != "<missing>"


def test_the_hint_checker_can_fail():
    assert _suggested_keys("error: x is unknown; pass ckpt=<path>", ["train"]) == ["ckpt"]
    assert not _is_a_key("train", "ckpt")  # train's key is ckpt_path
    assert _is_a_key("train", "ckpt_path") and _is_a_key("train", "optimizer.lr")
    assert _is_a_key("sample", "guidance") and not _is_a_key("sample", "cfg_scale")


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"\x00\x01random bytes" * 100, pickle.dumps({"a": 1})])
def test_a_file_that_is_not_a_checkpoint(content: bytes, tmp_path: Path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content)
    proc = run(tmp_path, "sample", f"ckpt={bad}", ok=False)
    assert_one_line_error(proc, f"{bad} is not a diffcli checkpoint")
    assert "weights_only" not in proc.stderr  # torch's advice to load unsafely is not relayed
    assert "Warning" not in proc.stderr


@pytest.mark.slow
def test_runtime_refusals_are_one_line_and_change_nothing(workdir: Path, tmp_path: Path):
    """Found while the command runs: still one line, exit 1, the existing run untouched."""
    before = _digest(workdir / "outputs")
    ckpt = next(workdir.glob("outputs/*/*/checkpoints/last.ckpt"))
    cases = [
        (["train", "dataset=swiss_roll", "logger=none"], "model=mlp"),
        (["train", "dataset=mnist", f"dataset.root={tmp_path}"], str(tmp_path)),
        (["train", *TINY_UNET, "model.channel_mults=[]", "logger=none"], "channel_mults"),
        (["eval-fid", "extractor=standin", "n=8", f"ckpt={ckpt}"], "FID needs images"),
        (["noise-viz", "schedules=[nope]"], "nope"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run(workdir, *args, ok=False), fragment)
    assert len(list(workdir.glob("outputs/**/*.ckpt"))) == 1  # no checkpoint was added
    for path, digest in before.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path


def test_stored_config_with_an_unknown_prediction_is_refused(workdir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture):
    ckpt = next(workdir.glob("outputs/*/*/checkpoints/last.ckpt"))
    data = torch.load(ckpt, weights_only=True)
    data["diffcli"]["config"]["module"]["prediction"] = "foo"
    bad = tmp_path / "bad.ckpt"
    torch.save(data, bad)
    code, lines = run_in_process(["sample", f"ckpt={bad}"], tmp_path, monkeypatch, capsys)
    assert code != 0 and len(lines) == 1 and "predicts" in lines[0]


@pytest.mark.parametrize("code, text", [(28, "No space left on device"),
                                        (13, "Permission denied"),
                                        (30, "Read-only file system")])
def test_disk_errors_name_the_path(code: int, text: str, workdir: Path, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture):
    """A full disk, a read-only or forbidden folder while writing: one line naming the path
    (tried by making the sample writer fail the way the OS does; root ignores permissions)."""
    import diffcli.workflows.draw_samples as sample_workflow

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise OSError(code, text, str(tmp_path / "samples.npz"))

    monkeypatch.setattr(sample_workflow, "write", refuse)
    before = _digest(workdir)
    got, lines = run_in_process(["sample", "n=4", "steps=2", "sampler=ddim"], workdir,
                                monkeypatch, capsys)
    assert got == 1
    assert lines[-1] == f"error: cannot write {tmp_path / 'samples.npz'}: {text} (errno {code})"
    assert _digest(workdir) == before


def test_an_image_folder_with_a_symlink_loop_is_read_once(tmp_path: Path):
    from PIL import Image

    from diffcli.data.vision import find_images

    (tmp_path / "a").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(tmp_path / "a" / f"{i}.png")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)  # a -> loop -> the root again
    assert len(find_images(tmp_path)) == 4


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    """A folder holding one tiny trained 8x8 image run (only read, but by the full-disk tests
    below, which check that it is unchanged)."""
    cwd = tmp_path_factory.mktemp("image-run")
    run(cwd, "train", *TINY_UNET, "trainer.max_steps=1", "logger=none", "callbacks.preview=null")
    return cwd


def test_an_edited_image_shape_is_refused(image_run: Path, tmp_path: Path):
    from diffcli.checkpoint import load_checkpoint
    from diffcli.errors import CheckpointError

    ckpt = next(image_run.glob("outputs/*/*/checkpoints/last.ckpt"))
    data = torch.load(ckpt, weights_only=True)
    data["diffcli"]["data"]["shape"] = [1, 64, 64]
    torch.save(data, tmp_path / "edited.ckpt")
    with pytest.raises(CheckpointError, match="images are 64x64 but its dataset says"):
        load_checkpoint(tmp_path / "edited.ckpt")


def test_a_shape_or_batch_that_cannot_fit_is_one_line_before_any_work(
        image_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture):
    """A checkpoint whose images and dataset both say 4096x4096 (consistent, so only its
    memory gives it away), and a batch of ten million 8x8 images: refused from the traced
    footprint before the network is built, naming what would fit; nothing written."""
    import diffcli
    from diffcli.errors import DiffcliError

    ckpt = next(image_run.glob("outputs/*/*/checkpoints/last.ckpt"))
    data = torch.load(ckpt, weights_only=True)
    data["diffcli"]["data"]["shape"] = [1, 4096, 4096]
    data["diffcli"]["config"]["dataset"]["image_size"] = 4096
    big = tmp_path / "big.ckpt"
    torch.save(data, big)
    before = _digest(tmp_path) | _digest(image_run)
    cases = [(["sample", f"ckpt={big}"], "1x4096x4096 samples 64 at a time"),
             (["eval-fid", f"ckpt={big}", "extractor=standin", "n=64"],
              "1x4096x4096 samples 64 at a time"),
             (["sample", f"ckpt={ckpt}", "n=10000000", "batch_size=10000000", "sampler=ddim"],
              "batch_size=10000000 does not fit in memory")]
    for args, fragment in cases:
        code, lines = run_in_process(args, tmp_path, monkeypatch, capsys)
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
        assert fragment in lines[0], lines[0]
        assert re.search(r"(batch_size=\d+ fits|even batch_size=1 needs)$", lines[0]), lines[0]
    with pytest.raises(DiffcliError, match="1x4096x4096 samples 8 at a time"):
        diffcli.load(big).sample(n=8, batch_size=8)
    assert _digest(tmp_path) | _digest(image_run) == before


def test_a_training_batch_that_cannot_fit_is_one_line_before_the_network_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Forward and backward traced with 5 copies of the weights, against a device with 64 MiB
    free (set here): the one line names the batch size that fits; no run folder is made."""
    from diffcli.nets import memory

    monkeypatch.setattr(memory, "free_memory", lambda device: 64 * 2**20)
    code, lines = run_in_process(["train", *TINY_UNET, "dataset.batch_size=1024", "logger=none"],
                                 tmp_path, monkeypatch, capsys)
    assert code == 1 and lines[-1].startswith("error: dataset.batch_size=1024 does not fit"), lines
    fits = int(re.search(r"dataset\.batch_size=(\d+) fits$", lines[-1]).group(1))
    assert 1 <= fits < 1024
    assert not list(tmp_path.glob("outputs/*/*/checkpoints"))


@pytest.mark.parametrize("args, written", [
    (["export", "format=safetensors"], "export/safetensors/model.safetensors"),
    (["export", "format=diffusers"], "export/diffusers/"),
    (["eval-fid", "n=8", "extractor=standin", "sampler=ddim", "steps=2"], "eval/fid-ddim-2-n8"),
    (["eval-nll", "n=8"], "eval/nll-"),
    (["train", *TINY_UNET, "trainer.max_steps=1", "logger=none", "callbacks.preview=null"],
     "checkpoints/last.ckpt"),
], ids=["export-safetensors", "export-diffusers", "eval-fid-json", "eval-nll-json",
        "train-checkpoint"])
def test_a_full_disk_is_one_line_naming_the_final_file(args: list[str], written: str,
                                                       image_run: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture):
    """Every durable write ends in an fsync; making it fail as a full disk does gives one line
    that names the output's final path (not its temporary name), exit 1, and no partial
    output: the run's files are as they were."""
    import errno
    import os

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    ckpt = next(image_run.glob("outputs/*/*/checkpoints/last.ckpt"))
    before = _digest(image_run)
    monkeypatch.setattr(os, "fsync", full)
    code, lines = run_in_process([*args, f"ckpt={ckpt}"] if args[0] != "train" else args,
                                 image_run, monkeypatch, capsys)
    assert code == 1 and lines[-1].startswith("error: cannot write "), lines
    assert written in lines[-1] and ".tmp" not in lines[-1], lines[-1]
    assert lines[-1].endswith("No space left on device (errno 28)")
    after = _digest(image_run)
    assert {p: d for p, d in after.items() if p in before} == before
    new = [p for p in after if p not in before]
    assert all(p.name in ("cli.log", "config.yaml", "hydra.yaml", "overrides.yaml", "run.json")
               for p in new), new  # a failed training leaves its log, never a checkpoint
