"""Files and folders that appear whole or not at all.

:func:`atomic_write` writes a file under a temporary name in the same folder, fsyncs it and
renames it over the target (``os.replace`` is atomic on POSIX within one file system), so a
reader, a crash or a full disk leaves either the previous file or the new one, never a
truncated mix. :class:`OutputFolder` does the same for a folder of results: everything is
written into a hidden temporary folder that is renamed into place at the end.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give it a normal file's mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """:func:`atomic_write` of a UTF-8 text."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def json_safe(obj: Any) -> Any:
    """``obj`` with non-finite floats as the strings "inf", "-inf" and "nan", so that the JSON
    written is strict (Python's ``Infinity`` is rejected by other parsers)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dumps_json(obj: Any) -> str:
    """Strict, indented JSON of ``obj`` (:func:`json_safe`; other objects as ``str``)."""
    return json.dumps(json_safe(obj), indent=2, default=str, allow_nan=False)


def claim_dir(path: Path) -> Path:
    """Create ``path`` (or, when it exists, ``path_2``, ``path_3``, ...) exclusively and return
    the one created: two processes never get the same folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 10_000):
        candidate = path if i == 1 else path.with_name(f"{path.name}_{i}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free folder name next to {path}")


class OutputFolder:
    """A results folder that appears complete or not at all.

    ``with OutputFolder(final) as tmp:`` writes into ``tmp`` (a hidden folder beside
    ``final``); on success ``tmp`` is renamed to the chosen name, on any error it is deleted
    and nothing else changes. The chosen name (``self.path``) is ``final`` itself, or, when
    ``final`` exists, the first free ``final_2``, ``final_3``, ... (claimed up front, so
    concurrent calls never share a folder); with ``overwrite=True`` an existing ``final`` is
    replaced as a whole, only once the new folder is complete.
    """

    def __init__(self, final: str | Path, overwrite: bool = False) -> None:
        self.final = Path(final)
        self.overwrite = overwrite
        self.path = self.final
        self.tmp: Path | None = None
        self._claimed = False

    def __enter__(self) -> Path:
        self.final.parent.mkdir(parents=True, exist_ok=True)
        if not self.overwrite:
            self.path = claim_dir(self.final)
            self._claimed = True
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                         dir=self.path.parent))
        os.chmod(self.tmp, 0o777 & ~_umask())
        return self.tmp

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self.tmp is not None
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self._claimed:
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            return
        if self.overwrite and self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old",
                                        dir=self.path.parent))
            os.replace(self.path, old / "x")
            os.replace(self.tmp, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.path)  # onto the empty folder claimed in __enter__
        fsync_dir(self.path.parent)

