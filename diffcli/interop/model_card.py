"""The README.md written beside an exported model: what it was trained on and how, what it
scored (the run's ``eval/*.json``), and how to load it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def eval_results(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(file name, headline numbers) of every readable ``<run_dir>/eval/*.json``: the mean of
    each metric of ``eval-fid`` (its ``summary``), the bits/dim of ``eval-nll`` per method (its
    ``results``), and ``n``."""
    found = []
    for path in sorted((run_dir / "eval").glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        picked = _headline(data) if isinstance(data, dict) else {}
        if picked:
            found.append((path.name, picked))
    return found


def _headline(data: dict[str, Any]) -> dict[str, Any]:
    picked: dict[str, Any] = {}
    for key, stats in (data.get("summary") or {}).items():  # eval-fid
        if isinstance(stats, dict) and isinstance(stats.get("mean"), int | float):
            picked[key] = stats["mean"]
    for method, stats in (data.get("results") or {}).items() if isinstance(
            data.get("results"), dict) else ():  # eval-nll
        if isinstance(stats, dict) and isinstance(stats.get("bits_per_dim"), int | float):
            picked[f"{method} bits/dim"] = stats["bits_per_dim"]
    if picked and isinstance(data.get("n"), int):
        picked["n"] = data["n"]
    return picked


def _table(rows: list[tuple[str, dict[str, Any]]]) -> list[str]:
    if not rows:
        return ["No evaluation found in the run's eval/ folder (`diffcli eval-fid`, "
                "`diffcli eval-nll` write one)."]
    lines = ["| file | results |", "| --- | --- |"]
    for name, picked in rows:
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in picked.items())
        lines.append(f"| {name} | {shown} |")
    return lines


def _objective_rows(objective: dict[str, Any], schedule: dict[str, Any],
                    module: dict[str, Any]) -> list[str]:
    """The objective's rows: the DDPM chain's schedule and prediction, or a continuous
    objective (EDM, flow) with its settings."""
    name = str(objective.get("_target_", "DDPM")).rsplit(".", 1)[-1]
    if name == "DDPM":
        return [f"| schedule | {str(schedule.get('_target_', '?')).rsplit('.', 1)[-1]}, "
                f"T={schedule.get('num_timesteps', '?')} |",
                f"| predicts | {module.get('prediction', 'eps')} |"]
    settings = ", ".join(f"{k} {v}" for k, v in objective.items() if k != "_target_")
    return [f"| objective | {name}: {settings} |"]


def model_card(*, title: str, fmt: str, config: dict[str, Any], data: dict[str, Any] | None,
               global_step: int, weights: str, source: str, parameters: int,
               evals: list[tuple[str, dict[str, Any]]], load: list[str]) -> str:
    """The model card (Markdown): the training data, network, schedule and objective, the step
    and weights exported, the evaluations, and the lines that load it (``load``)."""
    dataset = config.get("dataset") or {}
    schedule = config.get("schedule") or {}
    model = config.get("model") or {}
    module = config.get("module") or {}
    shape = "x".join(str(d) for d in (data or {}).get("shape", []))
    classes = (data or {}).get("class_names")
    lines = [
        f"# {title}", "",
        f"Exported by `diffcli export format={fmt}` from `{source}`.", "",
        "| | |", "| --- | --- |",
        f"| dataset | {dataset.get('name', '?')} ({(data or {}).get('kind', '?')} {shape}) |",
        f"| network | {str(model.get('_target_', '?')).rsplit('.', 1)[-1]}, "
        f"{parameters:,} parameters |",
        *_objective_rows(config.get("objective") or {}, schedule, module),
        f"| trained | {global_step:,} steps; {weights} weights exported |",
    ]
    if classes:
        lines.append(f"| classes | {', '.join(map(str, classes))} |")
    if (data or {}).get("latent"):
        latent = data["latent"]
        lines.append(f"| latent space | {latent.get('shape')} of the autoencoder "
                     f"`{latent.get('source')}` (scale {latent.get('scale_factor')}) |")
    lines += ["", "## Evaluations", "", *_table(evals), "", "## Load it", "", "```python",
              *load, "```", ""]
    return "\n".join(lines)


__all__ = ["eval_results", "model_card"]
