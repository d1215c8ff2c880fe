"""errors.one_line: an exception as a single line for a user-facing message."""

from __future__ import annotations

import pytest

from diffcli.errors import DiffcliError, one_line


def _raised(make) -> BaseException:
    with pytest.raises(BaseException) as info:
        make()
    return info.value


def test_first_line_only_whitespace_collapsed() -> None:
    err = ValueError("\n  bad   value\tin file\nsecond line\n")
    assert one_line(err) == "bad value in file"


def test_empty_message_names_the_type() -> None:
    assert one_line(EOFError()) == "EOFError"
    assert one_line(OSError("   \n ")) == "OSError"


def test_cause_first_line_is_added() -> None:
    def make() -> None:
        try:
            raise OSError("disk full\nerrno 28")
        except OSError as e:
            raise DiffcliError("could not write x.ckpt") from e

    assert one_line(_raised(make)) == "could not write x.ckpt: disk full"


def test_implicit_context_counts_unless_suppressed() -> None:
    def implicit() -> None:
        try:
            raise KeyError("data")
        except KeyError:
            raise DiffcliError("bad batch") from None

    def chained() -> None:
        try:
            raise KeyError("data")
        except KeyError:
            raise DiffcliError("bad batch")  # noqa: B904 - the implicit context is the point

    assert one_line(_raised(implicit)) == "bad batch"
    assert one_line(_raised(chained)) == "bad batch: 'data'"


def test_cause_already_in_the_message_is_not_repeated() -> None:
    def make() -> None:
        try:
            raise ValueError("truncated")
        except ValueError as e:
            raise DiffcliError("cannot read x.png (truncated); fix or remove it") from e

    assert one_line(_raised(make)) == "cannot read x.png (truncated); fix or remove it"


def test_cause_without_text_is_not_added() -> None:
    def make() -> None:
        try:
            raise EOFError()
        except EOFError as e:
            raise DiffcliError("could not read the pickle") from e

    assert one_line(_raised(make)) == "could not read the pickle"
