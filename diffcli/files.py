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
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from diffcli.errors import DiffcliError


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
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:  # a full disk says ENOSPC, not where
            e.filename = str(path)
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


MARKER = ".diffcli-output"  # in every output folder: what kind of output diffcli wrote there
OUTPUT_KEY = "diffcli_output"  # in every JSON output file: its kind


class OutputRefused(DiffcliError):
    """``out=`` names something that diffcli must not replace (a user's file or folder, the
    working directory, HOME, /): one line, exit 2, nothing written."""

    exit_code = 2


def output_kind(path: Path) -> str | None:
    """The kind of diffcli output at ``path``: a folder's marker file, a JSON file's
    ``diffcli_output`` key; None for anything diffcli did not write."""
    try:
        if path.is_dir():
            return json.loads((path / MARKER).read_text()).get("kind")
        if path.is_file() and path.stat().st_size < 64 << 20:
            record = json.loads(path.read_text())
            return record.get(OUTPUT_KEY) if isinstance(record, dict) else None
    except (OSError, ValueError, AttributeError):
        return None
    return None


def _what_is_there(path: Path) -> str:
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return f"a folder diffcli did not write ({shown or 'empty'})"
    return "a file diffcli did not write" if path.exists() else "nothing"


def check_output(path: Path, kind: str, *, overwrite: bool, folder: bool) -> None:
    """Refuse (:class:`OutputRefused`, one line) an output ``path`` that is the working
    directory, one of its parents, HOME or /, and, with ``overwrite``, an existing ``path``
    that is not an earlier diffcli output of the same ``kind`` (a folder for a folder, a file
    for a file). Nothing is touched."""
    where = path.expanduser().resolve()
    cwd, home = Path.cwd().resolve(), Path.home().resolve()
    protected = {Path("/"): "/", home: "HOME", cwd: "the working directory"}
    protected.update({p: "a parent of the working directory" for p in cwd.parents
                      if p not in protected})
    if where in protected:
        raise OutputRefused(f"out={path} is {protected[where]}: refusing to write there; "
                            "name a new folder")
    if not overwrite or not (path.exists() or path.is_symlink()):
        return
    found = output_kind(path)
    if path.is_symlink() or path.is_dir() != folder or found != kind:
        what = f"an earlier {found} output" if found else _what_is_there(path)
        raise OutputRefused(f"overwrite=true would replace {path}, which is {what}, not an "
                            f"earlier {kind} output: refusing; without overwrite=true the new one "
                            "goes next to it")


def check_writable(path: Path, key: str, shown: Path | None = None) -> None:
    """Refuse (:class:`OutputRefused`, one line) a folder ``path`` (``key=shown`` names it) that
    cannot be created or written: its nearest existing ancestor is not a folder, is on a
    read-only file system, or refuses a new folder (an empty probe folder, removed at once)."""
    where = path.expanduser().absolute()
    existing = next((p for p in (where, *where.parents) if p.exists()), Path("/"))
    reason = None
    if not existing.is_dir():
        reason = f"{existing} is not a folder"
    elif os.statvfs(existing).f_flag & os.ST_RDONLY:
        reason = f"{existing} is on a read-only file system"
    else:
        try:  # root passes every permission check, and /proc looks writable: try it
            os.rmdir(tempfile.mkdtemp(prefix=".diffcli-probe-", dir=existing))
        except OSError as e:
            reason = f"{existing}: {e.strerror or e}"
    if reason is not None:
        raise OutputRefused(f"{key}={shown or path}: cannot write there ({reason}); name a "
                            "writable folder")


def free_file(path: Path) -> Path:
    """``path``, or the first of ``stem_2.suffix``, ``stem_3.suffix``, ... that does not exist."""
    for i in range(1, 10_000):
        candidate = path if i == 1 else path.with_name(f"{path.stem}_{i}{path.suffix}")
        if not (candidate.exists() or candidate.is_symlink()):
            return candidate
    raise FileExistsError(f"no free file name next to {path}")


def write_json_output(path: Path, record: dict[str, Any], kind: str, *,
                      overwrite: bool = False) -> Path:
    """Write ``record`` (strict JSON, marked as a ``kind`` output) to ``path`` - or, when
    ``path`` exists and ``overwrite`` is false, to the first free ``path_2``, ... - atomically;
    returns the file written. ``overwrite`` replaces only an earlier output of ``kind``."""
    check_output(path, kind, overwrite=overwrite, folder=False)
    target = path if overwrite else free_file(path)
    return atomic_write_text(target, dumps_json({OUTPUT_KEY: kind, **record}))


def _dead(owner: dict[str, Any]) -> bool:
    """Whether the process that wrote an output-folder marker ``owner`` is gone (this host's
    processes only; another host's are assumed alive)."""
    pid = owner.get("pid")
    if not isinstance(pid, int) or owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def sweep_stale(parent: Path) -> list[Path]:
    """Remove what a killed command (``kill -9``, a power cut) left in ``parent``: its hidden
    temporary folders (``.<name>.<random>.tmp`` whose marker names a process of this host that
    is gone) and the empty folder each had claimed. Returns what was removed."""
    removed = []
    for tmp in parent.glob(".*.tmp"):
        try:
            owner = json.loads((tmp / MARKER).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(owner, dict) or not _dead(owner):
            continue
        shutil.rmtree(tmp, ignore_errors=True)
        removed.append(tmp)
        claimed = parent / tmp.name[1:-len(".tmp")].rsplit(".", 1)[0]
        with contextlib.suppress(OSError):
            claimed.rmdir()  # only when empty: a finished output is never touched
            removed.append(claimed)
    return removed


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """SIGINT and SIGTERM held back while the block runs and acted on when it ends (their
    handlers are swapped for ones that only note the signal; in the main thread only, where
    Python runs handlers): for a few file operations whose results must exist together or not
    at all. A signal mask would not do: another thread (torch's) takes a masked signal and the
    main thread still runs the handler."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum))
                for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:  # as it would have been handled: Ctrl-C raises, SIGTERM ends the command
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(caught[0])


class OutputFolder:
    """A results folder that appears complete or not at all.

    ``with OutputFolder(final) as tmp:`` writes into ``tmp`` (a hidden folder beside
    ``final``); on success ``tmp`` is renamed to the chosen name, on any error it is deleted
    and nothing else changes. The chosen name (``self.path``) is ``final`` itself, or, when
    ``final`` exists, the first free ``final_2``, ``final_3``, ... (claimed up front, so
    concurrent calls never share a folder); with ``overwrite=True`` an existing ``final`` is
    replaced as a whole, only once the new folder is complete.
    """

    def __init__(self, final: str | Path, overwrite: bool = False, kind: str = "output") -> None:
        self.final = Path(final)
        self.overwrite = overwrite
        self.kind = kind
        self.path = self.final
        self.tmp: Path | None = None
        self._claimed = self._made_parent = False
        check_output(self.final, kind, overwrite=overwrite, folder=True)  # before any work

    def __enter__(self) -> Path:
        self._made_parent = not self.final.parent.exists()
        self.final.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(self.final.parent)
        try:  # a Ctrl-C in here (no __exit__ follows) leaves no claimed or temporary folder
            with deferred_signals():  # the folders and what says they exist: made together
                if not self.overwrite:
                    self.path = claim_dir(self.final)
                    self._claimed = True
                self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                                 dir=self.path.parent))
                os.chmod(self.tmp, 0o777 & ~_umask())
                owner = {"kind": self.kind, "pid": os.getpid(), "host": socket.gethostname()}
                (self.tmp / MARKER).write_text(json.dumps(owner) + "\n")
        except BaseException as e:
            if self.tmp is not None:
                self.__exit__(type(e), e, e.__traceback__)
            elif self._claimed:
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            raise
        return self.tmp

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        assert self.tmp is not None
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if isinstance(exc, OSError):  # name the output, not its temporary folder
                inside = exc.filename and Path(str(exc.filename)).is_relative_to(self.tmp)
                exc.filename = str(self.path / Path(str(exc.filename)).relative_to(self.tmp)) \
                    if inside else exc.filename or str(self.path)
            if self._claimed:
                with contextlib.suppress(OSError):
                    self.path.rmdir()
            if self._made_parent:  # e.g. export/ made for this output alone: leave no trace
                with contextlib.suppress(OSError):
                    self.final.parent.rmdir()
            return
        try:
            if self.overwrite and self.path.exists():
                self._replace()
            else:
                os.replace(self.tmp, self.path)  # onto the empty folder claimed in __enter__
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        fsync_dir(self.path.parent)

    def _replace(self) -> None:
        """Swap the complete new folder in for the earlier output (checked again first)."""
        assert self.tmp is not None
        check_output(self.path, self.kind, overwrite=True, folder=True)
        old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".old",
                                    dir=self.path.parent))
        try:
            os.replace(self.path, old / "x")
            try:
                os.replace(self.tmp, self.path)
            except BaseException:
                os.replace(old / "x", self.path)  # put the earlier output back
                raise
        finally:
            shutil.rmtree(old, ignore_errors=True)



@contextlib.contextmanager
def staged_files(folder: Path) -> Iterator[Path]:
    """``with staged_files(folder) as tmp:`` writes files into a hidden temporary folder
    inside ``folder``; on success each file is renamed into ``folder`` (replacing an earlier
    file of that name), on any error or Ctrl-C the temporary folder is removed and ``folder``
    is as it was. For commands whose pictures join earlier ones (noise-viz's ``viz/``)."""
    folder.mkdir(parents=True, exist_ok=True)
    sweep_stale(folder)
    tmp = Path(tempfile.mkdtemp(prefix=".staged.", suffix=".tmp", dir=folder))
    owner = {"kind": "staged", "pid": os.getpid(), "host": socket.gethostname()}
    (tmp / MARKER).write_text(json.dumps(owner) + "\n")  # a killed command's: swept later
    try:
        yield tmp
        for path in sorted(tmp.iterdir()):
            if path.name != MARKER:
                os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class NpzStream:
    """An ``.npz`` written a chunk at a time: one large array (``name``, of a ``shape`` and
    ``dtype`` known up front) streamed row block by row block into a deflated zip member, the
    small arrays added by :meth:`close`. ``np.load`` reads it as one of ``np.savez_compressed``;
    memory holds one chunk, not the array.

    >>> with NpzStream(path, "images", (n, 8, 8, 1), np.uint8) as out:  # doctest: +SKIP
    ...     for chunk in chunks: out.write(chunk)                        # (B, 8, 8, 1) each
    ...     out.close(seeds=np.arange(n))
    """

    def __init__(self, path: Path, name: str, shape: tuple[int, ...], dtype: Any) -> None:
        import zipfile

        import numpy as np

        self.path, self.name = Path(path), name
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.rows = 0
        self._zip = zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_DEFLATED,
                                    allowZip64=True)
        self._member: BinaryIO | None = self._zip.open(f"{name}.npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}
        np.lib.format.write_array_header_2_0(self._member, header)

    def write(self, chunk: Any) -> None:
        """Append ``chunk`` (B, *shape[1:]) of the declared dtype: the next B rows."""
        import numpy as np

        chunk = np.ascontiguousarray(chunk)
        if chunk.dtype != self.dtype or tuple(chunk.shape[1:]) != self.shape[1:]:
            raise ValueError(f"chunk {chunk.dtype} {chunk.shape} does not fit {self.name}: "
                             f"{self.dtype} {self.shape}")
        if self.rows + len(chunk) > self.shape[0] or self._member is None:
            raise ValueError(f"{self.name} holds {self.shape[0]} rows; got more")
        self._member.write(chunk.tobytes())
        self.rows += len(chunk)

    def close(self, **small: Any) -> Path:
        """Finish the streamed array (every declared row written) and add ``small`` arrays."""
        import numpy as np

        if self.rows != self.shape[0]:
            raise ValueError(f"{self.name}: {self.rows} of {self.shape[0]} rows were written")
        if self._member is not None:
            self._member.close()
            self._member = None
        for key, value in small.items():
            with self._zip.open(f"{key}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(value), allow_pickle=False)
        self._zip.close()
        return self.path

    def __enter__(self) -> NpzStream:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._member is not None:  # an error before close(): leave no half-written member
            with contextlib.suppress(Exception):
                self._member.close()
            self._member = None
        with contextlib.suppress(Exception):
            self._zip.close()
