"""``diffcli eval-fid`` over a grid (issue 29): several checkpoints (e.g. the EMA widths that
``diffcli ema sigma_rel=[...]`` rebuilt, EDM2 Sec. 3) x several autoguidance guides (``null``:
none; Karras et al. 2024) x the guidance scales ``guidance=[...]``. Every point is one
ordinary evaluation (its JSON in its run's ``eval/``); the grid adds one table ranked by the
first metric, one JSON, ``<run dir>/eval/fid-grid.json`` of the first checkpoint's run, and
one plot beside it (the metric against the scale, a line per checkpoint and guide; against
sigma_rel when the scale is one value and the checkpoints are EMA widths)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from diffcli.checkpoint import LoadedRun
from diffcli.errors import DiffcliError
from diffcli.files import write_json_output
from diffcli.runs import run_dir_of
from diffcli.viz.plots import plot_lines

console = Console(stderr=True, soft_wrap=True)
GRIDDED = ("ckpt", "guide")  # the keys that may be lists (guidance= sweeps as before)
HIGHER_IS_BETTER = ("isc", "precision", "recall")


def _listed(value: Any) -> list[Any] | None:
    if OmegaConf.is_list(value):
        return list(OmegaConf.to_container(value))
    return list(value) if isinstance(value, list | tuple) else None


def grid_axes(cfg: DictConfig) -> tuple[list[str | None], list[str | None]] | None:
    """(checkpoints, guides) when ``ckpt=`` or ``guide=`` is a list (the other one value;
    None: the newest run, no guide), else None."""
    lists = {key: _listed(cfg.get(key)) for key in GRIDDED}
    if all(v is None for v in lists.values()):
        return None
    for key, values in lists.items():
        if values is not None and not values:
            raise DiffcliError(f"{key}=[]: give one or more (a list evaluates each)")
    if cfg.get("samples") or cfg.get("out"):
        raise DiffcliError("ckpt=[...] and guide=[...] evaluate a grid of runs: they cannot be "
                           "combined with samples= or out=")
    none = (None, "null", "none", "")
    ckpts = lists["ckpt"] or [cfg.get("ckpt")]
    guides = [None if g in none else str(g) for g in (lists["guide"] or [cfg.get("guide")])]
    return [None if c in none else str(c) for c in ckpts], guides


def point(cfg: DictConfig, ckpt: str | None, guide: str | None) -> DictConfig:
    """``cfg`` at one point of the grid: ``ckpt=`` and ``guide=`` single values."""
    copy = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    copy.ckpt, copy.guide = ckpt, guide
    return copy


def sigma_rel_of(run: LoadedRun) -> float | None:
    """The EMA width of a checkpoint ``diffcli ema`` wrote (None for any other)."""
    found = (run.raw or {}).get("posthoc_ema") or {}
    return float(found["sigma_rel"]) if "sigma_rel" in found else None


def _label(run: LoadedRun) -> str:
    width = sigma_rel_of(run)
    if width is not None:
        return f"EMA sigma_rel {width:g}"
    return f"{run_dir_of(run.path).name}/{run.path.name}"


def guide_label(guide: str | None) -> str:
    """A guide's short name: its run folder (and checkpoint file), or "-" for none."""
    if not guide:
        return "-"
    path = Path(guide)
    return f"{path.parent.parent.name}/{path.name}" if path.suffix == ".ckpt" else path.name


def _rows(record: Mapping[str, Any], out: Path, scale: Any) -> list[dict[str, Any]]:
    """One row per guidance scale of a point's JSON (a sweep's, or a single evaluation's)."""
    if "rows" in record:
        key = record["swept"]
        return [{"scale": r[key], **{k: v for k, v in r.items() if k != key}}
                for r in record["rows"]]
    return [{"scale": scale, **{k: v["best"] for k, v in record["summary"].items()},
             "file": str(out)}]


def ranked(rows: Sequence[Mapping[str, Any]], metric: str) -> list[Mapping[str, Any]]:
    """``rows`` best first by ``metric`` (lower is better but for IS, precision, recall)."""
    sign = -1.0 if metric.startswith(HIGHER_IS_BETTER) else 1.0
    return sorted(rows, key=lambda r: sign * float(r[metric]))


def eval_grid(cfg: DictConfig, runs: Mapping[str | None, LoadedRun],
              evaluate: Callable[[DictConfig, LoadedRun], Path]) -> Path:
    """Evaluate every point (``evaluate``: one ordinary eval-fid of a config and its run;
    ``runs``: each checkpoint of the grid as read once); returns the grid's JSON."""
    axes = grid_axes(cfg)
    assert axes is not None
    ckpts, guides = axes
    rows = []
    for ckpt in ckpts:
        run = runs[ckpt]
        for guide in guides:
            out = evaluate(point(cfg, ckpt, guide), run)
            for row in _rows(json.loads(out.read_text()), out, cfg.get("guidance")):
                rows.append({"checkpoint": str(run.path), "label": _label(run),
                             "sigma_rel": sigma_rel_of(run), "guide": guide, **row})
    metrics = [k for k in rows[0] if k not in ("checkpoint", "label", "sigma_rel", "guide",
                                               "scale", "file")]
    best_first = ranked(rows, metrics[0])
    out = run_dir_of(runs[ckpts[0]].path) / "eval" / "fid-grid.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out = write_json_output(out, {"metric": metrics[0], "rows": best_first}, "eval-fid-grid",
                            overwrite=True)  # the grid's own summary, rewritten each grid
    Console().print(_table(best_first, metrics))
    picture = plot_lines(*grid_lines(best_first, metrics[0]), metrics[0], out.with_suffix(".png"))
    console.print(f"[green]wrote[/] {picture}")
    return out


def grid_lines(rows: Sequence[Mapping[str, Any]],
               metric: str) -> tuple[dict[str, list[tuple[float, float]]], str]:
    """The plot of a grid: ``metric`` against the guidance scale, a line per checkpoint and
    guide; with one scale and only EMA widths, against sigma_rel, a line per guide (EDM2,
    Karras et al. 2024, Fig. 5). Returns (name -> points, the x axis' label)."""
    by_width = len({r["scale"] for r in rows}) == 1 and all(r["sigma_rel"] is not None
                                                             for r in rows)
    lines: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        guide = f"guide {guide_label(r['guide'])}" if r["guide"] else "no guide"
        name = guide if by_width else f"{r['label']}, {guide}"
        x = r["sigma_rel"] if by_width else (1.0 if r["scale"] is None else float(r["scale"]))
        lines.setdefault(name, []).append((float(x), float(r[metric])))
    return lines, "EMA sigma_rel" if by_width else "guidance scale"


def _table(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> Table:
    table = Table(title=f"eval-fid grid, best {metrics[0]} first")
    for col in ("rank", "checkpoint", "guide", "guidance", *metrics):
        table.add_column(col, justify="left" if col in ("checkpoint", "guide") else "right")
    for i, row in enumerate(rows, start=1):
        scale = "-" if row["scale"] is None else f"{float(row['scale']):g}"
        table.add_row(str(i), row["label"], guide_label(row["guide"]),
                      scale, *(f"{float(row[m]):.4f}" for m in metrics))
    return table
