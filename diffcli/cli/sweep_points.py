"""A sweep (``diffcli <command> -m ...``) point by point, for every launcher (Hydra's basic
one, ``hydra/launcher=local``, ``hydra/launcher=slurm``):

* before its first job, in the launching process, every point is composed and checked as a
  run of it would be (:func:`check_sweep`): a bad point refuses the whole sweep in one line
  naming it, and nothing is created;
* a job that fails at run time (a NaN loss, a data error) records its failure in its folder's
  ``result.json`` and the sweep goes on with its other points (:func:`sweep_job`); an interrupt
  (Ctrl-C, SIGTERM, a SLURM requeue) still stops it;
* the launching process ends the sweep (:func:`sweep_end`): the summary is written even when
  the sweep stopped early, and a failed point makes the exit non-zero with one line naming it.

The points are Hydra's basic sweeper's: the cartesian product of the sweeps among the
command line's overrides (``a=1,2``, ``choice()``, ``range()``, ``glob()`` over a group's
options) after the config's ``hydra.sweeper.params``, in the order Hydra numbers its jobs.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
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
from diffcli.errors import DiffcliError, one_line
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


def sweep_job(run: Callable[[Any], Any], cfg: Any, debug: bool) -> Any:
    """``run(cfg)``; in a sweep's job a failure (its one line printed already) is recorded in
    the job's ``result.json`` (status "failed", the line) and the job returns, so the launcher
    runs the other points and the summary lists this one; an interrupt is recorded (unless the
    run recorded itself) and still ends the sweep. ``debug``: every failure raises."""
    from hydra.core.hydra_config import HydraConfig

    from diffcli.cli.resolvers import in_sweep
    from diffcli.runs import RESULT, write_outcome

    if debug or not in_sweep():
        return run(cfg)
    job = HydraConfig.get()
    folder, overrides = Path(job.runtime.output_dir), [str(o) for o in job.overrides.task]
    try:
        return run(cfg)
    except SystemExit as e:  # launch.fail: the line is printed; Hydra would end the sweep
        if e.code in (0, None):
            raise
        line = getattr(e, "line", None) or f"error: exit status {e.code}"
        message = line.partition(": ")[2]
        if isinstance(e.code, int) and e.code >= 128:  # 128 + a signal's number
            if not (folder / RESULT).exists():
                write_outcome(folder, "interrupted", message, overrides, job.job.num, e.code)
            raise
        write_outcome(folder, "failed", message, overrides, job.job.num, e.code)
    except Exception as e:  # a bug: its traceback, and the sweep goes on
        import traceback

        traceback.print_exc()
        write_outcome(folder, "failed", f"{type(e).__name__}: {one_line(e)}", overrides,
                      job.job.num, 1)
    return None


def _end_callbacks(cfg: Any) -> None:
    """What Hydra calls when a sweep ends (the summary), for a sweep that stopped early."""
    from hydra.utils import instantiate

    for node in (cfg.hydra.get("callbacks") or {}).values():
        callback = instantiate(node)
        if hasattr(callback, "on_multirun_end"):
            callback.on_multirun_end(config=cfg)


def failed_points(root: Path) -> list[dict[str, Any]]:
    """The ``result.json`` of the points of the sweep in ``root`` that failed, in job order."""
    from diffcli.workflows.sweep_summary import find_results

    if not root.is_dir():
        return []
    rows = [r.result for r in find_results(root).rows if r.result.get("status") == "failed"]
    return sorted(rows, key=lambda r: int(r.get("job_num") or 0))


@contextlib.contextmanager
def sweep_end(cfg: Any, sweep: Sweep | None) -> Iterator[None]:
    """Around Hydra's sweep, in the launching process: when the sweep stops early (an
    interrupt, a launcher's error) the end-of-sweep callbacks (the summary) run anyway; when it
    ran to its end and points failed, one line names the first and the exit status is its
    job's. Nothing for a single run (``sweep`` None) or Hydra's informational flags."""
    if sweep is None or cfg is None:
        yield
        return
    root = Path(str(cfg.hydra.sweep.dir))  # (now, as Hydra is about to: a ${now:} in it)
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):  # the error being raised is the one to show
            _end_callbacks(cfg)
        raise
    failed = failed_points(root)
    if not failed:
        return
    first, others = failed[0], [str(int(r.get("job_num") or 0) + 1) for r in failed[1:]]
    more = f" ({len(others)} more failed: points {', '.join(others)})" if others else ""
    typer.echo(f"error: {sweep.name(int(first.get('job_num') or 0))} failed: "
               f"{first.get('error')}{more}", err=True)
    raise SystemExit(int(first.get("exit_code") or 1))
