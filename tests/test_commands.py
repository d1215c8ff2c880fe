"""A command is one module (issue 33): the command line, its help and its completion come
from the registry of :mod:`diffcli.commands`, so a new command is its module and its config,
and no other file changes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import diffcli

HELLO = '''"""``diffcli hello``: a throwaway command of the test suite."""

from diffcli.commands import Command
from diffcli.workflows.schemas import Key, UsageError


def check(cfg):
    if cfg.name == "nobody":
        raise UsageError("name=nobody: say hello to somebody")
    return f"checked {cfg.name}"


def run(cfg, checked):
    print(f"hello {cfg.name} ({checked})")


COMMAND = Command(name="hello", config="hello", help="Say hello.", example="diffcli hello",
                  check=check, run=run, keys={"name": Key(str, "who to greet")})
'''


def _package_with_hello(tmp_path: Path) -> Path:
    """A copy of the installed package with one more command: ``commands/hello.py`` and
    ``conf/hello.yaml``, nothing else changed."""
    root = tmp_path / "site"
    shutil.copytree(Path(diffcli.__file__).parent, root / "diffcli",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (root / "diffcli" / "commands" / "hello.py").write_text(HELLO)
    (root / "diffcli" / "conf" / "hello.yaml").write_text(
        "name: world\nhydra:\n  output_subdir: null\n  run:\n    dir: .\n")
    return root


def _diffcli(root: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([sys.executable, "-m", "diffcli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_new_command_is_one_module_and_one_config(tmp_path: Path):
    root = _package_with_hello(tmp_path)
    listed = _diffcli(root, tmp_path, "--help")
    assert listed.returncode == 0, listed.stderr
    assert "hello" in listed.stdout and "Say hello." in listed.stdout
    helped = _diffcli(root, tmp_path, "hello", "--help")
    assert "name=  a string, default world: who to greet" in helped.stdout, helped.stdout
    ran = _diffcli(root, tmp_path, "hello", "name=you")
    assert ran.returncode == 0, ran.stderr
    assert "hello you (checked you)" in ran.stdout
    refused = _diffcli(root, tmp_path, "hello", "name=nobody")
    assert refused.returncode == 2 and refused.stderr.strip() == (
        "error: name=nobody: say hello to somebody")
    unknown = _diffcli(root, tmp_path, "hello", "nme=you")
    assert unknown.returncode == 2 and "did you mean name?" in unknown.stderr


def test_every_shipped_command_has_a_config_help_and_example():
    from diffcli.commands import registry
    from diffcli.components import conf_dir

    commands = registry()
    assert list(commands) == ["train", "sample", "eval-fid", "eval-nll", "noise-viz", "export",
                              "ema", "sweep-summary"]
    for command in commands.values():
        assert command.help and command.example.startswith(f"diffcli {command.name}")
        assert command.typer is not None or (conf_dir() / f"{command.config}.yaml").is_file()
        assert (command.typer is None) == (command.run is not None)
