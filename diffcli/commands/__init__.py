"""The commands of ``diffcli``, one module each.

A command module declares one :class:`Command` as ``COMMAND``: its name, its Hydra config
(``conf/<config>.yaml``), help and example, the schema of its top-level keys, a
``check(cfg)`` that refuses bad input before Hydra writes anything and returns what it read
(checkpoints are read there, once), and a ``run(cfg, checked)`` that does the work with what
``check`` read (``checked`` is None in a sweep job, which reads for itself). The command line,
its help and its completion are built from :func:`registry`: adding a command is adding its
module and its config, and nothing dispatches on a command's name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from diffcli.workflows.schemas import Key


def _reads_nothing(cfg: Any) -> None:
    return None


def _no_output(cfg: Any) -> None:
    return None


@dataclass(frozen=True)
class Command:
    """One ``diffcli <name>`` command."""

    name: str  # on the command line: "eval-fid"
    config: str  # its Hydra config: conf/<config>.yaml ("" for a plain Typer command)
    help: str
    example: str
    run: Callable[[Any, Any], Any] | None = None  # (cfg, what check returned or None) -> output
    check: Callable[[Any], Any] = _reads_nothing  # cfg -> what it read (before Hydra acts)
    keys: Mapping[str, Key] = field(default_factory=dict)  # schema of the top-level keys
    output: Callable[[Any], tuple[str, bool] | None] = _no_output  # out=: (kind, is a folder)
    writes_runs_root: bool = False  # runs_root= must be a folder it can write
    logged: bool = False  # the console is copied to <run dir>/<job>.log
    aliases: Mapping[str, str] = field(default_factory=dict)  # short key -> the key it means
    moved: Mapping[str, str] = field(default_factory=dict)  # old key -> where it went
    typer: Callable[..., None] | None = None  # a plain Typer command instead (no Hydra)
    order: int = 100  # place in ``diffcli --help`` (then by name)


def registry() -> dict[str, Command]:
    """Every command of this package, by name (each module's ``COMMAND``), in help order."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        command = getattr(module, "COMMAND", None)
        if isinstance(command, Command):
            found.append(command)
    return {c.name: c for c in sorted(found, key=lambda c: (c.order, c.name))}
