"""Crafted checkpoints, tried as an attacker would: every command that reads a checkpoint must
refuse each one with one line, a non-zero exit, and without creating any file anywhere.

Every variant goes through every command in-process (the refusal happens before Hydra starts);
a few also run as real processes, end to end.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from test_cli import EXE, assert_one_line_error, run_here

from diffcli.components import check_config
from diffcli.errors import DiffcliError

Mutation = Callable[[dict, Path], None]


class Touch:
    """A pickled payload: unpickling it would create ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.path,))


def _cfg(ckpt: dict) -> dict:
    return ckpt["diffcli"]["config"]


def _set(path: str, value: object) -> Mutation:
    def mutate(ckpt: dict, target: Path) -> None:
        node = _cfg(ckpt)
        *parents, last = path.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value(target) if callable(value) else value
    return mutate


def _copy(target: Path) -> dict:
    return {"_target_": "shutil.copyfile", "src": "/etc/hostname", "dst": str(target)}


def _savetxt(name: str) -> Callable[[Path], dict]:
    return lambda target: {"_target_": name, "fname": str(target), "X": [1.0]}


def _pickled(ckpt: dict, target: Path) -> None:
    _cfg(ckpt)["model"]["hidden"] = Touch(target)


# id -> (mutation, fragment of the one-line refusal)
VARIANTS: dict[str, tuple[Mutation, str]] = {
    "target-in-list": (_set("model.hidden", lambda t: [_copy(t), 2]),
                       "model.hidden[0] names 'shutil.copyfile'"),
    "target-in-nested-dict": (_set("model.extra", lambda t: {"inner": {
        "_target_": "builtins.open", "file": str(t), "mode": "w"}}),
        "model.extra.inner names 'builtins.open'"),
    "target-in-list-of-dicts": (_set("dataset.transforms", lambda t: [
        {"size": 3}, _savetxt("numpy.savetxt")(t)]), "dataset.transforms[1] names"),
    "group-target-replaced": (_set("model._target_", "os.system"), "model names 'os.system'"),
    "prefix-trick-os": (_set("model._target_", "diffcli.x.os.system"),
                        "names 'diffcli.x.os.system', which is not a diffcli component"),
    "prefix-trick-savetxt": (
        _set("schedule", _savetxt("diffcli.workflows.draw_samples.np.savetxt")),
        "names 'diffcli.workflows.draw_samples.np.savetxt'"),
    "component-of-another-group": (_set("schedule._target_", "diffcli.nets.mlp.MLP"),
                                   "not a diffcli component for schedule"),
    "target-under-unexpected-key": (_set("evil", {"_target_": "diffcli.nets.mlp.MLP"}),
                                    "evil names 'diffcli.nets.mlp.MLP'"),
    "args": (_set("model._args_", lambda t: [str(t)]), "model has the key _args_"),
    "partial": (_set("schedule._partial_", True), "schedule has the key _partial_"),
    "recursive": (_set("model._recursive_", False), "model has the key _recursive_"),
    "convert": (_set("dataset._convert_", "all"), "dataset has the key _convert_"),
    "oc-env-resolver": (_set("dataset.name", "${oc.env:HOME}"), "interpolation"),
    "interpolation": (_set("model.hidden", "${dataset.n_points}"), "interpolation"),
    "diffcli-resolver-makes-dirs": (_set("model.depth", lambda t: f"${{diffcli.fresh_dir:{t}}}"),
                                    "interpolation"),
    "pickled-payload": (_pickled, "is not a diffcli checkpoint"),
    "tensor-as-config-value": (_set("model.hidden", torch.ones(2)), "holds a Tensor"),
    "wrong-type": (_set("model.hidden", "wide"), "model.hidden: 'wide' is not a valid value"),
    "unknown-argument": (_set("model.sneaky", 1), "unknown key 'sneaky'"),
    "config-not-a-mapping": (lambda c, t: c["diffcli"].__setitem__("config", ["x"]),
                             "not a mapping"),
    "weights-not-tensors": (lambda c, t: c["state_dict"].__setitem__("net.x", "str"),
                            "state_dict is not a mapping of names to tensors"),
    "non-finite-weights": (lambda c, t: next(v for k, v in c["state_dict"].items()
                                             if k.startswith("ema_net")).fill_(float("nan")),
                           "NaN/inf"),
    "bad-data-description": (lambda c, t: c["diffcli"].__setitem__("data", {"kind": "x"}),
                             "data description"),
    "unknown-task": (_set("task", "evil"), "unknown task 'evil'"),
    "conditional-without-classes": (_set("conditional", True), "names no classes"),
    "bad-class-description": (lambda c, t: c["diffcli"]["data"].update(
        num_classes=3, class_names=["a", 2]), "class description"),
    "text-encoder-target": (_set("text_encoder", lambda t: {
        "_target_": "builtins.open", "file": str(t), "mode": "w"}),
        "text_encoder names 'builtins.open'"),
    "autoencoder-of-another-group": (_set("autoencoder", {"_target_": "diffcli.nets.mlp.MLP"}),
                                     "not a diffcli component for autoencoder"),
    "bad-latent-description": (lambda c, t: c["diffcli"]["data"].update(
        latent={"shape": [4, 8, 8], "scale_factor": 1.0, "source": str(t), "sha256": 3}),
        "latent description"),
}

# how each command is pointed at the checkpoint; "{ckpt}" is the crafted file, "{root}" a runs
# folder whose newest run holds it
COMMANDS: dict[str, list[str]] = {
    "sample": ["sample", "ckpt={ckpt}"],
    "sample-newest": ["sample", "runs_root={root}"],
    "eval-fid": ["eval-fid", "ckpt={ckpt}", "extractor=standin", "n=4"],
    "noise-viz": ["noise-viz", "ckpt={ckpt}"],
    "noise-viz-reverse": ["noise-viz", "reverse=true", "runs_root={root}"],
    "train-ckpt_path": ["train", "ckpt_path={ckpt}", "dataset=swiss_roll", "model=mlp"],
    "train-resume": ["train", "resume=auto", "runs_root={root}", "dataset=swiss_roll",
                     "model=mlp"],
}


@pytest.fixture(scope="module")
def clean_checkpoint(points_checkpoint: Path) -> Path:
    """A normal checkpoint of a tiny 2-D run (the session's, shared: only read here)."""
    return points_checkpoint


@pytest.fixture(scope="module")
def mpl_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mplconfig")


def _craft(clean: Path, variant: str, folder: Path) -> tuple[Path, Path, Path]:
    """(crafted .ckpt, a runs root whose newest run holds it, the file the attack targets)"""
    target = folder / "victim" / "PWNED"
    ckpt = torch.load(clean, weights_only=True)
    VARIANTS[variant][0](ckpt, target)
    root = folder / "runs"
    path = root / "2026-01-01" / "00-00-00" / "checkpoints" / "last.ckpt"
    path.parent.mkdir(parents=True)
    with path.open("wb") as f:
        if variant == "pickled-payload":
            torch.save(ckpt, f, pickle_module=pickle)
        else:
            torch.save(ckpt, f)
    (folder / "victim").mkdir()
    return path, root, target


def _files(*roots: Path) -> set[Path]:
    return {p for r in roots for p in r.rglob("*")}


def _args(command: str, ckpt: Path, root: Path) -> list[str]:
    return [a.format(ckpt=ckpt, root=root) for a in COMMANDS[command]]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_command_refuses(variant: str, clean_checkpoint: Path, mpl_dir: Path,
                               tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    from diffcli.cli import app

    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    ckpt, root, target = _craft(clean_checkpoint, variant, tmp_path / "attack")
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("MPLCONFIGDIR", str(mpl_dir))  # matplotlib's font cache is no attack
    monkeypatch.setattr(sys, "argv", ["diffcli"])
    before = _files(tmp_path)
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            app(_args(command, ckpt, root))
        err = capsys.readouterr().err
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert exit_info.value.code not in (0, None), (command, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), (command, err)
        assert str(ckpt) in lines[0] and VARIANTS[variant][1] in lines[0], (command, lines[0])
        assert not target.exists(), command
        assert _files(tmp_path) == before, (command, _files(tmp_path) - before)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["target-in-list"])  # the others: in-process above
def test_every_command_refuses_end_to_end(variant: str, clean_checkpoint: Path, mpl_dir: Path,
                                          tmp_path: Path):
    """The same as real processes, with a fresh HOME and working directory."""
    cwd, home = tmp_path / "cwd", tmp_path / "home"
    cwd.mkdir()
    home.mkdir()
    ckpt, root, target = _craft(clean_checkpoint, variant, tmp_path / "attack")
    before = _files(tmp_path)
    env = {**os.environ, "HOME": str(home), "COLUMNS": "200", "MPLCONFIGDIR": str(mpl_dir)}
    # one process a command, each way of naming the checkpoint (ckpt=, the newest run under
    # runs_root) in at least one: every command with each, in-process above
    for command in ["sample", "eval-fid", "noise-viz-reverse", "train-resume"]:
        proc = subprocess.run([*EXE, *_args(command, ckpt, root)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=300)
        assert_one_line_error(proc, str(ckpt), VARIANTS[variant][1])
        assert not target.exists(), command
        assert _files(tmp_path) == before, (command, _files(tmp_path) - before)


def test_config_files_follow_the_same_rules(clean_checkpoint: Path, tmp_path: Path):
    """A config a user passes by path (--config-dir) is checked like a stored one when built."""
    extra = tmp_path / "extra" / "sampler"
    extra.mkdir(parents=True)
    target = tmp_path / "PWNED"
    (extra / "evil.yaml").write_text(
        f"_target_: diffcli.workflows.draw_samples.np.savetxt\nfname: {target}\nX: [1.0]\n")
    proc = run_here(tmp_path, "sample", "--config-dir", str(tmp_path / "extra"),
                    "sampler=evil", f"ckpt={clean_checkpoint}", ok=False)
    assert_one_line_error(proc, "sampler names 'diffcli.workflows.draw_samples.np.savetxt'")
    assert not target.exists()


def test_the_shipped_configs_are_in_the_allowlist():
    """Every _target_ under conf/ is an exact registered name of its group (else a stored
    config of a normal run would be refused)."""
    import yaml

    from diffcli.cli import CONF_DIR
    from diffcli.components import COMPONENTS

    for path in CONF_DIR.glob("*/*.yaml"):
        target = (yaml.safe_load(path.read_text()) or {}).get("_target_")
        if target is not None:
            assert target in COMPONENTS[path.parent.name], path


def test_a_normal_stored_config_passes(clean_checkpoint: Path):
    check_config(_cfg(torch.load(clean_checkpoint, weights_only=True)), "ok.ckpt")
    with pytest.raises(DiffcliError, match="refusing to load"):
        check_config({"model": {"_target_": "diffcli.nets.mlp.MLP", "depth": "${x}"}}, "x")
