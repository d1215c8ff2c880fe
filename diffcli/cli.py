"""The `diffcli` command line: each command turns Hydra overrides into one workflow call.

Trailing arguments are Hydra overrides (``key=value``, ``group=option``); ``-m`` runs a Hydra
multirun sweep; Hydra's own flags (``--cfg job``, ``--info``, ...) pass through.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import typer

from diffcli.components import conf_dir

# Torch's OpenMP threads spin-wait by default; on a small shared CPU that stalls badly.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

CONF_DIR = conf_dir()  # diffcli/conf, shipped inside the package

VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i", "--config-path", "-cp",
               "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
HYDRA_FLAGS = VALUE_FLAGS | {"--resolve", "--run", "-r", "--hydra-help", "--shell-completion",
                             "-sc", "--version"}
DISK_ERRORS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM, errno.EIO}

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Train, sample, evaluate and visualize denoising diffusion models.")


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler) raised where the command is, like Ctrl-C: every
    ``finally`` and temporary folder is cleaned up; exit 143. Training replaces the handler
    while it trains (it saves a checkpoint first)."""

    signum = 15


def stop_on_sigterm() -> None:
    """Make SIGTERM end this command as Ctrl-C does (main thread only)."""
    import signal
    import threading

    def _raise(signum: int, frame: object) -> None:
        raise Terminated

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise)

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
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True,
                "help_option_names": ["-h", "--help"]}


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
    if config_name == "train":
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


def top_level_keys(config_name: str) -> str:
    """A help paragraph: each top-level key with its type, default and meaning."""
    import yaml

    from diffcli.workflows.schemas import SCHEMAS

    defaults = yaml.safe_load((CONF_DIR / f"{config_name}.yaml").read_text())
    lines = []
    for name, key in SCHEMAS.get(config_name, {}).items():
        default = defaults.get(name)
        shown = "null" if default is None else str(default).lower() if isinstance(
            default, bool) else str(default)
        lines.append(f"  {name}=  {key.describe()}, default {shown}: {key.help}")
    return "\n".join(lines)


def group_names(config_name: str) -> dict[str, str]:
    """The config groups a command's defaults list names: override key -> folder under conf/."""
    import yaml

    defaults = yaml.safe_load((CONF_DIR / f"{config_name}.yaml").read_text()).get("defaults", [])
    keys = (next(iter(e)) for e in defaults if isinstance(e, dict))
    return {k.removeprefix("optional "): k.removeprefix("optional ").split("@")[0] for k in keys}


def _value_choices(config_name: str, cfg: Any, key: str) -> list[str]:
    """The values worth offering for ``key=``: a group's options, a schema's choices, or
    true/false for a boolean."""
    import typing

    from omegaconf import OmegaConf

    from diffcli.workflows.schemas import SCHEMAS

    groups = group_names(config_name)
    if key in groups:
        return sorted(p.stem for p in (CONF_DIR / groups[key]).glob("*.yaml"))
    schema = SCHEMAS.get(config_name, {}).get(key)
    if schema is not None and schema.choices:
        return [str(c) for c in schema.choices]
    hint = schema.type if schema is not None else None
    if isinstance(OmegaConf.select(cfg, key), bool) or hint is bool or (
            bool in typing.get_args(hint)):
        return ["true", "false"]
    return []


def _joined(words: list[str]) -> list[str]:
    """Words as bash splits them at ``=`` (``a``, ``=``, ``b``) joined back (``a=b``)."""
    out: list[str] = []
    for w in words:
        if out and (w == "=" or out[-1].endswith("=")) and not w.startswith("-"):
            out[-1] += w
        else:
            out.append(w)
    return out


def complete_override(config_name: str, incomplete: str, typed: list[str]) -> list[str]:
    """Shell completions for one Hydra override being typed: ``sam`` -> ``sampler=``,
    ``sampler.``, ``samples=``; ``sampler=d`` -> ``sampler=ddim``, ``sampler=ddpm``;
    ``sampler.`` -> the sampler node's keys (as the overrides already ``typed`` compose them);
    ``clip_denoised=`` -> true, false. In bash, which splits words at ``=``, the word being
    completed is the value alone (``typed`` ends with ``key``, ``=``), and so are the results.
    """
    from omegaconf import OmegaConf

    bash_value = len(typed) >= 2 and typed[-1] == "="
    words = _joined(typed[:-2] if bash_value else typed)
    try:
        cfg = validate(config_name, [a for a in words if "=" in a and not a.startswith("-")])
    except Exception:  # noqa: BLE001 - a bad earlier override: complete against the defaults
        cfg = validate(config_name, [])
    if bash_value:
        key = typed[-2].lstrip("+~")
        return [v for v in _value_choices(config_name, cfg, key) if v.startswith(incomplete)]
    prefix = incomplete[0] if incomplete[:1] in ("+", "~") else ""
    body = incomplete[len(prefix):]
    if "=" in body:
        key, _, value = body.partition("=")
        return [f"{prefix}{key}={v}" for v in _value_choices(config_name, cfg, key)
                if v.startswith(value)]
    parent, _, _ = body.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    if not OmegaConf.is_dict(node):
        return []
    names = [n for n in node if not n.startswith("_") and (parent or n != "hydra")]
    dotted = f"{parent}." if parent else ""
    found = {f"{dotted}{n}=" for n in names}
    found |= {f"{dotted}{n}." for n in names if OmegaConf.is_dict(node[n]) and len(node[n])}
    found |= {f"{g}=" for g in group_names(config_name) if not parent}
    return sorted(prefix + c for c in found if c.startswith(body))


class OverrideCommand(typer.core.TyperCommand):
    """A Hydra command whose shell completion also completes overrides
    (:func:`complete_override`); install it with ``diffcli --install-completion``."""

    def shell_complete(self, ctx: Any, incomplete: str) -> list[Any]:
        from click.shell_completion import CompletionItem

        found = super().shell_complete(ctx, incomplete)
        if incomplete.startswith("-"):
            return found
        config_name = (ctx.info_name or "").replace("-", "_")
        words = complete_override(config_name, incomplete, list(ctx.args))
        return found + [CompletionItem(w) for w in words]


def _help(config_name: str, intro: str, example: str) -> str:
    return (f"{intro}\n\nOverrides are Hydra's: key=value, group=option, -m for a sweep "
            f"(a=1,2), --cfg job to print the config.\n\nConfig groups:\n\n"
            f"\b\n{config_groups(config_name)}\n\nKeys:\n\n"
            f"\b\n{top_level_keys(config_name)}\n\nExample: {example}")


def _split_args(args: list[str]) -> list[str]:
    """The override arguments among ``args`` (Hydra flags and their values left out)."""
    overrides, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = a in VALUE_FLAGS
        else:
            overrides.append(a)
    return overrides


ALIASES: dict[str, dict[str, str]] = {  # command -> {short key: the key it stands for}
    "train": {"latent": "latent.ckpt"},  # diffcli train latent=<autoencoder ckpt>
}


def expand_aliases(config_name: str, args: list[str]) -> list[str]:
    """``latent=<path>`` -> ``latent.ckpt=<path>`` (a key that is also a node, given a plain
    value); ``latent=null`` and ``latent={...}`` are left as they are."""
    aliases = ALIASES.get(config_name, {})
    out = []
    for a in args:
        key, sep, value = a.partition("=")
        if sep and key in aliases and value not in ("null", "") and not value.startswith("{"):
            a = f"{aliases[key]}={value}"
        out.append(a)
    return out


def _first_of_sweeps(overrides: list[str]) -> list[str]:
    """Parse overrides with Hydra's grammar; sweeps become their first value, hydra.* dropped
    (but hydra.run.dir, which preflight checks, and the launcher's, checked before a sweep)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    concrete = []
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        kept = key in ("hydra.run.dir", "hydra/launcher") or key.startswith("hydra.launcher.")
        if key.startswith(("hydra.", "hydra/", "+hydra")) and not kept:
            continue
        if o.is_sweep_override():
            concrete.append(f"{key}={next(iter(o.sweep_string_iterator()))}")
        else:
            concrete.append(o.input_line)
    return concrete


def _config_dirs(args: list[str]) -> list[str]:
    """The folders given with ``--config-dir`` / ``-cd`` (Hydra adds them to its search path)."""
    dirs = []
    for flag, value in zip(args, args[1:], strict=False):
        if flag in ("--config-dir", "-cd"):
            dirs.append(str(Path(value).expanduser().resolve()))
    dirs += [a.split("=", 1)[1] for a in args if a.startswith("--config-dir=")]
    return dirs


CONFIG_FILE_FLAGS = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn")


def _flag_value(args: list[str], *flags: str) -> str | None:
    """The value of the last ``--flag value`` / ``--flag=value`` among ``args``."""
    found = None
    for i, a in enumerate(args):
        if a in flags and i + 1 < len(args):
            found = args[i + 1]
        elif "=" in a and a.split("=", 1)[0] in flags:
            found = a.split("=", 1)[1]
    return found


def check_hydra_config(config_name: str, args: list[str]) -> None:
    """Refuse, before Hydra acts, a ``hydra`` node that would run code: see
    :func:`diffcli.workflows.hydra_check.check_composed_hydra` (given the config-file flags)."""
    from diffcli.workflows.hydra_check import check_composed_hydra

    path = _flag_value(args, "--config-path", "-cp")
    primary = CONF_DIR if path is None else (Path(__file__).resolve().parent / path).resolve()
    check_composed_hydra(config_name, [o for o in _split_args(args) if "=" in o], primary,
                         _config_dirs(args), _flag_value(args, "--config-name", "-cn"),
                         files=any(a.split("=", 1)[0] in CONFIG_FILE_FLAGS for a in args))


def validate(config_name: str, overrides: list[str], config_dirs: list[str] = ()) -> Any:
    """Compose the config once so a bad override fails fast with one line (no traceback);
    returns it (with its ``hydra`` node)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    for o in overrides:
        if "=" not in o:
            raise ValueError(f"bad argument {o!r}: overrides look like key=value or group=option")
    concrete = _first_of_sweeps(overrides)
    if config_dirs:
        concrete.append("hydra.searchpath=[" + ",".join(f"file://{d}" for d in config_dirs) + "]")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=concrete, return_hydra_config=True)
        for key in cfg:  # resolve interpolations too (the logger's need a running Hydra job)
            value = cfg[key]
            if key not in ("logger", "hydra") and OmegaConf.is_config(value):
                OmegaConf.to_container(value, resolve=True)
    return cfg


def _user_error(e: BaseException | None, kind: type) -> BaseException | None:
    """The first error of ``kind`` in ``e``'s chain (Hydra wraps errors raised in _target_s)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, kind):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _worker_message(message: str) -> str:
    """The original message of an error re-raised from a DataLoader worker (which appends the
    worker's traceback): its last line, without the exception's class name."""
    if "Original Traceback" not in message:
        return message
    last = message.strip().splitlines()[-1]
    return last.split(": ", 1)[1] if "Error: " in last else last


def _override_message(config_name: str, e: BaseException) -> str:
    """One line for a failed composition: where a moved or misspelt key went, else Hydra's."""
    import re

    from diffcli.errors import one_line

    text = str(e)
    missing = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Key '([^']+)' is not in struct", str(e.__cause__ or ""))
    if missing:
        from diffcli.workflows.schemas import trainer_keys, unknown_key_hint

        key = missing.group(1)
        if key.startswith("trainer."):
            from diffcli.workflows.schemas import nearest

            name = key.split(".", 1)[1]
            return (f"trainer.{name} is not a Lightning Trainer argument"
                    f"{nearest(name, trainer_keys())}")
        return unknown_key_hint(config_name, key) + " (a new key needs a leading +)"
    if any(m in text for m in ("token recognition error", "mismatched input",
                                "LexerNoViableAlt", "no viable alternative")):
        return (f"{one_line(e)} (quote a value with spaces, ~, or non-ASCII characters for "
                "Hydra, e.g. \"key='~/my data'\", or write $HOME instead of ~)")
    return one_line(e)


def _rank_prefix(message: str) -> str:
    """"rank N: <message>" in a DDP worker process (so a failed rank names itself)."""
    from diffcli.lit.ranks import rank_name

    rank = rank_name()
    return f"{rank}: {message}" if rank else message


def _is_disk_error(e: BaseException | None) -> bool:
    return isinstance(e, OSError) and e.errno in DISK_ERRORS


def _disk_message(e: OSError) -> str:
    """"<path>: No space left on device (errno 28)" - what failed, where."""
    where = e.filename or "a file"
    return f"cannot write {where}: {e.strerror or e} (errno {e.errno})"


def unknown_flag(args: list[str]) -> str | None:
    """The first ``--option`` that neither diffcli nor Hydra knows, if any."""
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a.startswith("-") and a not in ("-m", "--multirun"):
            flag = a.split("=", 1)[0]
            if flag not in HYDRA_FLAGS:
                return a
            skip = a in VALUE_FLAGS
    return None


def fail(message: str, code: int = 1, label: str = "error") -> None:
    typer.echo(f"{label}: {message}", err=True)
    raise SystemExit(code)


def run_hydra(config_name: str, workflow: Callable, args: list[str], multirun: bool,
              debug: bool) -> None:
    """Validate the overrides, then hand everything to ``hydra.main`` (run dirs, sweeps, ...)."""
    import hydra

    from diffcli.errors import DiffcliError
    from diffcli.workflows.rundir import forget_claims, register_resolvers

    debug = debug or os.environ.get("DIFFCLI_DEBUG", "") not in ("", "0")
    args = expand_aliases(config_name, list(args))
    bad_flag = unknown_flag(args)
    if bad_flag is not None:
        from diffcli.workflows.schemas import flag_hint

        fail(f"unknown option {bad_flag}: settings are key=value overrides"
             f"{flag_hint(config_name, bad_flag)} (see diffcli {config_name.replace('_', '-')} "
             "--help)", 2)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # no "generated new fontManager"
    register_resolvers()
    forget_claims()
    try:  # Hydra's own nodes (callbacks, logging, launcher) are data too: before Hydra acts
        check_hydra_config(config_name, args)
    except DiffcliError as e:
        if debug:
            raise
        fail(str(e), 2, e.label)
    except Exception as e:  # noqa: BLE001 - Hydra raises several kinds; all mean bad input
        if debug:
            raise
        fail(f"bad override: {_override_message(config_name, e)}", 2)
    cfg = None
    if not any(a in ("--cfg", "-c", "--info", "-i", "--hydra-help") for a in args):
        try:
            cfg = validate(config_name, _split_args(args), _config_dirs(args))
        except Exception as e:  # noqa: BLE001 - Hydra raises several kinds; all mean bad input
            if debug:
                raise
            fail(f"bad override: {_override_message(config_name, e)}", 2)
        try:  # checkpoints and run folders are checked before Hydra writes anything
            from diffcli.workflows.preflight import preflight

            preflight(config_name, cfg)
        except DiffcliError as e:
            if debug:
                raise
            fail(str(e), e.exit_code, e.label)

    if multirun and cfg is not None:
        args = _with_sweep_dir(args, cfg, debug)

    def task(cfg):  # noqa: ANN001, ANN202 - called by Hydra with a DictConfig
        register_resolvers()  # a sweep job started by submitit is a new process
        with _console_log(config_name):
            return _run_task(cfg)

    def _run_task(cfg):  # noqa: ANN001, ANN202
        stop_on_sigterm()
        try:
            return workflow(cfg)
        except Exception as e:
            user_error = _user_error(e, DiffcliError)
            disk = _user_error(e, OSError)
            if debug or (user_error is None and not _is_disk_error(disk)):
                raise
            if user_error is None:
                fail(_rank_prefix(_disk_message(disk)))
            if getattr(user_error, "silent", False):  # another rank printed the error
                raise SystemExit(user_error.exit_code) from None
            fail(_rank_prefix(_worker_message(str(user_error))), user_error.exit_code,
                 user_error.label)
        except KeyboardInterrupt as e:
            signum = e.signum if isinstance(e, Terminated) else 2
            fail(f"interrupted by {'SIGTERM' if signum == 15 else 'Ctrl-C'} before the command "
                 "finished: its outputs appear whole or not at all, so nothing partial was "
                 "written", 128 + signum)

    # Launchers that re-run sys.argv[0] for extra ranks (Lightning DDP) land in relaunch.py.
    os.environ["DIFFCLI_COMMAND"] = config_name.replace("_", "-")
    relaunch = str(Path(__file__).resolve().parent / "relaunch.py")
    sys.argv = [relaunch] + (["-m"] if multirun else []) + list(args)
    try:
        hydra.main(config_path=str(CONF_DIR), config_name=config_name, version_base="1.3")(task)()
    except OSError as e:  # Hydra creating the run folder: read-only or full disk
        if debug or not _is_disk_error(e):
            raise
        fail(_disk_message(e))


LOGGED = ("train",)  # commands whose run folder gets the console's output in <job name>.log


def _console_log(config_name: str) -> Any:
    """Copy the console into ``<run dir>/cli.log`` (Hydra's job log file) for the commands
    that own a run folder; a no-op for the others."""
    import contextlib

    if config_name not in LOGGED:
        return contextlib.nullcontext()
    from hydra.core.hydra_config import HydraConfig

    from diffcli.console import ConsoleLog

    hc = HydraConfig.get()
    return ConsoleLog(Path(hc.runtime.output_dir) / f"{hc.job.name}.log")


def _with_sweep_dir(args: list[str], cfg: Any, debug: bool) -> list[str]:
    """The overrides with the sweep folder claimed now and written out
    (``hydra.sweep.dir=<path>``): a launcher's job processes (submitit) and requeued jobs
    then use this folder instead of claiming new ones. Checks the launcher first
    (:func:`diffcli.workflows.launchers.check_launcher`)."""
    from hydra.core.plugins import Plugins

    import hydra_plugins.diffcli_launchers as launchers
    from diffcli.errors import DiffcliError
    from diffcli.workflows.launchers import check_launcher

    for launcher in (launchers.SlurmLauncher, launchers.LocalLauncher):  # an editable install's
        Plugins.instance().register(launcher)  # hydra_plugins/ is not found by Hydra's scan
    os.environ.setdefault("SUBMITIT_PREEMPT_SIGNAL", "USR1")  # --signal=USR1@<delay> (not USR2)
    try:
        check_launcher(cfg)
    except DiffcliError as e:
        if debug:
            raise
        fail(str(e), e.exit_code, e.label)
    if any(a.split("=", 1)[0].lstrip("+") == "hydra.sweep.dir" for a in args):
        return args
    return [*args, f"hydra.sweep.dir={cfg.hydra.sweep.dir}"]


def hydra_command(config_name: str, intro: str, example: str) -> None:
    """Register ``diffcli <config_name>``: overrides -> Hydra -> the workflow function of the
    same name in ``diffcli.workflows.<config_name>`` (imported only when the command runs)."""

    def workflow(cfg):  # noqa: ANN001, ANN202 - a DictConfig from Hydra
        import importlib
        import inspect

        fn = getattr(importlib.import_module(f"diffcli.workflows.{config_name}"), config_name)
        takes_conf = "conf_dir" in inspect.signature(fn).parameters
        return fn(cfg, conf_dir=CONF_DIR) if takes_conf else fn(cfg)

    def command(
        ctx: typer.Context,
        multirun: bool = typer.Option(False, "-m", "--multirun", help="Hydra multirun (sweeps)."),
        debug: bool = typer.Option(False, "--debug", help="Show tracebacks (or DIFFCLI_DEBUG=1)."),
    ) -> None:
        run_hydra(config_name, workflow, ctx.args, multirun, debug)

    app.command(name=config_name.replace("_", "-"), context_settings=PASS_THROUGH,
                cls=OverrideCommand, help=_help(config_name, intro, example))(command)


hydra_command("train", "Train a diffusion model; the run goes to outputs/<date>/<time>/.",
              "diffcli train dataset=swiss_roll model=mlp trainer.max_steps=3000")
hydra_command("sample", "Sample from a trained run (the newest under outputs/ unless ckpt=...); "
              "writes <run>/samples/<sampler>-<steps>/.",
              "diffcli sample sampler=ddim steps=100 n=64 seed=0")
hydra_command("eval_fid", "FID (metrics=[fid,isc,kid,prc]) of the newest run (or ckpt=...; "
              "n=50000 samples, repeats=K seed sets) or of samples=<folder|.npz>, against the "
              "run's training data or ref=<folder|.npz>; reference statistics are cached. Writes "
              "<run>/eval/fid-<sampler>-<steps>-n<N>.json (for samples=, next to them).",
              "diffcli eval-fid sampler=ddim steps=50 n=50000 repeats=3")
hydra_command("eval_nll", "Negative log-likelihood (bits/dim, 95% interval) of the newest run's "
              "data (or ckpt=...; n=, split=): the variational bound over all T terms or steps= "
              "stratified ones (method=vlb, with a plot of L_t against t), or the probability-flow "
              "ODE (method=ode). Writes <run>/eval/nll-<method>-<split>-n<N>.json.",
              "diffcli eval-nll n=1000 method=both")
hydra_command("noise_viz", "Pictures that explain diffusion: images noised under each schedule "
              "(forward.png), the schedules' curves (schedules.png), and with ckpt=... or "
              "reverse=true a sampler's x_t and x0 estimates (reverse.png); gif=true adds GIFs. "
              "Writes outputs/noise-viz/<date>_<time>/, or <run>/viz/ with a checkpoint.",
              "diffcli noise-viz schedules=[linear,cosine] timesteps=[0,250,500,999] gif=true")

hydra_command("export", "Export a run (the newest unless ckpt=...) for other tools: "
              "format=safetensors (weights + JSON config, no pickle; diffcli sample "
              "ckpt=<file> loads it), format=diffusers (a DDPMPipeline folder: UNet2DModel + "
              "the run's schedule as the sampler= scheduler), format=onnx (the denoiser, checked "
              "with onnxruntime). Writes <run dir>/export/<format>/ with a model card.",
              "diffcli export format=diffusers sampler=ddim")



@app.command(name="sweep-summary")
def sweep_summary_command(
    sweep_dir: Path = typer.Argument(  # noqa: B008 - typer's way of declaring arguments
        ..., help="A sweep folder, e.g. multirun/2026-11-26/10-00-00 (or any folder with "
                  "runs' result.json below it)."),
    metric: str = typer.Option("loss", "--metric", "--sort",
                               help="Sort by this metric: loss, fid_proxy, step, wall_time_s or "
                                    "any logged metric (train/loss, val/fid_proxy, ...)."),
    descending: bool = typer.Option(False, "--descending",
                                    help="Largest first (e.g. for accuracy)."),
    csv: Path | None = typer.Option(  # noqa: B008 - typer's way of declaring options
        None, "--csv", help="Where to write the CSV (default <sweep_dir>/summary.csv)."),
) -> None:
    """Rank a sweep's runs by a metric: a table on the console and a CSV."""
    from diffcli.errors import DiffcliError
    from diffcli.workflows.sweep_summary import sweep_summary

    try:
        sweep_summary(sweep_dir, metric, descending, csv)
    except DiffcliError as e:
        fail(str(e), e.exit_code, e.label)


def main() -> None:
    app(worker_args(sys.argv[1:], os.environ))


def worker_args(args: list[str], env: Mapping[str, str]) -> list[str]:
    """The arguments, with the command put back for a DDP rank started as
    ``python -m diffcli <overrides...>`` (Lightning re-runs ``-m <module>`` with the
    arguments after ``sys.argv[0]``, which ``run_hydra`` set to the overrides alone)."""
    command = env.get("DIFFCLI_COMMAND")
    worker = env.get("LOCAL_RANK", "0") not in ("", "0") or env.get("NODE_RANK", "0") not in (
        "", "0")
    if command and worker and (not args or args[0] != command):
        return [command, *args]
    return args


if __name__ == "__main__":
    main()
