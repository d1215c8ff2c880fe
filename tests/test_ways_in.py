"""The last ways to run code from a shared config file, and to lose a user's file.

Hydra's own nodes (``hydra.callbacks``, ``hydra.job_logging`` / ``hydra_logging``, the launcher
and sweeper, ``hydra.job.env_set``) are refused before Hydra acts on them, from every route: a
``--config-dir`` / ``--config-name`` file, a command-line override, a logging handler, a sweep.
``overwrite=true`` replaces only an earlier diffcli output of the same kind; ``out=`` never names
the working directory, a parent of it, HOME or /; every command that writes a result file picks
``<name>_2`` instead of replacing what is there."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import copy_points_run
from test_cli import TINY_UNET, assert_one_line_error, run, run_here

from diffcli.files import MARKER, OutputFolder, OutputRefused, write_json_output

pytestmark = pytest.mark.slow

EVIL_CALLBACK = """defaults:
  - train
  - _self_
hydra:
  callbacks:
    x:
      _target_: shutil.copyfile
      src: {src}
      dst: {dst}
"""
EVIL_HANDLER = """defaults:
  - train
  - _self_
hydra:
  job_logging:
    handlers:
      x:
        "()": shutil.copyfile
        src: {src}
        dst: {dst}
"""


def _refused(proc, marker: Path, cwd: Path, *fragments: str) -> None:
    """Exit 2, one line, the code never ran, no run folder was made."""
    assert_one_line_error(proc, "refusing", *fragments)
    assert proc.returncode == 2
    assert not marker.exists()
    assert not (cwd / "outputs").exists() and not (cwd / "multirun").exists()


@pytest.mark.parametrize("text, fragment", [(EVIL_CALLBACK, "hydra.callbacks.x._target_"),
                                            (EVIL_HANDLER, "hydra.job_logging.handlers.x.()")])
def test_a_config_file_cannot_run_code_through_hydra(tmp_path: Path, text: str, fragment: str):
    """``diffcli train --config-dir D --config-name evil`` as a real process."""
    marker, src = tmp_path / "PWNED", tmp_path / "src.txt"
    src.write_text("x")
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "evil.yaml").write_text(text.format(src=src, dst=marker))
    proc = run(tmp_path, "train", "--config-dir", "cfg", "--config-name", "evil",
               "trainer.max_steps=2", "logger=none", ok=False)
    _refused(proc, marker, tmp_path, "evil.yaml", fragment, "shutil.copyfile")


@pytest.mark.parametrize("args, fragment", [
    (["+hydra.callbacks.e._target_=shutil.copyfile", "+hydra.callbacks.e.src={src}",
      "+hydra.callbacks.e.dst={dst}"], "hydra.callbacks.e._target_"),
    (["+hydra.callbacks.sweep_summary.metric._target_=shutil.copyfile",  # nested in an allowed
      "+hydra.callbacks.sweep_summary.metric.src={src}",                  # callback's arguments
      "+hydra.callbacks.sweep_summary.metric.dst={dst}"], "metric._target_"),
    (["+hydra.launcher.x._target_=shutil.copyfile", "+hydra.launcher.x.src={src}",
      "+hydra.launcher.x.dst={dst}"], "hydra.launcher.x._target_"),
    (["+hydra.job_logging.handlers.x.class=shutil.copyfile"], "handlers.x.class"),
    (["hydra.job_logging.handlers.console.stream=ext://os.system"], "ext://os.system"),
    (["+hydra.job.env_set.LD_PRELOAD={src}"], "LD_PRELOAD"),
    (["+hydra.job_logging.handlers.file.mode=w"], "truncate"),
    (["-m", "+hydra.callbacks.e._target_=diffcli.workflows.sweep_summary.SweepSummaryCallback,"
      "shutil.copyfile", "+hydra.callbacks.e.src={src}", "+hydra.callbacks.e.dst={dst}"],
     "refusing to sweep"),
])
def test_overrides_cannot_run_code_through_hydra(tmp_path: Path, args: list[str], fragment: str):
    marker, src = tmp_path / "PWNED", tmp_path / "src.txt"
    src.write_text("x")
    args = [a.format(src=src, dst=marker) for a in args]
    proc = run_here(tmp_path, "train", *args, "trainer.max_steps=2", "logger=none", ok=False)
    _refused(proc, marker, tmp_path, fragment)


def test_the_shipped_hydra_nodes_pass():
    """Every command's own Hydra node, with each launcher, is on the allowlist."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from diffcli.cli.resolvers import register_resolvers
    from diffcli.components import conf_dir
    from diffcli.hydra_nodes import check_hydra_node

    register_resolvers()
    for name, overrides in [("train", []), ("train", ["hydra/launcher=slurm"]),
                            ("train", ["hydra/launcher=local"]), ("sample", []),
                            ("eval_fid", []), ("eval_nll", []), ("noise_viz", []),
                            ("export", [])]:
        with initialize_config_dir(str(conf_dir()), version_base="1.3"):
            cfg = compose(name, overrides=overrides, return_hydra_config=True)
        check_hydra_node(OmegaConf.to_container(cfg.hydra, resolve=False))


# ---------------------------------------------------------------- overwrite and out=

@pytest.fixture()
def points_cwd(points_checkpoint: Path, tmp_path: Path) -> Path:
    cwd = tmp_path / "cwd"
    copy_points_run(points_checkpoint, cwd)
    return cwd


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and
                  p.name != MARKER)


def test_overwrite_keeps_a_users_folder_and_file(points_cwd: Path):
    notes = points_cwd / "mine"
    notes.mkdir()
    (notes / "notes.txt").write_text("my notes")
    proc = run_here(points_cwd, "export", f"out={notes}", "overwrite=true", ok=False)
    assert_one_line_error(proc, str(notes), "notes.txt", "refusing")
    assert (notes / "notes.txt").read_text() == "my notes" and _hidden(points_cwd) == []
    file = points_cwd / "report.txt"
    file.write_text("mine")
    proc = run_here(points_cwd, "export", f"out={file}", "overwrite=true", ok=False)
    assert_one_line_error(proc, "a file diffcli did not write")
    assert file.read_text() == "mine"
    # without overwrite the export goes next to it; overwrite then replaces that export only
    run_here(points_cwd, "export", f"out={file}")
    assert file.read_text() == "mine" and (points_cwd / "report.txt_2" / MARKER).is_file()
    run_here(points_cwd, "export", f"out={points_cwd / 'report.txt_2'}", "overwrite=true")
    proc = run_here(points_cwd, "export", "format=onnx", f"out={points_cwd / 'report.txt_2'}",
                    "overwrite=true", ok=False)  # another kind of output
    assert_one_line_error(proc, "an earlier export-safetensors output")
    assert _hidden(points_cwd) == []


@pytest.mark.parametrize("out", [".", "..", "HOME", "/"])
def test_out_never_names_the_working_directory_home_or_root(points_cwd: Path, out: str,
                                                            monkeypatch: pytest.MonkeyPatch):
    home = points_cwd.parent / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    out = str(home) if out == "HOME" else out
    before = sorted(p.name for p in points_cwd.iterdir())
    proc = run_here(points_cwd, "export", f"out={out}", "overwrite=true", ok=False)
    assert_one_line_error(proc, "refusing to write there")
    assert proc.returncode == 2
    assert sorted(p.name for p in points_cwd.iterdir()) == before  # no ..*.tmp / ..*.old


def test_a_failed_write_leaves_no_temporary_folder(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch):
    with OutputFolder(tmp_path / "out", kind="samples") as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(OSError) as info, OutputFolder(tmp_path / "out", overwrite=True,
                                                      kind="samples") as tmp:
        (tmp / "a.txt").write_text("second")
        raise OSError(28, "No space left on device")
    assert info.value.filename == str(tmp_path / "out")  # the error names the output
    real = os.replace

    def fail_second(src, dst):  # noqa: ANN001, ANN202 - the swap-in fails after the swap-out
        if Path(dst) == tmp_path / "out" and str(src).endswith(".tmp"):
            raise OSError(16, "Device or resource busy")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_second)
    with pytest.raises(OSError), OutputFolder(tmp_path / "out", overwrite=True,
                                              kind="samples") as tmp:
        (tmp / "a.txt").write_text("third")
    assert (tmp_path / "out" / "a.txt").read_text() == "first"  # the earlier output is back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_result_files_go_next_to_what_is_there(tmp_path: Path):
    mine = tmp_path / "fid.json"
    mine.write_text("my text")
    assert write_json_output(mine, {"fid": 1.0}, "eval-fid") == tmp_path / "fid_2.json"
    assert mine.read_text() == "my text"
    with pytest.raises(OutputRefused, match="a file diffcli did not write"):
        write_json_output(mine, {"fid": 1.0}, "eval-fid", overwrite=True)
    with pytest.raises(OutputRefused, match="an earlier eval-fid output"):
        write_json_output(tmp_path / "fid_2.json", {"bpd": 1.0}, "eval-nll", overwrite=True)
    write_json_output(tmp_path / "fid_2.json", {"fid": 2.0}, "eval-fid", overwrite=True)
    assert json.loads((tmp_path / "fid_2.json").read_text())["fid"] == 2.0


def test_eval_fid_and_eval_nll_do_not_replace_a_users_file(tmp_path: Path):
    run_here(tmp_path, "train", *TINY_UNET, "trainer.max_steps=2", "logger=none",
             "callbacks.preview=null")
    notes = tmp_path / "notes.txt"
    for command, extra in [("eval-fid", ["extractor=standin", "n=16", "steps=2"]),
                           ("eval-nll", ["n=4", "method=ode"])]:
        notes.write_text("mine")
        proc = run_here(tmp_path, command, *extra, f"out={notes}")
        assert notes.read_text() == "mine" and "notes_2.txt" in proc.stderr.replace("\n", "")
        (tmp_path / "notes_2.txt").unlink()
        proc = run_here(tmp_path, command, *extra, f"out={notes}", "overwrite=true", ok=False)
        assert_one_line_error(proc, "a file diffcli did not write")
        assert notes.read_text() == "mine"


def test_sample_overwrite_refuses_a_folder_diffcli_did_not_write(points_cwd: Path):
    run_dir = next(points_cwd.glob("outputs/*/*"))
    theirs = run_dir / "samples" / "ddim-3"
    theirs.mkdir(parents=True)
    (theirs / "keep.txt").write_text("mine")
    proc = run_here(points_cwd, "sample", "sampler=ddim", "steps=3", "n=4", "overwrite=true",
                    ok=False)
    lines = proc.stderr.strip().splitlines()  # after the line naming the run it picked
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert lines[0].startswith("using the newest diffusion run ") and lines[1:] == [lines[-1]]
    assert "keep.txt" in lines[-1] and "without overwrite=true" in lines[-1]
    assert (theirs / "keep.txt").read_text() == "mine"
