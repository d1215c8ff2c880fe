"""The Typer app, built from the registry of commands (:func:`diffcli.commands.registry`):
each Hydra command gets its help (config groups, keys, example) from its config and schema,
its override completion, and :func:`~diffcli.cli.launch.run_hydra`; a plain command keeps
its own arguments."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import typer

from diffcli.cli.completion import completing
from diffcli.cli.launch import fail, run_hydra
from diffcli.cli.overrides import CONF_DIR, group_names
from diffcli.commands import Command, registry

# Torch's OpenMP threads spin-wait by default; on a small shared CPU that stalls badly.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True,
                "help_option_names": ["-h", "--help"]}

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Train, sample, evaluate and visualize denoising diffusion models.")


def versions(verbose: bool) -> str:
    """"diffcli X.Y.Z", and with ``verbose`` the versions of the stack it runs on."""
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    lines = [f"diffcli {version('diffcli')}"]
    if verbose:
        import platform

        lines += [f"{name} {version(name)}" for name in
                  ("torch", "torchvision", "lightning", "hydra-core", "omegaconf",
                   "torch-fidelity", "wandb")]
        lines.append(f"python {platform.python_version()}")
    return "\n".join(lines)


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    verbose: bool = typer.Option(False, "-v", "--verbose",
                                 help="With --version: the versions of torch, lightning, ..."),
) -> None:
    """Train, sample, evaluate and visualize denoising diffusion models."""
    if version:
        typer.echo(versions(verbose))
        raise typer.Exit()
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit()


def config_groups(config_name: str) -> str:
    """A help paragraph listing the config groups a command uses and their options."""
    import yaml

    defaults = yaml.safe_load((CONF_DIR / f"{config_name}.yaml").read_text()).get("defaults", [])
    lines = []
    for entry in defaults:
        if not isinstance(entry, dict):
            continue
        key, default = next(iter(entry.items()))
        group = key.removeprefix("optional ").split("@")[0]
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        name = key.removeprefix("optional ")
        lines.append(f"  {name}=  {' | '.join(options)}   (default: {default or 'none'})")
    if "task" in group_names(config_name):
        lines += _task_groups()
    return "\n".join(lines)


def _task_groups() -> list[str]:
    """Groups that a ``task=`` option adds (``- /autoencoder: kl_f4`` in task/autoencoder.yaml),
    as help lines."""
    import yaml

    lines = []
    for task in sorted((CONF_DIR / "task").glob("*.yaml")):
        for entry in yaml.safe_load(task.read_text()).get("defaults", []) or []:
            key, default = next(iter(entry.items())) if isinstance(entry, dict) else ("", "")
            if not key.startswith("/"):
                continue
            group = key.lstrip("/")
            options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
            lines.append(f"  {group}=  {' | '.join(options)}   (with task={task.stem}; "
                         f"default: {default})")
    return lines


def top_level_keys(command: Command) -> str:
    """A help paragraph: each top-level key with its type, default and meaning."""
    import yaml

    defaults = yaml.safe_load((CONF_DIR / f"{command.config}.yaml").read_text())
    lines = []
    for name, key in command.keys.items():
        default = defaults.get(name)
        shown = "null" if default is None else str(default).lower() if isinstance(
            default, bool) else str(default)
        lines.append(f"  {name}=  {key.describe()}, default {shown}: {key.help}")
    return "\n".join(lines)


def help_text(command: Command) -> str:
    """``diffcli <command> --help``: what it does, its groups and keys, an example."""
    return (f"{command.help}\n\nOverrides are Hydra's: key=value, group=option, -m for a sweep "
            f"(a=1,2), --cfg job to print the config.\n\nConfig groups:\n\n"
            f"\b\n{config_groups(command.config)}\n\nKeys:\n\n"
            f"\b\n{top_level_keys(command)}\n\nExample: {command.example}")


def add_hydra_command(command: Command) -> None:
    """Register ``diffcli <command.name> [overrides...]``: overrides -> checks -> Hydra ->
    ``command.run``."""

    def invoke(
        ctx: typer.Context,
        multirun: bool = typer.Option(False, "-m", "--multirun", help="Hydra multirun (sweeps)."),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks (or DIFFCLI_DEBUG=1)."),
    ) -> None:
        run_hydra(command, ctx.args, multirun, debug)

    app.command(name=command.name, context_settings=PASS_THROUGH, cls=completing(command),
                help=help_text(command))(invoke)


def add_plain_command(command: Command, fn: Callable[..., None]) -> None:
    """Register a command with its own Typer arguments; its errors become one line."""
    from diffcli.errors import DiffcliError

    @functools.wraps(fn)
    def invoke(*args: Any, **kwargs: Any) -> None:
        try:
            fn(*args, **kwargs)
        except DiffcliError as e:
            fail(str(e), e.exit_code, e.label)

    app.command(name=command.name, help=command.help)(invoke)


for _command in registry().values():
    if _command.typer is not None:
        add_plain_command(_command, _command.typer)
    else:
        add_hydra_command(_command)


def main() -> None:
    app(worker_args(sys.argv[1:], os.environ))


def worker_args(args: list[str], env: Mapping[str, str]) -> list[str]:
    """The arguments, with the command put back for a DDP rank started as
    ``python -m diffcli <overrides...>`` (Lightning re-runs ``-m <module>`` with the
    arguments after ``sys.argv[0]``, which ``run_hydra`` set to the overrides alone)."""
    command = env.get("DIFFCLI_COMMAND")
    worker = env.get("LOCAL_RANK", "0") not in ("", "0") or env.get("NODE_RANK", "0") not in (
        "", "0")
    if command and worker and (not args or args[0] not in registry()):
        return [command, *args]
    return args


