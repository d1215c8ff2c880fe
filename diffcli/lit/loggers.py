"""Experiment trackers for runs that may stop and continue in their folder: wandb that never
prompts (offline unless online mode was configured) and resumes its run, a CSV log that a
continued run appends to."""

from __future__ import annotations

import configparser
import csv
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from diffcli.errors import DiffcliError
from diffcli.files import atomic_write_text

WANDB_ID_FILE = "wandb-run-id"

WANDB_MODES = ("offline", "online", "disabled")


def _settings_mode(path: Path) -> str | None:
    """The ``mode`` in a wandb settings file (written by ``wandb online`` / ``wandb offline``)."""
    if not path.is_file():
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        return None
    return parser.get("default", "mode", fallback=None)


def resolve_wandb_mode(mode: str | None, cwd: Path | None = None) -> str:
    """Which wandb mode to use: an explicit ``mode``, else ``WANDB_MODE``, else what
    ``wandb online|offline`` saved (./wandb/settings, then the user's config dir), else offline.
    """
    if mode is None:
        mode = os.environ.get("WANDB_MODE")
    if mode is None:
        config_dir = Path(os.environ.get("WANDB_CONFIG_DIR", Path.home() / ".config" / "wandb"))
        for f in ((cwd or Path.cwd()) / "wandb" / "settings", config_dir / "settings"):
            mode = _settings_mode(f)
            if mode:
                break
    mode = {"run": "online", "dryrun": "offline", "disabled": "disabled"}.get(mode, mode)
    if mode is None:
        return "offline"
    if mode not in WANDB_MODES:
        raise DiffcliError(f"unknown wandb mode {mode!r}; choose one of: {', '.join(WANDB_MODES)}")
    return mode


def wandb_has_credentials() -> bool:
    """An API key is available without asking: WANDB_API_KEY or a netrc entry for wandb."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_run_id(save_dir: str | Path, rank: int) -> str:
    """The wandb run id of the run in ``save_dir``: the one saved in ``<save_dir>/wandb-run-id``
    (a run continued in its folder, e.g. after a SLURM requeue, continues its wandb run), else
    a new one, saved there by rank 0."""
    path = Path(save_dir) / WANDB_ID_FILE
    try:
        return path.read_text().strip()
    except OSError:
        pass
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if rank == 0:
        atomic_write_text(path, run_id + "\n")
    return run_id


def make_wandb_logger(save_dir: str, project: str = "diffcli", name: str | None = None,
                      mode: str | None = None, group: str | None = None, **kwargs: Any) -> Any:
    """A Lightning ``WandbLogger`` that cannot block on a login prompt, with its own wandb run.

    Offline runs are written under ``<save_dir>/wandb`` and can be uploaded later with
    ``wandb sync``. Online mode without credentials is refused with one line instead of
    wandb's interactive login. The run id is kept in ``<save_dir>/wandb-run-id`` and the run
    is resumed (``resume="allow"``) when the folder's run continues. A wandb run still open in
    this process (the previous job of a sweep) is finished first, so that each job has its own
    run; ``group`` groups the runs of one sweep.
    """
    import wandb
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    mode = resolve_wandb_mode(mode)
    if mode == "online" and not wandb_has_credentials():
        raise DiffcliError("wandb online mode is configured but no API key was found; run "
                           "`wandb login` or set WANDB_API_KEY (or use logger=csv)")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    if wandb.run is not None:
        wandb.finish()
    kwargs.setdefault("id", wandb_run_id(save_dir, rank_zero_only.rank))
    kwargs.setdefault("resume", "allow")
    logger = WandbLogger(project=project, name=name, save_dir=save_dir, group=group,
                         offline=mode == "offline", mode=mode, **kwargs)
    # Lightning always passes anonymous=None, which wandb>=0.19 warns about on every run.
    logger._wandb_init.pop("anonymous", None)
    if mode == "offline" and rank_zero_only.rank == 0:
        from rich.console import Console

        Console(stderr=True).print(f"wandb: offline run under {save_dir}/wandb (upload later: "
                                   f"wandb sync {save_dir}/wandb/offline-run-*)")
    return logger


def finish_loggers(loggers: list[Any]) -> None:
    """End the trackers' runs (wandb keeps its run open in the process otherwise, and the next
    job of a sweep would write into it)."""
    for logger in loggers:
        run = getattr(logger, "_experiment", None)
        if type(logger).__name__ == "WandbLogger" and run is not None:
            run.finish()


class _ContinuedWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued (Lightning's
    deletes it): its columns are kept and new rows appended."""

    def _check_log_dir_exists(self) -> None:
        try:
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])
        except OSError:
            pass


class RunCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` for a run that may continue in its folder (``resume``, a SLURM
    requeue): ``<save_dir>/<name>/<version>/metrics.csv`` is appended to, not replaced; see
    :func:`trim_metrics` for rows a continued run will log again."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(log_dir=self.log_dir)
        return self._experiment


def trim_metrics(path: Path, from_step: int) -> int:
    """Drop the rows of a metrics CSV at or after ``from_step`` (logged after the checkpoint a
    run continues from, they would be logged again); returns how many were dropped."""
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
    except OSError:
        return 0
    kept = [r for r in rows if not r.get("step") or int(float(r["step"])) < from_step]
    if len(kept) < len(rows):
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(kept)
        os.replace(tmp, path)
    return len(rows) - len(kept)
