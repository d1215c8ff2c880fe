"""What the console shows where no terminal is: the console log (cli.log) and progress lines."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from rich.console import Console

from diffcli.console import ConsoleLog, log_only, progress, progress_line, strip_ansi


def test_console_log_copies_stdout_and_stderr_without_colours(tmp_path: Path, capsys):
    log = tmp_path / "run" / "cli.log"
    with ConsoleLog(log):
        print("header")
        Console(stderr=True, force_terminal=True).print("[red]done[/]: 3 steps")
        log_only("only in the log")
        sys.stderr.write("no newline yet")
    shown = capsys.readouterr()
    assert shown.out == "header\n" and "only in the log" not in shown.err
    assert "\x1b[" in shown.err  # the screen keeps its colours ...
    # ... the log does not
    assert log.read_text() == "header\ndone: 3 steps\nonly in the log\nno newline yet"
    print("after")
    log_only("ignored: no log open")
    assert "after" not in log.read_text()
    with ConsoleLog(log):  # a continued run appends
        print("second attempt")
    assert log.read_text().endswith("second attempt\n")


def test_console_log_keeps_the_terminal_question(tmp_path: Path):
    """rich decides on live bars from the real stream: a tee of a non-terminal is none."""
    with ConsoleLog(tmp_path / "cli.log"):
        assert not Console(stderr=True).is_terminal


def test_progress_is_plain_lines_without_a_terminal(tmp_path: Path):
    console = Console(file=io.StringIO(), force_terminal=False)
    with ConsoleLog(tmp_path / "cli.log"), progress("sampling", 4, console, every_s=0.0,
                                                     unit="steps") as bar:
        for _ in range(4):
            bar.advance()
    lines = console.file.getvalue().splitlines()
    assert [ln.split(" | ")[0] for ln in lines] == [f"sampling {i}/4 steps" for i in (1, 2, 3)]
    assert "/s" in lines[0] and "ETA" in lines[0]


def test_progress_on_a_terminal_is_a_bar_and_the_log_gets_lines(tmp_path: Path):
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    log = tmp_path / "cli.log"
    with ConsoleLog(log), progress("encoding latents", 3, console, every_s=0.0) as bar:
        for _ in range(3):
            bar.advance()
    assert "encoding latents 1/3" not in console.file.getvalue()  # a live bar, no lines
    assert "encoding latents 1/3" in log.read_text()
    quiet = Console(file=io.StringIO(), force_terminal=False)
    with progress("features", 2, quiet, show=False, every_s=0.0) as bar:
        bar.advance(2)
    assert quiet.file.getvalue() == ""


def test_progress_line():
    assert progress_line("sampling", 120, 1000, 60.0, "steps") == \
        "sampling 120/1000 steps | 2.00/s | ETA 0:07:20"
    assert progress_line("sampling", 1000, 1000, 500.0) == \
        "sampling 1000/1000 | 2.00/s | took 0:08:20"
    assert progress_line("encoding", 0, None, 0.0) == "encoding 0"
    assert strip_ansi("\x1b[1;32mok\x1b[0m \x1b[2K") == "ok "
