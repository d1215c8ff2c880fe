"""The reliability guarantees (docs/reliability.md), replayed from one table of probes as a user
or an attacker would try them: each probe asserts the exit code, the one line, and that no file
the user had was changed and no partial output is left.

- crafted files: a checkpoint with a pickled payload, a stored config naming code, an export
  whose JSON sidecar was forged, a diffusers folder holding a pickle instead of safetensors, a
  checkpoint whose shape cannot fit (in this process: the refusal comes before any work);
- Ctrl-C in every command that runs a network (raised where the network is first called);
- real signals: ``kill -9`` during ``sample`` and ``export``, Ctrl-C during ``sample``, SIGTERM
  during ``export``, two samplers started at once on one run, SIGTERM to a DDP run (serial;
  it also checks DDP training itself).

Deeper tables of the same guarantees: tests/test_crafted_checkpoints.py (26 crafted
checkpoints x 7 ways in), tests/test_bad_inputs.py, tests/test_ways_in.py,
tests/test_run_safety.py (training signals, locks, SIGKILL and resume).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_bad_inputs import run_in_process
from test_cli import EXE, TINY_UNET, run_here
from test_crafted_checkpoints import Touch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A folder with one tiny trained 8x8 image run and its safetensors and diffusers exports."""
    cwd = tmp_path_factory.mktemp("reliability")
    run_here(cwd, "train", *TINY_UNET, "trainer.max_steps=2", "logger=none",
             "callbacks.preview=null", "objective=ddpm")  # ONNX: the chain's integer timesteps
    for fmt in ("safetensors", "diffusers"):
        run_here(cwd, "export", f"format={fmt}")
    return cwd


def _ckpt(home: Path) -> Path:
    return next(home.glob("outputs/*/*/checkpoints/last.ckpt"))


def _digest(*roots: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for root in roots for p in root.rglob("*") if p.is_file()}


# ---------------------------------------------------------------- crafted files, in process

def _pickled_checkpoint(home: Path, dst: Path, target: Path) -> Path:
    data = torch.load(_ckpt(home), weights_only=True)
    data["diffcli"]["config"]["model"]["hidden"] = Touch(target)
    torch.save(data, dst / "evil.ckpt")
    return dst / "evil.ckpt"


def _config_naming_code(home: Path, dst: Path, target: Path) -> Path:
    data = torch.load(_ckpt(home), weights_only=True)
    data["diffcli"]["config"]["model"]["_target_"] = "shutil.copyfile"
    data["diffcli"]["config"]["model"]["dst"] = str(target)
    torch.save(data, dst / "evil.ckpt")
    return dst / "evil.ckpt"


def _forged_sidecar(home: Path, dst: Path, target: Path) -> Path:
    export = next(home.glob("outputs/*/*/export/safetensors"))
    for name in ("model.safetensors", "model.json"):
        (dst / name).write_bytes((export / name).read_bytes())
    described = json.loads((dst / "model.json").read_text())
    described["config"]["model"] = {"_target_": "os.system", "command": f"touch {target}"}
    (dst / "model.json").write_text(json.dumps(described))
    return dst / "model.safetensors"


def _diffusers_pickle(home: Path, dst: Path, target: Path) -> Path:
    export = next(home.glob("outputs/*/*/export/diffusers"))
    folder = dst / "pipe"
    for path in export.rglob("*"):
        if path.is_file() and not path.name.endswith(".safetensors"):
            out = folder / path.relative_to(export)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(path.read_bytes())
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps(Touch(target)))
    return folder


def _too_large(home: Path, dst: Path, target: Path) -> Path:
    data = torch.load(_ckpt(home), weights_only=True)
    data["diffcli"]["data"]["shape"] = [1, 16384, 16384]  # over 100 GiB a sample
    data["diffcli"]["config"]["dataset"]["image_size"] = 16384
    torch.save(data, dst / "big.ckpt")
    return dst / "big.ckpt"


@dataclass(frozen=True)
class Crafted:
    make: Callable[[Path, Path, Path], Path]  # (home, folder, target) -> the path to pass
    fragment: str  # of the one line


CRAFTED = {
    "checkpoint-with-a-pickle": Crafted(_pickled_checkpoint, "loads without running code"),
    "stored-config-names-code": Crafted(_config_naming_code, "names 'shutil.copyfile'"),
    "export-with-a-forged-sidecar": Crafted(_forged_sidecar, "refusing to load"),
    "diffusers-folder-with-a-pickle": Crafted(_diffusers_pickle, ".bin"),
    "shape-that-cannot-fit": Crafted(_too_large, "does not fit in memory"),
}
READERS = [["sample"], ["eval-fid", "extractor=standin", "n=8"], ["noise-viz", "reverse=true"]]


@pytest.mark.parametrize("name", CRAFTED)
def test_crafted_files_are_one_line_for_every_reader(name: str, home: Path, tmp_path: Path,
                                                     monkeypatch, capsys):
    probe = CRAFTED[name]
    target = tmp_path / "PWNED"
    path = probe.make(home, tmp_path, target)
    before = _digest(home, tmp_path)
    for reader in READERS:
        code, lines = run_in_process([*reader, f"ckpt={path}"], home, monkeypatch, capsys)
        assert code == 1 and len(lines) == 1 and lines[0].startswith("error: "), (reader, lines)
        assert probe.fragment in lines[0], (reader, lines[0])
        assert not target.exists() and _digest(home, tmp_path) == before, reader


# ---------------------------------------------------------------- Ctrl-C in every command

CTRL_C = {
    "sample": ["sample", "sampler=ddim", "steps=2", "n=4"],
    "eval-fid": ["eval-fid", "extractor=standin", "n=8", "sampler=ddim", "steps=2"],
    "eval-nll": ["eval-nll", "n=8"],
    "export-onnx": ["export", "format=onnx"],
    "noise-viz": ["noise-viz", "reverse=true"],
}


@pytest.mark.parametrize("name", CTRL_C)
def test_ctrl_c_in_every_command_is_one_line_and_leaves_nothing(name: str, home: Path,
                                                                 monkeypatch, capsys):
    """Ctrl-C arrives while the network runs (its first call raises KeyboardInterrupt, as the
    signal does): exit 130, one line, no output or temporary folder, the run unchanged."""
    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    before = _digest(home)
    monkeypatch.setattr(torch.nn.Module, "__call__", interrupted)
    code, lines = run_in_process(CTRL_C[name], home, monkeypatch, capsys)
    monkeypatch.undo()
    assert code == 130 and lines[-1].startswith("error: interrupted by Ctrl-C"), lines
    assert not any("Traceback" in ln for ln in lines)
    assert _digest(home) == before
    assert not [p for p in home.rglob(".*.tmp")], "a temporary folder was left"


# ---------------------------------------------------------------- real signals

def _start(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*EXE, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "COLUMNS": "200", "PYTHONFAULTHANDLER": "1"})


def _finish(proc: subprocess.Popen, timeout: float) -> str:
    """``proc``'s stderr once it exits; if it has not exited within ``timeout`` s, SIGABRT
    makes it print every thread's Python stack (faulthandler) into the failure message."""
    try:
        return proc.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        err = proc.communicate(timeout=60)[1]
        raise AssertionError(f"still running {timeout:g} s after the signal; its stacks:\n"
                             f"{err[-6000:]}") from None


def _wait_for(proc: subprocess.Popen, found: Callable[[], list[Path]]) -> list[Path]:
    deadline = time.monotonic() + 120
    while not (got := found()):
        assert proc.poll() is None, proc.stderr.read()[-2000:] if proc.stderr else ""
        assert time.monotonic() < deadline, "the command never started writing"
        time.sleep(0.05)
    return got


@pytest.fixture
def run_copy(home: Path, tmp_path: Path) -> Path:
    """A private copy of the home folder (signals must not race the other tests' reads)."""
    import shutil

    shutil.copytree(home, tmp_path / "home")
    return tmp_path / "home"


SIGNALS = {  # command, where its temporary folder appears, signal, exit code, one line
    "kill-9-sample": (["sample", "n=200000", "sampler=ddim", "steps=50"], "samples",
                      signal.SIGKILL, -9, None),
    "kill-9-export": (["export", "format=onnx", "overwrite=true"], "export",
                      signal.SIGKILL, -9, None),
    "ctrl-c-sample": (["sample", "n=200000", "sampler=ddim", "steps=50"], "samples",
                      signal.SIGINT, 130, "error: interrupted by Ctrl-C"),
    "sigterm-export": (["export", "format=onnx", "overwrite=true"], "export",
                       signal.SIGTERM, 143, "error: interrupted by SIGTERM"),
}


# serial: in the parallel pass of two clean-clone CI runs (issue 34's stop) the Ctrl-C'd
# `diffcli sample` twice failed to exit within 120 s (and once in the serial pass), while it
# passes alone and under load in about 2 s (25 tries); the cause is not found, so a hang now
# fails with every thread's stack (faulthandler). The same tries found a Ctrl-C landing in
# OutputFolder.__enter__ left its folders behind, fixed with deferred_signals.
@pytest.mark.serial
@pytest.mark.parametrize("name", SIGNALS)
def test_a_signal_mid_write_leaves_the_earlier_outputs_and_no_partial_one(name: str,
                                                                          run_copy: Path):
    """The signal comes once the command's hidden temporary folder exists. Afterwards every
    earlier file is unchanged and no output appeared; a ``kill -9`` leaves its temporary folder
    behind (nothing runs at SIGKILL), which the next output in that folder sweeps away."""
    args, where, signum, code, line = SIGNALS[name]
    run_dir = _ckpt(run_copy).parent.parent
    before = _visible(run_copy)
    proc = _start(run_copy, *args)
    _wait_for(proc, lambda: list((run_dir / where).glob(".*.tmp")))
    proc.send_signal(signum)
    err = _finish(proc, 120)
    assert proc.returncode == code, err[-2000:]
    if line is not None:
        lines = [ln for ln in err.splitlines() if ln.startswith(("error", "Traceback"))]
        assert len(lines) == 1 and lines[0].startswith(line), err[-2000:]
    temporary = list((run_dir / where).glob(".*.tmp"))
    assert bool(temporary) == (signum == signal.SIGKILL), temporary  # cleaned up unless -9
    assert _visible(run_copy) == before  # every earlier file as it was, nothing new
    if where == "samples":
        run_here(run_copy, "sample", "sampler=ddim", "steps=2", "n=2")
    else:
        run_here(run_copy, "export", "format=safetensors", "overwrite=true")
    assert not list((run_dir / where).glob(".*.tmp")), "a stale temporary folder was kept"
    left = {p.name for p in (run_dir / where).iterdir()}
    assert left == ({"ddim-2"} if where == "samples" else {"safetensors", "diffusers"}), left


def _visible(root: Path) -> dict[Path, str]:
    """:func:`_digest` of the files outside hidden temporary folders."""
    return {p: d for p, d in _digest(root).items() if not any(
        part.startswith(".") and part.endswith(".tmp") for part in p.parts)}


def test_two_samplers_at_once_on_one_run_write_two_whole_folders(run_copy: Path):
    procs = [_start(run_copy, "sample", "sampler=ddim", "steps=3", "n=64") for _ in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    folders = sorted(_ckpt(run_copy).parent.parent.glob("samples/ddim-3*"))
    assert [f.name for f in folders] == ["ddim-3", "ddim-3_2"]
    for folder in folders:
        assert len(list((folder / "images").iterdir())) == 64
        assert json.loads((folder / "meta.json").read_text())["n"] == 64


@pytest.mark.serial
def test_ddp_on_the_cpu_trains_one_model_and_sigterm_saves_once_and_ends_every_rank(
        tmp_path: Path):
    """Two DDP processes on the CPU (was test_train_cli's DDP test, merged here to launch DDP
    once): the header counts both devices, previews come from rank 0 only, and SIGTERM to rank
    0 once a checkpoint exists finishes the step, saves last.ckpt, prints one ``interrupted``
    line and exits 143 with no rank left running; sampling from the run works."""
    args = ["train", *TINY_UNET, "dataset.batch_size=16", "logger=csv", "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2", "trainer.precision=32", "trainer.max_steps=100000",
            "callbacks.last.every_n_steps=3", "callbacks.preview.every_n_steps=3"]
    proc = _start(tmp_path, *args)
    _wait_for(proc, lambda: list(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")))
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "16 per device x 2 device(s) x 1 accumulation = 32" in err.replace("\n", "")
    lines = [ln for ln in err.splitlines() if ln.startswith(("interrupted", "error"))]
    assert len(lines) == 1 and lines[0].startswith("interrupted: SIGTERM at step"), err[-3000:]
    assert "Traceback" not in err
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", str(tmp_path)], capture_output=True, text=True)
    assert left.stdout.strip() == "", "a rank outlived the run"
    (ckpt,) = tmp_path.glob("outputs/*/*/checkpoints/last.ckpt")
    step = torch.load(ckpt, weights_only=True)["global_step"]
    assert step >= 3 and f"at step {step}" in lines[0]
    previews = list(ckpt.parent.parent.glob("progress/step-*.png"))
    assert 1 <= len(previews) <= step // 3  # rank 0 only, every 3 steps
    run_here(tmp_path, "sample", "sampler=ddim", "steps=3", "n=4")  # one model, as any run
