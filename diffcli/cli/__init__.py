"""The ``diffcli`` command line, by topic: the Typer app built from the registry of commands
(:mod:`~diffcli.cli.app`), the overrides and their one-line messages
(:mod:`~diffcli.cli.overrides`), launching Hydra (:mod:`~diffcli.cli.launch`) and shell
completion (:mod:`~diffcli.cli.completion`).

Trailing arguments are Hydra overrides (``key=value``, ``group=option``); ``-m`` runs a Hydra
multirun sweep; Hydra's own flags (``--cfg job``, ``--info``, ...) pass through.
"""

from diffcli.cli.app import app, main
from diffcli.cli.overrides import CONF_DIR

__all__ = ["CONF_DIR", "app", "main"]
