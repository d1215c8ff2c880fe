"""A sweep (``diffcli <command> -m ...``) point by point, for every launcher (Hydra's basic
one, ``hydra/launcher=local``, ``hydra/launcher=slurm``): before its first job, in the
launching process, every point is composed and checked as a run of it would be
(:func:`check_sweep`): a bad point refuses the whole sweep in one line naming it, and nothing
is created.

The points are Hydra's basic sweeper's: the cartesian product of the sweeps among the
command line's overrides (``a=1,2``, ``choice()``, ``range()``, ``glob()`` over a group's
options) after the config's ``hydra.sweeper.params``, in the order Hydra numbers its jobs.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import typer

from diffcli.cli.overrides import (
    CONF_DIR,
    check_assignments,
    config_dirs,
    override_message,
    split_args,
    validate,
)
from diffcli.errors import DiffcliError
from diffcli.workflows.schemas import UsageError

if TYPE_CHECKING:
    from diffcli.commands import Command

SLOW_CHECK_S = 2.0  # a sweep whose check takes longer says so first


@dataclass
class Sweep:
    """The points of a sweep in Hydra's job order (job ``i`` is ``points[i]``): each one's
    overrides, and ``swept`` (what tells it apart: the values of its swept keys)."""

    points: list[list[str]] = field(default_factory=list)
    swept: list[str] = field(default_factory=list)
    hydra: list[str] = field(default_factory=list)  # hydra.* overrides: the sweep's, not swept

    def name(self, i: int) -> str:
        """"sweep point 2 of 3 (optimizer.lr=abc)"."""
        label = f" ({self.swept[i]})" if i < len(self.swept) and self.swept[i] else ""
        return f"sweep point {i + 1} of {len(self.points)}{label}"

    def prefix(self, i: int) -> str:
        """What goes before a message about point ``i``: its name (nothing for a sweep of one
        point, whose messages are a run's)."""
        return f"{self.name(i)}: " if len(self.points) > 1 else ""


def sweep_points(overrides: list[str], params: Mapping[str, Any] | None = None,
                 options: Any = None) -> Sweep:
    """The jobs Hydra's basic sweeper makes of ``overrides`` after ``params``
    (``hydra.sweeper.params``): one axis a key (a later override of a key replaces the earlier
    one, in its place), the product of the axes; ``hydra.*`` overrides apply to the whole
    sweep. ``options``: the config loader a ``glob()`` asks for a group's options."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(overrides)
    sweep, axes, swept = Sweep(), {}, set()
    for o in OverridesParser.create(config_loader=options).parse_overrides(lines):
        key = o.get_key_element()
        if o.is_hydra_override():
            sweep.hydra.append(o.input_line)
        elif not o.is_sweep_override():
            axes[key] = [o.input_line]
            swept.discard(key)
        elif o.is_discrete_sweep():
            axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
            swept.add(key)
        else:
            raise UsageError(f"bad override: {o.input_line}: Hydra's basic sweeper takes lists, "
                             "choice(), range() and glob(), not interval()")
    for point in itertools.product(*axes.values()):
        sweep.points.append(list(point))
        sweep.swept.append(" ".join(v for k, v in zip(axes, point, strict=True) if k in swept))
    return sweep


def check_point(command: Command, cfg: Any) -> Any:
    """The checks of one composed config: those every command shares and the command's own
    ``check``; returns what the check read."""
    from diffcli.checks import check_common

    check_common(cfg, command.keys, command.output(cfg), command.writes_runs_root)
    return command.check(cfg)


def _compose(command: Command, overrides: list[str], dirs: list[str], where: str) -> Any:
    """The config of one point, or a one-line UsageError (prefixed with ``where``)."""
    try:
        return validate(command.config, overrides, dirs)
    except Exception as e:  # noqa: BLE001 - Hydra raises several kinds; all mean bad input
        raise UsageError(f"{where}bad override: {override_message(command, e)}") from e


def _named(e: DiffcliError, where: str) -> DiffcliError:
    """``e`` with ``where`` before its message (its exit code and label kept)."""
    named = DiffcliError(f"{where}{e}")
    named.exit_code, named.label = e.exit_code, e.label
    return named


def check_sweep(command: Command, args: list[str]) -> tuple[Any, Sweep]:
    """Compose and check every point of the sweep ``args`` describe, before its first job:
    returns the first point's config and the sweep, or raises a DiffcliError naming the first
    bad point (its own exit code; 2 for an override Hydra cannot compose). "checking N sweep
    points ..." first when that takes over :data:`SLOW_CHECK_S`."""
    overrides, dirs = split_args(args), config_dirs(args)
    sweep = _sweep(command, overrides, None, dirs)
    first = _compose(command, sweep.points[0] + sweep.hydra, dirs, sweep.prefix(0))
    params = (first.hydra.get("sweeper") or {}).get("params")
    if params:  # the config's own sweep (hydra.sweeper.params) comes first
        sweep, first = _sweep(command, overrides, params, dirs), None
    configs = []
    for i, point in enumerate(sweep.points):
        started = time.perf_counter()
        config = first if i == 0 and first is not None else \
            _compose(command, point + sweep.hydra, dirs, sweep.prefix(i))
        try:
            check_point(command, config)
        except DiffcliError as e:
            raise _named(e, sweep.prefix(i)) from e
        configs = configs or [config]
        if i == 1 and (time.perf_counter() - started) * (len(sweep.points) - 2) > SLOW_CHECK_S:
            typer.echo(f"checking {len(sweep.points)} sweep points ...", err=True)
    return configs[0], sweep


def _sweep(command: Command, overrides: list[str], params: Any, dirs: list[str]) -> Sweep:
    """:func:`sweep_points` (a ``glob()`` over the options of the config tree and the
    ``--config-dir`` folders), its grammar errors as one-line UsageErrors."""
    from diffcli.workflows.hydra_check import config_loader

    try:
        check_assignments(overrides)
        return sweep_points(overrides, params, config_loader(CONF_DIR, dirs))
    except DiffcliError:
        raise
    except Exception as e:  # noqa: BLE001 - the override grammar's several errors
        raise UsageError(f"bad override: {override_message(command, e)}") from e

