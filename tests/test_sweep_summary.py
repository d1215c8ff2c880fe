"""``diffcli sweep-summary``: a hand-made sweep folder ranked, printed and written as CSV."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from rich.console import Console
from test_cli import assert_one_line_error, run_here

from diffcli.errors import DiffcliError
from diffcli.workflows.sweep_summary import (
    SweepSummaryCallback,
    find_results,
    metric_value,
    sort_rows,
    summary_table,
    sweep_summary,
    write_csv,
)


def _result(loss: float | None, lr: float, overrides: list[str] | None, **extra) -> dict:
    metrics = {"train/lr": lr, **({} if loss is None else {"train/loss": loss})}
    result = {"status": "done", "step": 1000, "max_steps": 1000, "loss": loss,
              "fid_proxy": None if loss is None else 40.0 + loss, "metrics": metrics,
              "checkpoint": "/abs/run/checkpoints/last.ckpt", "run_dir": "/abs/run",
              "wall_time_s": 123.4, "attempts": 1, "finished_at": "2026-11-26T05:10:00",
              **extra}
    if overrides is not None:
        result["overrides"] = overrides
    return result


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    """Jobs 0-2 with losses 0.5 / 0.1 / null, job 3's result.json is corrupt, job 4's lacks
    "overrides" (they are in its .hydra/overrides.yaml) and has extra metric val/acc."""
    root = tmp_path / "multirun" / "2026-11-26" / "10-00-00"
    jobs = {
        "0": _result(0.5, 2e-4, ["schedule=linear", "optimizer.lr=2e-4"]),
        "1": _result(0.1, 1e-4, ["schedule=cosine", "optimizer.lr=1e-4"]),
        "2": _result(None, 5e-4, ["schedule=cosine", "optimizer.lr=5e-4"], status="interrupted",
                     step=300),
        "4": _result(0.3, 3e-4, None, wall_time_s=3723.0),
    }
    jobs["4"]["metrics"]["val/acc"] = 0.9
    for job, result in jobs.items():
        (root / job).mkdir(parents=True)
        (root / job / "result.json").write_text(json.dumps(result))
    (root / "3").mkdir()
    (root / "3" / "result.json").write_text("{not json")
    (root / "4" / ".hydra").mkdir()
    (root / "4" / ".hydra" / "overrides.yaml").write_text("- schedule=sigmoid\n- seed=4\n")
    return root


def _console() -> Console:
    return Console(record=True, width=200)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_find_results_reads_jobs_and_skips_corrupt(sweep: Path) -> None:
    found = find_results(sweep)
    assert [r.job for r in found.rows] == ["0", "1", "2", "4"]
    assert found.skipped == [sweep / "3" / "result.json"]
    by_job = {r.job: r for r in found.rows}
    assert by_job["1"].overrides == "schedule=cosine optimizer.lr=1e-4"
    assert by_job["4"].overrides == "schedule=sigmoid seed=4"  # from .hydra/overrides.yaml
    assert by_job["0"].result["loss"] == 0.5


def test_find_results_root_itself_and_non_dict(tmp_path: Path) -> None:
    (tmp_path / "result.json").write_text(json.dumps(_result(0.2, 1e-3, [])))
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "result.json").write_text("[1, 2]")
    found = find_results(tmp_path)
    assert [(r.job, r.overrides) for r in found.rows] == [(".", "")]
    assert found.skipped == [tmp_path / "x" / "result.json"]


def test_metric_value_top_level_metrics_and_non_numeric() -> None:
    result = _result(0.25, 2e-4, [], fid_proxy="n/a")
    assert metric_value(result, "loss") == 0.25
    assert metric_value(result, "train/lr") == 2e-4
    assert metric_value(result, "step") == 1000.0
    assert metric_value(result, "fid_proxy") is None
    assert metric_value(result, "status") is None
    assert metric_value(result, "val/nope") is None
    assert metric_value({}, "loss") is None


def test_sort_by_loss_none_last_both_ways(sweep: Path) -> None:
    rows = find_results(sweep).rows
    assert [r.job for r in sort_rows(rows, "loss")] == ["1", "4", "0", "2"]
    assert [r.job for r in sort_rows(rows, "loss", descending=True)] == ["0", "4", "1", "2"]


def test_sort_by_logged_metric(sweep: Path) -> None:
    rows = find_results(sweep).rows
    assert [r.job for r in sort_rows(rows, "train/lr")] == ["1", "0", "4", "2"]
    assert [r.job for r in sort_rows(rows, "train/lr", True)] == ["2", "4", "0", "1"]


def test_csv_columns_and_rank_order(sweep: Path, tmp_path: Path) -> None:
    rows = sort_rows(find_results(sweep).rows, "loss")
    path = tmp_path / "out" / "summary.csv"
    write_csv(rows, path, "loss")
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["rank", "job", "overrides", "status", "step", "max_steps", "loss",
                      "fid_proxy", "wall_time_s", "checkpoint", "train/loss", "train/lr",
                      "val/acc"]
    table = _csv(path)
    assert [(r["rank"], r["job"]) for r in table] == [("1", "1"), ("2", "4"), ("3", "0"),
                                                      ("4", "2")]
    assert table[0]["loss"] == "0.1" and table[0]["train/lr"] == "0.0001"
    assert table[1]["overrides"] == "schedule=sigmoid seed=4" and table[1]["val/acc"] == "0.9"
    assert table[3]["loss"] == "" and table[3]["status"] == "interrupted"
    assert not path.with_suffix(".csv.tmp").exists()


def test_csv_adds_chosen_metric_column_once(sweep: Path, tmp_path: Path) -> None:
    rows = sort_rows(find_results(sweep).rows, "attempts")
    write_csv(rows, tmp_path / "a.csv", "attempts")
    header = (tmp_path / "a.csv").read_text().splitlines()[0].split(",")
    assert header[10:] == ["attempts", "train/loss", "train/lr", "val/acc"]
    write_csv(rows, tmp_path / "b.csv", "train/lr")
    header = (tmp_path / "b.csv").read_text().splitlines()[0].split(",")
    assert header[10:] == ["train/lr", "train/loss", "val/acc"]
    assert [r["train/lr"] for r in _csv(tmp_path / "b.csv")] == ["0.0002", "0.0001", "0.0005",
                                                                  "0.0003"]


def test_summary_table_text(sweep: Path) -> None:
    rows = sort_rows(find_results(sweep).rows, "train/lr")
    console = _console()
    console.print(summary_table(rows, "train/lr", "my sweep"))
    text = console.export_text()
    assert "my sweep" in text
    header = next(ln for ln in text.splitlines() if "overrides" in ln)
    for name in ("#", "job", "status", "step", "loss", "fid proxy", "train/lr", "wall",
                 "checkpoint"):
        assert name in header, name
    lines = [ln for ln in text.splitlines() if "schedule=" in ln]
    assert [ln.split("│")[2].strip() for ln in lines] == ["1", "0", "4", "2"]
    assert "0.0001" in lines[0] and "0.1 " in lines[0] and "1000/1000" in lines[0]
    assert "0:02:03" in lines[0] and "1:02:03" in lines[2]
    assert "300/1000" in lines[3] and "interrupted" in lines[3]
    assert lines[3].split("│")[6].strip() == "-"  # loss null


def test_summary_table_best_row_bold_green(sweep: Path) -> None:
    table = summary_table(sort_rows(find_results(sweep).rows, "loss"), "loss", "t")
    assert str(table.rows[0].style) == "bold green"
    assert all(r.style is None for r in table.rows[1:])
    assert [c.header for c in table.columns].count("loss") == 1


def test_sweep_summary_prints_skips_and_writes(sweep: Path) -> None:
    console = _console()
    path = sweep_summary(sweep, console=console)
    text = console.export_text()
    assert path == sweep / "summary.csv"
    assert [r["job"] for r in _csv(path)] == ["1", "4", "0", "2"]
    assert f"skipped 1 unreadable result.json: {sweep / '3' / 'result.json'}" in text
    assert f"wrote {path}" in text
    assert "schedule=cosine optimizer.lr=1e-4" in text


def test_sweep_summary_descending_and_csv_path(sweep: Path, tmp_path: Path) -> None:
    path = sweep_summary(sweep, "val/acc", descending=True, csv_path=tmp_path / "x.csv",
                         console=_console())
    assert path == tmp_path / "x.csv" and not (sweep / "summary.csv").exists()
    assert [r["job"] for r in _csv(path)] == ["4", "0", "1", "2"]


def test_unknown_metric_lists_available(sweep: Path) -> None:
    with pytest.raises(DiffcliError) as e:
        sweep_summary(sweep, "val/nope", console=_console())
    message = str(e.value)
    assert "val/nope" in message
    for name in ("loss", "fid_proxy", "wall_time_s", "train/lr", "train/loss", "val/acc"):
        assert name in message, name
    assert not (sweep / "summary.csv").exists()


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DiffcliError, match="no such sweep folder"):
        sweep_summary(tmp_path / "nope", console=_console())
    (tmp_path / "empty" / "0").mkdir(parents=True)
    with pytest.raises(DiffcliError, match=r"no result\.json under it .*multirun/<date>/<time>"):
        sweep_summary(tmp_path / "empty", console=_console())


def test_only_unreadable_results_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "result.json").write_text("{not json")
    with pytest.raises(DiffcliError, match="could be read"):
        sweep_summary(tmp_path, console=_console())


def test_cli_sweep_summary(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    proc = run_here(tmp_path, "sweep-summary", str(sweep), "--metric", "loss")
    assert "schedule=cosine optimizer.lr=1e-4" in proc.stdout
    assert "schedule=sigmoid seed=4" in proc.stdout
    assert f"wrote {sweep / 'summary.csv'}" in proc.stdout
    assert [r["job"] for r in _csv(sweep / "summary.csv")] == ["1", "4", "0", "2"]
    proc = run_here(tmp_path, "sweep-summary", str(sweep), "--sort", "train/lr", "--descending",
                    "--csv", "lr.csv")
    assert [r["job"] for r in _csv(tmp_path / "lr.csv")] == ["2", "4", "0", "1"]


def test_cli_sweep_summary_errors(sweep: Path, tmp_path: Path) -> None:
    proc = run_here(tmp_path, "sweep-summary", str(tmp_path / "nope"), ok=False)
    assert_one_line_error(proc, f"{tmp_path / 'nope'}: no such sweep folder")
    assert proc.stdout == ""
    (tmp_path / "empty").mkdir()
    proc = run_here(tmp_path / "empty", "sweep-summary", ".", ok=False)
    assert_one_line_error(proc, "no result.json under it")
    proc = run_here(sweep, "sweep-summary", ".", "--metric", "val/nope", ok=False)
    assert_one_line_error(proc, "unknown metric 'val/nope'", "train/lr")


def test_callback_writes_summary(sweep: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}})
    SweepSummaryCallback(metric="train/lr", descending=True).on_multirun_end(config)
    assert [r["job"] for r in _csv(sweep / "summary.csv")] == ["2", "4", "0", "1"]
    err = capsys.readouterr().err
    assert f"wrote {sweep / 'summary.csv'}" in err


def test_callback_never_raises(tmp_path: Path, sweep: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    SweepSummaryCallback().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(empty)}}}))
    SweepSummaryCallback().on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "missing")}}}))
    assert not (empty / "summary.csv").exists()
    assert capsys.readouterr().err == ""
    SweepSummaryCallback(metric="val/nope").on_multirun_end(
        OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    err = capsys.readouterr().err
    assert err.startswith("sweep-summary: unknown metric 'val/nope'")
    assert not (sweep / "summary.csv").exists()
