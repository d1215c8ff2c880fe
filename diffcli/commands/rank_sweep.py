"""``diffcli sweep-summary``: rank a sweep's runs by a metric (a table and a CSV).

A plain command (a folder argument and options, no Hydra config); the ranking itself is
:mod:`diffcli.workflows.sweep_summary`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from diffcli.commands import Command


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
    from diffcli.workflows.sweep_summary import sweep_summary

    sweep_summary(sweep_dir, metric, descending, csv)


COMMAND = Command(
    name="sweep-summary", config="", order=6,
    help="Rank a sweep's runs by a metric: a table on the console and a CSV.",
    example="diffcli sweep-summary multirun/2026-11-26/10-00-00 --metric fid_proxy",
    typer=sweep_summary_command,
)
