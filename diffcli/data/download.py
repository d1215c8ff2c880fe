"""A dataset's root folder and torchvision's downloads into it, failing in one line.

The readers of :mod:`diffcli.data.sources`, :mod:`diffcli.data.cifar` and
:mod:`diffcli.data.celeba` find their files under ``root`` (:func:`data_root`) and, with
``download`` true, have torchvision fetch them first (:func:`run_download`). A missing root or a
failed download is one :class:`~diffcli.errors.DatasetNotFoundError` line naming the path and
how to get the files; options are named by their config key (``root``, ``download``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffcli.errors import DatasetNotFoundError, one_line

__all__ = ["FETCH_ADVICE", "data_root", "run_download", "short_reason"]

FETCH_ADVICE = "check the internet connection"
_MAX_REASON = 200  # characters of a download error kept in the one-line message


def short_reason(err: BaseException) -> str:
    """A short one-line reason for ``err``."""
    text = one_line(err)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def data_root(root: str | Path | None, label: str, holds: str, downloadable: bool = True) -> Path:
    """``root`` resolved; one-line error saying what root must hold when it is not set."""
    if root is None or str(root) == "":
        fetch = "; with download set to true, the files are fetched there" if downloadable else ""
        raise DatasetNotFoundError(
            f"{label} needs a data folder: set root to the folder that holds {holds}{fetch}"
        )
    return Path(root).expanduser().resolve()


def run_download(fetch: Callable[[], Any], what: str, where: Path, advice: str) -> None:
    """Run torchvision's ``fetch()``; any failure becomes one DatasetNotFoundError line."""
    try:
        fetch()
    except Exception as err:  # network, disk and checksum errors all surface the same way
        raise DatasetNotFoundError(
            f"could not download {what} into {where} ({short_reason(err)}); {advice}"
        ) from err

