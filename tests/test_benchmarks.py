"""The benchmark system (issue 35): every script in benchmarks/ is a registered benchmark that
runs end to end with its smoke settings, every results table in the docs is what its JSON in
docs/results/ renders to, and no JSON is stale (its resolved settings are what its preset
resolves to today). The benchmarks import the installed diffcli."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORK = {"__init__", "__main__", "core", "auto_pick"}  # auto_pick: sampler=auto's rule


def bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m benchmarks <args>`` from ``tmp_path``, with only benchmarks/ on the path
    besides the installed packages (the source tree's diffcli is not imported)."""
    link = tmp_path / "path"
    link.mkdir(exist_ok=True)
    if not (link / "benchmarks").exists():
        (link / "benchmarks").symlink_to(ROOT / "benchmarks")
    env = {**os.environ, "PYTHONPATH": str(link), "BENCHMARKS_ROOT": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)


def names(tmp_path: Path) -> list[str]:
    proc = bench(tmp_path, "list")
    assert proc.returncode == 0, proc.stderr
    return [line.split()[0] for line in proc.stdout.splitlines()]


def test_every_script_is_a_benchmark(tmp_path: Path):
    scripts = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - FRAMEWORK
    assert set(names(tmp_path)) == scripts


def test_tables_match_their_results_and_none_is_stale(tmp_path: Path):
    proc = bench(tmp_path, "check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def benchmarks_importable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``benchmarks`` importable in this process (only that folder put on the path: diffcli
    stays the installed one), as ``python -m benchmarks`` from the checkout has it."""
    link = tmp_path / "path"
    link.mkdir()
    (link / "benchmarks").symlink_to(ROOT / "benchmarks")
    monkeypatch.syspath_prepend(str(link))
    monkeypatch.setenv("PYTHONPATH", str(link))  # for the processes a benchmark starts
    monkeypatch.setenv("BENCHMARKS_ROOT", str(ROOT))
    monkeypatch.setenv("BENCHMARKS_IN_PROCESS", "1")  # the diffcli commands: in this process
    monkeypatch.chdir(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(
    {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - FRAMEWORK))
def test_smoke(tmp_path: Path, name: str, benchmarks_importable: None):
    """``python -m benchmarks run NAME --smoke`` runs end to end and writes its JSON (with
    provenance) to the scratch folder, never to docs/results. In this process (the import of
    torch is paid once a worker), the diffcli commands a benchmark runs through
    ``run_diffcli`` too (BENCHMARKS_IN_PROCESS); the ones whose process is the point (memory,
    train_throughput's isolated rows, guidance's two trainings side by side) stay processes."""
    from benchmarks.__main__ import main

    before = sorted((ROOT / "docs" / "results").glob("*.json"))
    stamps = [p.stat().st_mtime for p in before]
    assert main(["run", name, "--smoke", "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / f"{name}.json").read_text())
    assert record["smoke"] and record["provenance"]["wall_s"] >= 0
    assert record["provenance"]["machine"]["cores"] and record["resolved_sha256"]
    rows = record["result"].get("rows", []) if isinstance(record["result"], dict) else []
    assert not [r for r in rows if isinstance(r, dict) and r.get("error")], rows  # each ran
    assert [p.stat().st_mtime for p in before] == stamps
    import diffcli

    assert ROOT / "diffcli" not in Path(diffcli.__file__).resolve().parents  # the installed one


def test_stale_names_what_changed_and_lets_a_neutral_new_key_pass(
        tmp_path: Path, benchmarks_importable: None):
    """A result is stale when a pinned value changed or a key appeared with a value that changes
    what runs; a key added since at the value that does what the code did before it existed
    (declared in UNCHANGED_BY_DEFAULT) leaves it current."""
    from benchmarks import core

    preset = {"train": {"module": {"prediction": "v"}}}
    published = core.Benchmark("fake", "a fake", preset, run=lambda s, w: {})
    core.run(published, False, tmp_path, tmp_path / "work")
    assert core.stale({"fake": published}, tmp_path) == []

    def now(**module: object) -> dict[str, core.Benchmark]:
        moved = {"train": {"module": {"prediction": "v", **module}}}
        return {"fake": core.Benchmark("fake", "a fake", moved, run=lambda s, w: {})}

    [line] = core.stale(now(prediction="eps"), tmp_path)
    assert "train.module.prediction: 'v' -> 'eps'" in line
    assert "python -m benchmarks run fake" in line
    [line] = core.stale(now(objective="edm"), tmp_path)
    assert "train.module.objective added = 'edm'" in line
    neutral = {"module.objective": "ddpm"}
    assert core.differences({"a": {"module": {}}}, {"a": {"module": {"objective": "ddpm"}}},
                            neutral) == []
    assert core.differences({"a": 1}, {"a": 1, "b": {"module": {"objective": "edm"}}},
                            neutral) == ["b.module.objective added = 'edm'"]


def test_a_stopped_benchmark_retrains_only_what_had_not_finished(
        tmp_path: Path, benchmarks_importable: None, monkeypatch: pytest.MonkeyPatch):
    """A run folder is reused only when this same clean commit finished it with the same
    arguments; a partial run, other arguments or uncommitted changes start it afresh."""
    from benchmarks import core

    monkeypatch.setattr(core, "commit", lambda: "abc")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_text("partial")
    assert not core.finished_before(run, ["train", "seed=0"]) and not run.exists()
    run.mkdir()
    (run / "weights").write_text("done")
    core.mark_finished(run, ["train", "seed=0"])
    assert core.finished_before(run, ["train", "seed=0"]) and (run / "weights").is_file()
    monkeypatch.setattr(core, "commit", lambda: "abc+dirty")
    assert not core.finished_before(run, ["train", "seed=0"]) and not run.exists()
    monkeypatch.setattr(core, "commit", lambda: "abc")
    run.mkdir()
    core.mark_finished(run, ["train", "seed=0"])
    assert not core.finished_before(run, ["train", "seed=1"]) and not run.exists()


def test_sigterm_stops_a_benchmark_and_the_command_it_waits_for(tmp_path: Path):
    """`kill <benchmark>` must not leave its `diffcli train` running as an orphan (one did, for
    35 minutes of a 2-core CPU): the benchmark's SIGTERM handler turns the signal into an
    exception, and subprocess.run kills its child on the way out."""
    import signal
    import time

    link = tmp_path / "path"
    link.mkdir()
    (link / "benchmarks").symlink_to(ROOT / "benchmarks")
    pid_file = tmp_path / "child.pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    script = ("import subprocess, sys\nfrom benchmarks.__main__ import stop_on_sigterm\n"
              f"stop_on_sigterm()\nsubprocess.run([sys.executable, '-c', {child!r}])\n")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path,
                              env={**os.environ, "PYTHONPATH": str(link)})
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=30) == 128 + signal.SIGTERM
    pid = int(pid_file.read_text())
    for _ in range(100):  # the child is killed, then reaped by subprocess.run
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the benchmark's child {pid} outlived it")
