"""Errors that the command line reports as one clear line (no traceback)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


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


class Exit(SystemExit):
    """The exit after an error's one line was printed: the exit ``code`` and that ``line``
    (a sweep's job records it in its ``result.json``)."""

    def __init__(self, code: int, line: str) -> None:
        super().__init__(code)
        self.line = line


class DatasetNotFoundError(DiffcliError):
    """A dataset's files are not where the config says they are."""


class CheckpointError(DiffcliError):
    """A checkpoint is missing, unreadable, or was not written by diffcli."""


@contextlib.contextmanager
def user_errors(where: str) -> Iterator[None]:
    """Turn a ``ValueError`` / ``TypeError`` raised inside into a one-line
    :class:`DiffcliError` prefixed with ``where`` (the config key or file at fault): library
    code raises plain ValueErrors, the command line shows them as user errors."""
    try:
        yield
    except DiffcliError:
        raise
    except (ValueError, TypeError) as e:
        raise DiffcliError(f"{where}: {' '.join(str(e).split())}") from None


def number_text(x: float) -> str:
    """A number as a message shows it: "3" for 3.0, "0.5" for 0.5."""
    return str(int(x)) if float(x).is_integer() else str(x)


def _first_line(err: BaseException) -> str:
    """The first non-blank line of ``str(err)``, whitespace collapsed; "" when there is none."""
    for line in str(err).splitlines():
        if line.strip():
            return " ".join(line.split())
    return ""


def one_line(err: BaseException) -> str:
    """``err`` as a single line for a message: its first line, plus its cause's first line.

    The cause (``__cause__``, or ``__context__`` unless suppressed with ``from None``) is added
    after ": " when it has text that the first line does not already contain. An exception
    without text is named by its type (e.g. ``"EOFError"``).
    """
    text = _first_line(err) or type(err).__name__
    cause = err.__cause__ if err.__cause__ is not None else (
        None if err.__suppress_context__ else err.__context__)
    extra = _first_line(cause) if cause is not None else ""
    return f"{text}: {extra}" if extra and extra not in text else text
