"""Checks made before Hydra starts a job (and so before it creates or writes any folder).

Every checkpoint a command is about to read is loaded safely and validated here first
(:func:`diffcli.runs.load_checkpoint`: allowlisted config, finite weights), and
``diffcli train`` checks its run folder and what it resumes. A refused checkpoint thus leaves
no trace: no run folder, no ``.hydra/`` files, no log. The workflows check again when they
run (the files may have changed in between).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from diffcli.errors import CheckpointError
from diffcli.runs import find_latest_checkpoint, load_checkpoint, run_roots


def _literal_run_dir(cfg: DictConfig) -> Path | None:
    """``hydra.run.dir`` when the user gave a plain path (the default pattern is left alone:
    resolving it would claim a folder)."""
    node = OmegaConf.select(cfg, "hydra.run")
    if node is None:
        return None
    value = OmegaConf.to_container(node, resolve=False).get("dir")
    return Path(value) if isinstance(value, str) and "${" not in value else None


def _newest(cfg: DictConfig) -> Path | None:
    try:
        return find_latest_checkpoint(run_roots(str(cfg.runs_root)))
    except CheckpointError:
        return None  # the workflow says so, in its own words


def _train(cfg: DictConfig) -> None:
    from diffcli.workflows.rundir import check_run_dir
    from diffcli.workflows.train import check_resumable, resume_path

    resume = resume_path(cfg, here=None)
    if resume is not None:
        check_resumable(resume, cfg)
    run_dir = _literal_run_dir(cfg)
    if run_dir is not None:
        check_run_dir(run_dir, resume)


def preflight(command: str, cfg: DictConfig) -> None:
    """Raise a one-line :class:`~diffcli.errors.DiffcliError` for what ``command`` would
    refuse later anyway, before anything is written."""
    if command == "train":
        _train(cfg)
        return
    if command not in ("sample", "eval_fid", "noise_viz"):
        return
    if cfg.get("ckpt"):
        load_checkpoint(Path(str(cfg.ckpt)))
        return
    wants_run = {"sample": True, "eval_fid": not cfg.get("samples"),
                 "noise_viz": bool(cfg.get("reverse"))}[command]
    newest = _newest(cfg) if wants_run else None
    if newest is not None:
        load_checkpoint(newest)
