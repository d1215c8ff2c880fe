"""``diffcli sweep-summary <dir>``: rank a sweep's runs by a metric.

Every training run writes ``result.json`` in its folder when it finishes or is interrupted
(status, step, final loss, last FID proxy, all final scalar metrics, checkpoint, the job's
Hydra overrides, wall time). A Hydra multirun puts its jobs under
``multirun/<date>/<time>/<job num>/``; this module finds every ``result.json`` below a folder,
sorts the runs by a metric (``loss``, ``fid_proxy``, ``step``, ``wall_time_s`` or any logged
metric such as ``train/loss`` or ``val/fid_proxy``), prints a table and writes a CSV
(``<dir>/summary.csv`` by default). :class:`SweepSummaryCallback` does the same at the end of
a multirun when listed under ``hydra.callbacks``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.experimental.callback import Callback
from rich.console import Console
from rich.table import Table
from rich.text import Text

from diffcli.errors import DiffcliError

RESULT_FILE = "result.json"
NUMERIC_KEYS = ("loss", "fid_proxy", "step", "max_steps", "wall_time_s", "attempts")
CSV_COLUMNS = ("rank", "job", "overrides", "status", "step", "max_steps", "loss", "fid_proxy",
               "wall_time_s", "checkpoint")
TABLE_METRICS = {"loss", "fid_proxy", "step", "max_steps", "wall_time_s"}


@dataclass
class Row:
    """One run of a sweep: its folder relative to the sweep (``"."`` for the sweep folder
    itself), its Hydra overrides space-joined, and its parsed ``result.json``."""

    job: str
    overrides: str
    result: dict[str, Any]


@dataclass
class SweepResults:
    """What :func:`find_results` found: the readable runs and the unreadable ``result.json``."""

    rows: list[Row] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    """``path`` parsed, or None when it cannot be read or is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return data if isinstance(data, dict) else None


def _overrides(result: dict[str, Any], folder: Path) -> str:
    """The run's overrides: from ``result.json``, else ``<folder>/.hydra/overrides.yaml``."""
    value = result.get("overrides")
    if value is None:
        try:
            value = yaml.safe_load((folder / ".hydra" / "overrides.yaml").read_text("utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            value = None
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    return value if isinstance(value, str) else ""


def find_results(root: Path) -> SweepResults:
    """Every ``result.json`` under ``root`` (recursively, in path order), parsed; files that
    are not valid JSON objects are listed in ``skipped`` instead."""
    found = SweepResults()
    for path in sorted(root.rglob(RESULT_FILE)):
        result = _read_json(path)
        if result is None:
            found.skipped.append(path)
            continue
        job = path.parent.relative_to(root).as_posix()
        found.rows.append(Row(job, _overrides(result, path.parent), result))
    return found


def _metrics(result: dict[str, Any]) -> dict[str, Any]:
    metrics = result.get("metrics")
    return metrics if isinstance(metrics, dict) else {}


def _raw(result: dict[str, Any], metric: str) -> Any:
    """``result[metric]`` when it is a top-level key, else ``result["metrics"][metric]``."""
    return result[metric] if metric in result else _metrics(result).get(metric)


def metric_value(result: dict[str, Any], metric: str) -> float | None:
    """``metric`` of a run: a top-level key of ``result.json`` (``loss``, ``fid_proxy``,
    ``step``, ``wall_time_s``, ...) or else a key of its ``metrics`` (``train/loss``, ...).
    None when missing, not a number, or NaN."""
    value = _raw(result, metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return None if math.isnan(value) else float(value)


def sort_rows(rows: list[Row], metric: str, descending: bool = False) -> list[Row]:
    """``rows`` sorted by ``metric`` (smallest first, or largest with ``descending``); rows
    without the metric come last either way, in their original order."""

    def key(row: Row) -> tuple[bool, float]:
        value = metric_value(row.result, metric)
        if value is None:
            return (True, 0.0)
        return (False, -value if descending else value)

    return sorted(rows, key=key)


def available_metrics(rows: list[Row]) -> list[str]:
    """The metrics the runs can be sorted by: the numeric top-level keys and every logged
    metric of any run."""
    names = set(NUMERIC_KEYS)
    for row in rows:
        names.update(k for k in row.result if metric_value(row.result, k) is not None)
        names.update(_metrics(row.result))
    return sorted(names)


def _known(rows: list[Row], metric: str) -> bool:
    return metric in NUMERIC_KEYS or any(
        metric in row.result or metric in _metrics(row.result) for row in rows)


def _metric_keys(rows: list[Row]) -> list[str]:
    return sorted({str(k) for row in rows for k in _metrics(row.result)})


def _cell(value: Any) -> Any:
    """A value as a CSV cell: "" for None, JSON for lists and dicts."""
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


def _csv_row(rank: int, row: Row, metric: str, extra: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {k: _cell(row.result.get(k)) for k in CSV_COLUMNS}
    out.update(rank=rank, job=row.job, overrides=row.overrides)
    if metric not in CSV_COLUMNS:
        out[metric] = _cell(_raw(row.result, metric))
    metrics = _metrics(row.result)
    out.update({k: _cell(metrics.get(k)) for k in extra if k not in out})
    return out


def write_csv(rows: list[Row], path: Path, metric: str) -> None:
    """Write ``rows`` (already sorted; rank is their position) to ``path`` atomically: the
    standard columns, then ``metric`` unless it is one of them, then every logged metric."""
    extra = _metric_keys(rows)
    columns = list(CSV_COLUMNS) + ([metric] if metric not in CSV_COLUMNS else [])
    columns += [k for k in extra if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(_csv_row(i, row, metric, extra) for i, row in enumerate(rows, 1))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _steps(result: dict[str, Any]) -> str:
    step, max_steps = metric_value(result, "step"), metric_value(result, "max_steps")
    if step is None:
        return "-"
    return f"{step:.0f}" if max_steps is None else f"{step:.0f}/{max_steps:.0f}"


def _wall(seconds: float | None) -> str:
    """Seconds as ``H:MM:SS`` ("0:02:03"); "-" when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _relative(checkpoint: Any, root: Path | None = None) -> str:
    """A checkpoint path relative to the sweep folder ``root``, else to the working
    directory, when it lies below it."""
    if not checkpoint:
        return "-"
    path = Path(str(checkpoint))
    bases = [b for b in (root, Path.cwd()) if b is not None]
    pairs = [pair for b in bases for pair in ((path, b), (path.resolve(), b.resolve()))]
    for p, base in pairs:
        try:
            return str(p.relative_to(base))
        except ValueError:
            continue
    return str(path)


def split_overrides(rows: list[Row]) -> tuple[list[str], list[str]]:
    """(the overrides every row shares, each row's others): what the sweep varied."""
    words = [row.overrides.split() for row in rows]
    common = [w for w in words[0] if all(w in other for other in words)] if words else []
    return common, [" ".join(w for w in ws if w not in common) or "-" for ws in words]


def summary_table(rows: list[Row], metric: str, title: str, root: Path | None = None) -> Table:
    """``rows`` (already sorted) as a rich table: the overrides that differ between runs (the
    shared ones in the caption), checkpoints relative to ``root``; the best run, rank 1, in
    bold green."""
    extra = metric not in TABLE_METRICS
    common, varied = split_overrides(rows)
    caption = Text(f"every run: {' '.join(common)}") if common and len(rows) > 1 else None
    table = Table(title=Text(title), caption=caption)
    for name in ["#", "job", "overrides", "status", "step", "loss", "fid proxy",
                 *([metric] if extra else []), "wall", "checkpoint"]:
        text = name in ("job", "overrides", "status", "checkpoint")  # numbers are not folded
        table.add_column(name, overflow="fold", no_wrap=not text,
                         justify="right" if name in ("#", "step", "wall") else "left")
    for rank, row in enumerate(rows, 1):
        r = row.result
        cells = [str(rank), row.job, varied[rank - 1] if len(rows) > 1 else row.overrides,
                 str(r.get("status") or "-"), _steps(r),
                 _number(metric_value(r, "loss")), _number(metric_value(r, "fid_proxy")),
                 *([_number(metric_value(r, metric))] if extra else []),
                 _wall(metric_value(r, "wall_time_s")), _relative(r.get("checkpoint"), root)]
        best = rank == 1 and metric_value(r, metric) is not None
        table.add_row(*(Text(c) for c in cells), style="bold green" if best else None)
    return table


def _checked(root: Path, metric: str) -> SweepResults:
    """The sweep's results, or a DiffcliError for a missing or empty folder or an unknown
    metric."""
    if not root.is_dir():
        raise DiffcliError(f"{root}: no such sweep folder")
    found = find_results(root)
    if not found.rows and not found.skipped:
        raise DiffcliError(f"{root}: no {RESULT_FILE} under it (runs write one when they "
                           "finish or are interrupted); is this a sweep folder "
                           "(multirun/<date>/<time>)?")
    if not found.rows:
        raise DiffcliError(f"{root}: none of its {len(found.skipped)} {RESULT_FILE} could be "
                           f"read (first: {found.skipped[0]})")
    if not _known(found.rows, metric):
        raise DiffcliError(f"unknown metric {metric!r}; available: "
                           f"{', '.join(available_metrics(found.rows))}")
    return found


def wide_console(stderr: bool = False) -> Console:
    """A console for the table: the terminal's width, or 160 columns in a log or a pipe
    (rich's 80 would fold every column)."""
    console = Console(stderr=stderr)
    return console if console.is_terminal else Console(stderr=stderr, width=160)


def sweep_summary(root: Path, metric: str = "loss", descending: bool = False,
                  csv_path: Path | None = None, console: Console | None = None) -> Path:
    """Print ``root``'s runs ranked by ``metric`` and write them to ``csv_path`` (default
    ``root / "summary.csv"``); returns the CSV's path."""
    root = Path(root)
    console = console or wide_console()
    found = _checked(root, metric)
    rows = sort_rows(found.rows, metric, descending)
    order = "largest" if descending else "smallest"
    console.print(summary_table(rows, metric, f"{root}: {len(rows)} runs by {metric}, "
                                              f"{order} first", root))
    if found.skipped:
        console.print(f"skipped {len(found.skipped)} unreadable {RESULT_FILE}: "
                      f"{found.skipped[0]}", markup=False, highlight=False, soft_wrap=True)
    csv_path = Path(csv_path) if csv_path is not None else root / "summary.csv"
    try:
        write_csv(rows, csv_path, metric)
    except OSError as e:
        raise DiffcliError(f"{csv_path}: cannot write the CSV: {e.strerror or e}") from None
    console.print(f"wrote {csv_path}", markup=False, highlight=False, soft_wrap=True)
    return csv_path


class SweepSummaryCallback(Callback):
    """A Hydra callback that prints and writes the sweep's summary when a multirun ends::

        hydra:
          callbacks:
            sweep_summary:
              _target_: diffcli.workflows.sweep_summary.SweepSummaryCallback
              metric: loss

    It never raises: a problem is printed on stderr as ``sweep-summary: <message>``.
    """

    def __init__(self, metric: str = "loss", descending: bool = False) -> None:
        self.metric = metric
        self.descending = descending

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        """Summarize ``hydra.sweep.dir`` if any of its runs wrote a ``result.json``."""
        try:
            root = Path(str(config.hydra.sweep.dir))
            if not root.is_dir() or next(root.rglob(RESULT_FILE), None) is None:
                return
            sweep_summary(root, self.metric, self.descending, console=wide_console(stderr=True))
        except DiffcliError as e:
            print(f"sweep-summary: {e}", file=sys.stderr)
        except Exception as e:  # a summary must never fail the sweep that just ran
            print(f"sweep-summary: {type(e).__name__}: {e}", file=sys.stderr)


__all__ = [
    "Row",
    "SweepResults",
    "SweepSummaryCallback",
    "available_metrics",
    "find_results",
    "metric_value",
    "sort_rows", "split_overrides", "wide_console",
    "summary_table",
    "sweep_summary",
    "write_csv",
]
