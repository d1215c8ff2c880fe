"""Launching a command through Hydra: its overrides checked, its ``check`` run before Hydra
writes anything, then ``hydra.main`` (run folders, sweeps, launchers, DDP ranks) calling its
``run``; every failure one line with its exit code (usage 2, Ctrl-C 130, SIGTERM 143, disk
full 1), tracebacks only with ``--debug``."""

from __future__ import annotations

import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from diffcli.cli.objective_choice import implied_objective
from diffcli.cli.overrides import (
    CONF_DIR,
    as_hydra_needs,
    check_hydra_config,
    config_dirs,
    expand_aliases,
    flags_first,
    group_names,
    override_message,
    split_args,
    unknown_flag,
    user_error,
    validate,
    worker_message,
)
from diffcli.cli.sweep_points import check_point, check_sweep, sweep_end, sweep_job

if TYPE_CHECKING:
    from diffcli.commands import Command
INFO_FLAGS = ("--info", "-i", "--hydra-help", "--shell-completion", "-sc")  # print, check nothing
DRY_RUN_FLAGS = ("--cfg", "-c", "--resolve")  # print the config: the whole check runs first
DISK_ERRORS = {errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT, errno.EPERM, errno.EIO}


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


def fail(message: str, code: int = 1, label: str = "error") -> None:
    from diffcli.errors import Exit

    typer.echo(f"{label}: {message}", err=True)
    raise Exit(code, f"{label}: {message}")


def run_hydra(command: Command, args: list[str], multirun: bool, debug: bool) -> None:
    """Validate the overrides and run the command's check, then hand everything to
    ``hydra.main`` (run dirs, sweeps, ...), which calls the command's run."""
    import hydra

    debug = debug or os.environ.get("DIFFCLI_DEBUG", "") not in ("", "0")
    args = as_hydra_needs(command.config, expand_aliases(command.aliases, list(args)))
    args, note = implied_objective(command.config, args)
    cfg, checked = check_before_hydra(command, args, debug, multirun)
    if note is not None:  # once the command line is known to be good
        typer.echo(note, err=True)
    if multirun and cfg is not None and any(a in DRY_RUN_FLAGS for a in args):
        typer.echo(f"{len(checked.points)} sweep points, each passes the check (to see one "
                   "point's config, drop -m and give that point's values)")
        return  # Hydra refuses --cfg with -m; the sweep folder is not claimed
    if multirun and cfg is not None:
        args = _with_sweep_dir(args, cfg, debug)
    # Launchers that re-run sys.argv[0] for extra ranks (Lightning DDP) land in relaunch.py.
    os.environ["DIFFCLI_COMMAND"] = command.name
    relaunch = str(Path(__file__).resolve().parent.parent / "relaunch.py")
    if not any(a.lstrip("+").startswith("hydra.job.name=") for a in args):
        args = ["hydra.job.name=cli", *args]  # the job's log: <run dir>/cli.log
    sys.argv = [relaunch] + (["-m"] if multirun else []) + flags_first(list(args))
    task = job(command, None if multirun else checked, debug)  # a sweep job reads for itself
    try:
        with sweep_end(cfg, checked if multirun else None):
            hydra.main(config_path=str(CONF_DIR), config_name=command.config,
                       version_base="1.3")(task)()
    except OSError as e:  # Hydra creating the run folder: read-only or full disk
        if debug or not _is_disk_error(e):
            raise
        fail(_disk_message(e))


def _refuse(e: Exception, debug: bool, message: str | None = None,
            code: int | None = None) -> None:
    """One line for bad input found before Hydra acts (a diffcli error in its own words and
    exit code, unless ``code``; anything else as a bad override: ``message``, exit 2), or the
    traceback with ``--debug``."""
    from diffcli.errors import DiffcliError

    if debug:
        raise e
    if isinstance(e, DiffcliError):
        fail(str(e), code or e.exit_code, e.label)
    fail(f"bad override: {message}", 2)


def check_before_hydra(command: Command, args: list[str], debug: bool,
                       multirun: bool = False) -> tuple[Any, Any]:
    """Everything checked before Hydra writes anything: unknown flags, Hydra's own nodes, the
    composed config, the checks every command shares and the command's ``check`` (a sweep:
    for each of its points). Returns (the config, what the check read; a sweep: its points),
    or (None, None) for Hydra's informational flags."""
    from diffcli.cli.resolvers import forget_claims, register_resolvers
    from diffcli.errors import DiffcliError
    from diffcli.workflows.schemas import flag_hint

    bad_flag = unknown_flag(args)
    if bad_flag is not None:
        fail(f"unknown option {bad_flag}: settings are key=value overrides"
             f"{flag_hint(command.keys, group_names(command.config), bad_flag)} (see diffcli "
             f"{command.name} --help)", 2)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # no "generated new fontManager"
    register_resolvers()
    forget_claims()
    try:  # Hydra's own nodes (callbacks, logging, launcher) are data too: before Hydra acts
        check_hydra_config(command.config, args)
    except Exception as e:  # noqa: BLE001 - Hydra raises several kinds; all mean bad input
        _refuse(e, debug, None if isinstance(e, DiffcliError) else override_message(command, e),
                code=2)
    if any(a in INFO_FLAGS for a in args):
        return None, None
    dry = 2 if any(a.split("=", 1)[0] in DRY_RUN_FLAGS for a in args) else None
    try:
        if multirun:  # every point, before the first job
            return check_sweep(command, args)
    except DiffcliError as e:
        _refuse(e, debug, code=dry)
    try:
        cfg = validate(command.config, split_args(args), config_dirs(args))
    except Exception as e:  # noqa: BLE001 - Hydra raises several kinds; all mean bad input
        _refuse(e, debug, override_message(command, e))
    try:  # checkpoints and run folders are checked before Hydra writes anything
        return cfg, check_point(command, cfg)
    except DiffcliError as e:
        _refuse(e, debug, code=dry)  # a dry run (--cfg) that the real run would refuse: exit 2
    raise AssertionError("unreachable")  # _refuse exits


def job(command: Command, checked: Any, debug: bool) -> Callable[[Any], Any]:
    """The function Hydra calls with each job's config: the command's run (given what its
    check read), every failure one line (exit codes: the error's, 1 for a full disk, 130 for
    Ctrl-C, 143 for SIGTERM)."""
    from diffcli.cli.resolvers import register_resolvers
    from diffcli.errors import DiffcliError

    def task(cfg):  # noqa: ANN001, ANN202 - called by Hydra with a DictConfig
        register_resolvers()  # a sweep job started by submitit is a new process
        with _console_log(command.logged):  # the error line goes to the log too
            return sweep_job(run, cfg, debug)  # a sweep's job: a failure lets the sweep go on

    def run(cfg):  # noqa: ANN001, ANN202
        stop_on_sigterm()
        try:
            return command.run(cfg, checked)
        except Exception as e:
            found = user_error(e, DiffcliError)
            disk = user_error(e, OSError)
            if debug or (found is None and not _is_disk_error(disk)):
                raise
            if found is None:
                fail(_rank_prefix(_disk_message(disk)))
            if getattr(found, "silent", False):  # another rank printed the error
                raise SystemExit(found.exit_code) from None
            fail(_rank_prefix(worker_message(str(found))), found.exit_code, found.label)
        except KeyboardInterrupt as e:
            signum = e.signum if isinstance(e, Terminated) else 2
            fail(f"interrupted by {'SIGTERM' if signum == 15 else 'Ctrl-C'} before the command "
                 "finished: its outputs appear whole or not at all, so nothing partial was "
                 "written", 128 + signum)

    return task


def _console_log(logged: bool) -> Any:
    """Copy the console into ``<run dir>/cli.log`` (Hydra's job log file) for the commands
    that own a run folder; a no-op for the others."""
    import contextlib

    if not logged:
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
