"""Shell completion of Hydra overrides through the Typer front (`--install-completion`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from diffcli.cli.completion import complete_override as _complete
from diffcli.commands import registry
from diffcli.workflows.trainer_args import trainer_keys


def complete_override(name: str, incomplete: str, typed: list[str]) -> list[str]:
    return _complete(registry()[name], incomplete, typed)


def test_keys_groups_and_nested_keys():
    assert {"sampler=", "sampler.", "seed=", "seeds="} <= set(complete_override("sample", "s", []))
    assert "hydra." not in complete_override("sample", "h", [])
    nested = complete_override("sample", "sampler.", [])
    assert "sampler.steps=" in nested and not any("_target_" in w for w in nested)


def test_values_follow_the_config_being_typed():
    assert complete_override("sample", "sampler=d", []) == [
        "sampler=ddim", "sampler=ddpm", "sampler=dpmpp_2m", "sampler=dpmpp_2m_sde",
        "sampler=dpmpp_3m"]
    assert complete_override("sample", "clip_denoised=", []) == [
        "clip_denoised=true", "clip_denoised=false"]
    ddim = complete_override("sample", "sampler.", ["sampler=ddim"])
    assert "sampler.eta=" in ddim  # the node as the earlier override composes it
    assert "sampler.eta=" not in complete_override("sample", "sampler.", ["sampler=ddpm"])
    assert complete_override("train", "+dataset.n_po", ["dataset=moons"]) == [
        "+dataset.n_points="]


def test_bash_splits_at_equals_and_gets_values_alone():
    assert complete_override("sample", "e", ["sampler", "="]) == ["euler"]
    assert "moons" in complete_override("train", "", ["seed", "=", "1", "dataset", "="])


def test_every_trainer_argument_but_those_diffcli_sets():
    assert complete_override("train", "trainer.", []) == sorted(
        f"trainer.{k}=" for k in trainer_keys()
        if k not in ("logger", "callbacks", "plugins", "default_root_dir"))
    assert complete_override("train", "trainer.enable_p", ["trainer=cpu"]) == [
        "trainer.enable_progress_bar="]  # not in the config: Lightning's default


def test_bash_cursor_right_after_equals():  # Click drops the "=" being completed
    assert complete_override("train", "", ["dataset"]) == complete_override(
        "train", "", ["dataset", "="])


def test_an_unexpected_error_completes_no_override():
    import dataclasses

    from diffcli.cli.completion import completing

    broken = dataclasses.replace(registry()["sample"], config="no_such_config")
    command = completing(broken)(name="sample", context_settings={"allow_extra_args": True})
    ctx = command.make_context("sample", [], resilient_parsing=True)
    assert command.shell_complete(ctx, "sam") == []
    assert [i.value for i in command.shell_complete(ctx, "--he")] == ["--help"]


def test_trainer_keys_are_read_without_importing_lightning():
    import inspect

    import lightning as L

    from diffcli.workflows.trainer_args import _trainer_keys_in_source

    assert _trainer_keys_in_source() == list(inspect.signature(L.Trainer).parameters)


# The console script's own lines: Click names the completion variable after sys.argv[0].
DIFFCLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'diffcli'; "
                                 "from diffcli.cli import main; main()"]
# (shell, the line as typed before TAB, the candidates: a list exactly, a set among them)
CASES = [
    ("bash", "train ", {"dataset=", "dataset.", "trainer=", "trainer.", "model=", "seed="}),
    ("bash", "train dataset=m", ["mnist", "moons"]),
    ("bash", "train trainer.fast_dev_run=", ["true", "false"]),  # the cursor right after "="
    ("bash", "train tra", ["trainer.", "trainer="]),
    ("bash", "train trainer.max_", ["trainer.max_epochs=", "trainer.max_steps=",
                                    "trainer.max_time="]),
    ("zsh", "train trainer.m", sorted(f"trainer.{k}=" for k in trainer_keys() if k[0] == "m")),
    ("bash", "sample gui", ["guidance=", "guidance_interval=", "guidance_rescale=", "guide="]),
    ("bash", "sample ", {"sampler=", "sampler.", "seeds=", "ckpt="}),
    ("bash", "eval-fid ", {"ckpt=", "metrics=", "sampler."}),
    ("zsh", "eval-nll ", {"ckpt=", "method="}),
    ("zsh", "noise-viz ", {"dataset=", "schedules="}),
    ("zsh", "export ", {"ckpt=", "format="}),
    ("bash", "ema ", {"ckpt=", "sigma_rel=", "step="}),
    ("zsh", "train dataset=m", ["dataset=mnist", "dataset=moons"]),
    ("bash", "sweep-summary --", ["--metric", "--sort", "--descending", "--csv", "--help"]),
    ("zsh", "sweep-summary ", ["_files"]),  # a folder: zsh's own file-name completion
]


def complete_in_shell(shell: str, line: str) -> subprocess.CompletedProcess:
    """A completion request as Typer's bash or zsh script sends it (bash splits words at "=")
    to a new ``diffcli`` process; with the import times of the first one on stderr."""
    env = {**os.environ, "_DIFFCLI_COMPLETE": f"complete_{shell}"}
    if shell == "bash":
        words = ["diffcli", *line.replace("=", " = ").split()] + ([""] if line[-1] == " " else [])
        env |= {"COMP_WORDS": "\n".join(words), "COMP_CWORD": str(len(words) - 1)}
    else:
        env["_TYPER_COMPLETE_ARGS"] = f"diffcli {line}"
    if line == CASES[0][1]:
        env["PYTHONPROFILEIMPORTTIME"] = "1"
    return subprocess.run(DIFFCLI, env=env, capture_output=True, text=True, timeout=120)


def candidates(shell: str, stdout: str) -> list[str]:
    """The words the shell offers: bash reads lines; zsh runs ``_arguments '*: :(("w1" ...))'``
    (or ``_files``)."""
    if shell == "bash" or not stdout.startswith("_arguments"):
        return stdout.split()
    return re.findall(r'"([^"]*)"', stdout)


def test_completion_in_a_shell_for_every_command():
    """The shell's own protocol, one new process a line (``diffcli train <TAB>`` printed a
    traceback where the resolvers were not registered); completion imports no torch."""
    assert {line.split()[0] for _, line, _ in CASES} == {c.name for c in registry().values()}
    with ThreadPoolExecutor(2) as pool:
        procs = list(pool.map(lambda case: complete_in_shell(*case[:2]), CASES))
    for (shell, line, expected), proc in zip(CASES, procs, strict=True):
        imports = [e for e in proc.stderr.splitlines() if e.startswith("import time:")]
        assert proc.returncode == 0 and len(imports) == len(proc.stderr.splitlines()), (
            line, proc.stderr[-2000:])
        found = candidates(shell, proc.stdout)
        if isinstance(expected, set):
            assert expected <= set(found) and "hydra." not in found, (line, found)
        else:
            assert found == expected, (line, found)
    modules = {e.rsplit("|", 1)[1].strip().split(".")[0] for e in procs[0].stderr.splitlines()}
    assert "typer" in modules and not modules & {"torch", "lightning"}
