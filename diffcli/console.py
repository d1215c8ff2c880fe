"""What the console shows, readable where no terminal is: a log file and progress lines.

* :class:`ConsoleLog` copies everything written to stdout / stderr into a run's log file
  (``<run dir>/cli.log``), without the terminal's colour codes, for as long as it is entered.
* :func:`progress` is a progress bar over N units of work: a live rich bar on a terminal;
  elsewhere (a SLURM log, ``> file``, CI), where a live bar shows nothing until the end, a plain
  line every ``every_s`` seconds and at the end. A log file gets the plain lines either way.
"""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
_log: IO[str] | None = None  # the open ConsoleLog file, if any
_lock = threading.Lock()


def strip_ansi(text: str) -> str:
    """``text`` without terminal escape sequences (colours, cursor moves)."""
    return ANSI.sub("", text)


def log_only(line: str) -> None:
    """Write ``line`` to the open console log (not to the screen); nothing when none is open."""
    with _lock:
        if _log is not None:
            _log.write(strip_ansi(line).rstrip("\n") + "\n")
            _log.flush()


class _Tee(io.TextIOBase):
    """A text stream that writes to ``screen`` and, ANSI-stripped, to the console log; it is a
    terminal exactly when ``screen`` is (so rich decides on live bars from the real stream)."""

    def __init__(self, screen: IO[str]) -> None:
        self.screen = screen

    def write(self, text: str) -> int:
        self.screen.write(text)
        with _lock:
            if _log is not None:
                _log.write(strip_ansi(text))
                if "\n" in text:
                    _log.flush()
        return len(text)

    def flush(self) -> None:
        self.screen.flush()
        with _lock:
            if _log is not None:
                _log.flush()

    def isatty(self) -> bool:
        return self.screen.isatty()

    def fileno(self) -> int:
        return self.screen.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.screen, "encoding", "utf-8")


def screen(stream: IO[str]) -> IO[str]:
    """The stream under a :class:`ConsoleLog` tee (for live bars, which a log file should not
    get frame by frame); ``stream`` itself when it is not one."""
    return stream.screen if isinstance(stream, _Tee) else stream


class ConsoleLog:
    """``with ConsoleLog(path):`` appends what stdout and stderr show to ``path`` (created with
    its folder; a resumed run adds to it). Nested or repeated use logs to the newest file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._saved: tuple[Any, Any, IO[str] | None] | None = None

    def __enter__(self) -> ConsoleLog:
        global _log
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        with _lock:
            self._saved = (sys.stdout, sys.stderr, _log)
            _log = f
        sys.stdout, sys.stderr = _Tee(screen(sys.stdout)), _Tee(screen(sys.stderr))
        return self

    def __exit__(self, *exc: object) -> None:
        global _log
        if self._saved is None:
            return
        out, err, previous = self._saved
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = out, err
        with _lock:
            f, _log = _log, previous
        if f is not None:
            f.close()
        self._saved = None


def duration(seconds: float) -> str:
    """"0:07:01" (hours:minutes:seconds)."""
    s = max(0, round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def progress_line(label: str, done: int, total: int | None, elapsed_s: float,
                  unit: str = "") -> str:
    """"sampling 120/1000 steps | 3.20/s | ETA 0:04:35" (rate and ETA once there is one)."""
    unit = f" {unit}" if unit else ""
    parts = [f"{label} {done}/{total}{unit}" if total else f"{label} {done}{unit}"]
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    if rate > 0:
        parts.append(f"{rate:.2f}/s")
        if total:
            parts.append(f"ETA {duration((total - done) / rate)}" if done < total
                         else f"took {duration(elapsed_s)}")
    return " | ".join(parts)


class Bar:
    """Progress over ``total`` units (see :func:`progress`): ``advance(n)`` as work is done."""

    def __init__(self, label: str, total: int | None, console: Console, show: bool,
                 every_s: float, unit: str) -> None:
        self.label, self.total, self.unit, self.every_s = label, total, unit, every_s
        self.console = console
        self.show = show
        self.done = 0
        self.start = self.last = time.perf_counter()
        self.live: Progress | None = None
        self.task: Any = None

    def __enter__(self) -> Bar:
        self.start = self.last = time.perf_counter()
        if self.show and self.console.is_terminal:
            cols = [TextColumn(self.label), BarColumn(), MofNCompleteColumn(),
                    TextColumn(self.unit), TimeRemainingColumn()]
            live_console = Console(file=screen(self.console.file), force_terminal=True,
                                   width=self.console.width)
            self.live = Progress(*cols, console=live_console, transient=True)
            self.task = self.live.add_task("", total=self.total)
            self.live.start()
        return self

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.live is not None:
            self.live.advance(self.task, n)
        now = time.perf_counter()
        if now - self.last >= self.every_s and (self.total is None or self.done < self.total):
            self.last = now
            self._line()

    def _line(self) -> None:
        line = progress_line(self.label, self.done, self.total, time.perf_counter() - self.start,
                             self.unit)
        if self.live is not None:
            log_only(line)
        elif self.show:
            self.console.print(line, soft_wrap=True, highlight=False, markup=False)

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()
        if exc[0] is None and self.done and time.perf_counter() - self.start >= 1.0:
            self._line()  # where it ended, and how long it took (not for instant work)


def progress(label: str, total: int | None, console: Console | None = None, show: bool = True,
             every_s: float = 30.0, unit: str = "") -> Bar:
    """``with progress("sampling", 1000, unit="steps") as bar: ... bar.advance()`` - a live bar
    on a terminal, plain lines every ``every_s`` seconds and at the end elsewhere (and in the
    console log); ``show=False`` shows nothing."""
    return Bar(label, total, console or Console(stderr=True), show, every_s, unit)


__all__ = ["Bar", "ConsoleLog", "duration", "log_only", "progress",
           "progress_line", "screen", "strip_ansi"]
