"""Errors that the command line reports as one clear line (no traceback)."""

from __future__ import annotations


class DiffcliError(Exception):
    """A user-facing error: bad input, missing data, a missing or corrupt checkpoint.

    The CLI prints ``error: <message>`` on one line and exits non-zero;
    set ``DIFFCLI_DEBUG=1`` (or pass ``--debug``) to see the traceback. ``exit_code`` is the
    process's exit status, ``label`` the word before the message.
    """

    exit_code: int = 1
    label: str = "error"


class Interrupted(DiffcliError):
    """Training was stopped by a signal after saving its state (exit 128 + signal number)."""

    label = "interrupted"

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


class DatasetNotFoundError(DiffcliError):
    """A dataset's files are not where the config says they are."""


class CheckpointError(DiffcliError):
    """A checkpoint is missing, unreadable, or was not written by diffcli."""
