"""``diffcli eval-fid`` over a grid of (EMA width x guide x scale) (issue 29): the widths
``diffcli ema`` rebuilt, with and without an autoguidance guide, at several scales: every point
evaluated as an ordinary eval-fid, one ranked JSON, a table and a plot; bad grids one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bad_inputs import run_in_process
from test_cli import TINY_UNET
from test_conditional_cli import train_runs

TINY = [*TINY_UNET, "logger=none", "callbacks.preview=null", "conditional=true"]
EVAL = ["extractor=standin", "n=8", "ref_n=16", "steps=2", "sampler=ddim"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return train_runs(tmp_path_factory.mktemp("grid"), {
        "main": ["train", *TINY, "trainer.max_steps=4", "callbacks.phema.every_n_steps=1"],
        "guide": ["train", *TINY, "trainer.max_steps=2"]})


def _widths(runs, monkeypatch, capsys) -> list[Path]:
    code, lines = run_in_process(["ema", f"ckpt={runs['main']}", "sigma_rel=[0.05,0.1]"],
                                 runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    folder = runs["main"].parent
    widths = [folder / "ema-0.050-step4.ckpt", folder / "ema-0.100-step4.ckpt"]
    assert lines[-1] == f"next: diffcli eval-fid ckpt=[{widths[0]},{widths[1]}]", lines
    return widths


def test_a_grid_of_widths_guides_and_scales_is_ranked_in_one_json(runs, monkeypatch, capsys):
    widths = _widths(runs, monkeypatch, capsys)
    args = ["eval-fid", f"ckpt=[{widths[0]},{widths[1]}]", f"guide=[null,{runs['guide']}]",
            "guidance=[1,2]", *EVAL]
    code, lines = run_in_process(args, runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    grid = runs["main"].parent.parent / "eval" / "fid-grid.json"
    record = json.loads(grid.read_text())
    rows = record["rows"]
    assert record["metric"] == "fid" and len(rows) == 8  # 2 widths x 2 guides x 2 scales
    assert [r["fid"] for r in rows] == sorted(r["fid"] for r in rows)
    assert {(r["sigma_rel"], r["guide"], r["scale"]) for r in rows} == {
        (w, g, s) for w in (0.05, 0.1) for g in (None, str(runs["guide"])) for s in (1.0, 2.0)}
    assert all(Path(r["file"]).is_file() for r in rows)  # each point's own JSON
    assert grid.with_suffix(".png").is_file()
    # the same points, one at a time, give the same numbers
    one = ["eval-fid", f"ckpt={widths[1]}", f"guide={runs['guide']}", "guidance=2", *EVAL,
           "out=" + str(runs["cwd"] / "one.json")]
    code, lines = run_in_process(one, runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    alone = json.loads((runs["cwd"] / "one.json").read_text())["summary"]["fid"]["best"]
    [same] = [r for r in rows if r["sigma_rel"] == 0.1 and r["guide"] and r["scale"] == 2.0]
    assert same["fid"] == pytest.approx(alone, rel=1e-6)


def test_widths_alone_are_plotted_against_sigma_rel(runs, monkeypatch, capsys):
    from diffcli.workflows.fid_grid import grid_lines

    widths = _widths(runs, monkeypatch, capsys)
    code, lines = run_in_process(["eval-fid", f"ckpt=[{widths[0]},{widths[1]}]", *EVAL],
                                 runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    rows = json.loads((runs["main"].parent.parent / "eval" / "fid-grid.json").read_text())["rows"]
    lines_, xlabel = grid_lines(rows, "fid")
    assert xlabel == "EMA sigma_rel" and list(lines_) == ["no guide"]
    assert sorted(x for x, _ in lines_["no guide"]) == [0.05, 0.1]


@pytest.mark.parametrize("extra, words", [
    (["ckpt=[]"], "ckpt=[]"),
    (["guide=[]"], "guide=[]"),
    (["ckpt=[MAIN]", "out=x.json"], "cannot be combined with samples= or out="),
    (["ckpt=[MAIN,nowhere.ckpt]"], "nowhere.ckpt"),
])
def test_bad_grids_are_one_line(runs, monkeypatch, capsys, extra, words):
    extra = [a.replace("MAIN", str(runs["main"])) for a in extra]
    code, lines = run_in_process(["eval-fid", *extra, *EVAL], runs["cwd"], monkeypatch, capsys)
    assert code not in (0, None) and len(lines) == 1 and words in lines[0], lines
