"""Experiment trackers that never prompt: wandb offline unless online mode was configured."""

from __future__ import annotations

import configparser
import netrc
import os
from pathlib import Path
from typing import Any

from diffcli.errors import DiffcliError

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


def make_wandb_logger(save_dir: str, project: str = "diffcli", name: str | None = None,
                      mode: str | None = None, **kwargs: Any) -> Any:
    """A Lightning ``WandbLogger`` that cannot block on a login prompt.

    Offline runs are written under ``<save_dir>/wandb`` and can be uploaded later with
    ``wandb sync``. Online mode without credentials is refused with one line instead of
    wandb's interactive login.
    """
    from lightning.pytorch.loggers import WandbLogger

    mode = resolve_wandb_mode(mode)
    if mode == "online" and not wandb_has_credentials():
        raise DiffcliError("wandb online mode is configured but no API key was found; run "
                           "`wandb login` or set WANDB_API_KEY (or use logger=csv)")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_CONSOLE", "off")
    Path(save_dir).mkdir(parents=True, exist_ok=True)
    logger = WandbLogger(project=project, name=name, save_dir=save_dir,
                         offline=mode == "offline", mode=mode, **kwargs)
    # Lightning always passes anonymous=None, which wandb>=0.19 warns about on every run.
    logger._wandb_init.pop("anonymous", None)
    from lightning.pytorch.utilities import rank_zero_only

    if mode == "offline" and rank_zero_only.rank == 0:
        from rich.console import Console

        Console(stderr=True).print(f"wandb: offline run under {save_dir}/wandb (upload later: "
                                   f"wandb sync {save_dir}/wandb/offline-run-*)")
    return logger
