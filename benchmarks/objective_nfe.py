"""Sample quality against NFE for each objective, with its exact network (issue 27).

The exact-mixture table of ``benchmarks/sampler_nfe.py`` (the 2-D Gaussian mixture
:func:`diffcli.diffusion.gaussian.two_d_mixture`, sliced W2 of ``n`` samples against ``n`` exact
draws, the same noise for every cell), with the network of each objective: the DDPM chain
(linear schedule, eps: sampler_nfe's setting), EDM (Karras et al. 2022) and flow matching
(linear path; Lipman et al. 2023) with SD3's shift 1 and 3, each the closed-form minimiser of
its own loss (:class:`~diffcli.diffusion.gaussian.IdealObjectiveNetwork`). With exact networks
the objectives differ only in where their sampling grid puts its noise levels: the DDPM chain's
trailing timesteps, EDM's lattice (spaced as its rho = 7 grid; the ``karras`` rows are EDM's grid
itself), flow's uniform t (shifted). So the table measures the grids an objective gives the
samplers by default, not what a network learns (the LeNet-FID recipes do that).

Run: ``python -m benchmarks run objective_nfe`` (writes docs/results/objective_nfe.json and the
tables of docs/objectives.md).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from benchmarks.core import Benchmark, markdown_table
from benchmarks.sampler_nfe import Run, denoiser, our_run, our_sampler, plain, steps_for
from diffcli.components import build
from diffcli.diffusion.gaussian import two_d_mixture
from diffcli.diffusion.samplers import Sampler
from diffcli.diffusion.schedules import NoiseSchedule
from diffcli.eval.distances import sliced_wasserstein

# objective row -> the objective group's node (the "ddpm" row: sampler_nfe's chain)
OBJECTIVES: dict[str, dict[str, Any]] = {
    "ddpm (linear, eps)": {"schedule": "linear", "prediction": "eps"},
    "edm": {"_target_": "diffcli.diffusion.objectives.edm.EDM"},
    "flow": {"_target_": "diffcli.diffusion.objectives.flow.Flow"},
    "flow (shift 3)": {"_target_": "diffcli.diffusion.objectives.flow.Flow", "shift": 3.0},
}
PRESET: dict[str, Any] = {
    "n": 10_000, "directions": 256, "nfes": [5, 10, 20, 50],
    "seeds": {"truth": 1, "floor": 2, "noise": 3, "sampler": 4, "directions": 0},
    "objectives": OBJECTIVES,
    # sampler rows on each objective: row -> [sampler, options], every grid named ("trailing"
    # on a continuous objective's lattice: EDM's rho = 7 spacing, flow's uniform t)
    "samplers": {
        "euler (trailing)": ["euler", {"grid": "trailing"}],
        "euler (karras)": ["euler", {"grid": "karras"}],
        "heun (trailing)": ["heun", {"grid": "trailing"}],
        "heun (karras)": ["heun", {"grid": "karras"}],
        "ddim (trailing)": ["ddim", {"grid": "trailing"}],
        "dpmpp_2m (trailing)": ["dpmpp_2m", {"grid": "trailing"}],
        "dpmpp_3m (trailing)": ["dpmpp_3m", {"grid": "trailing"}],
        "dpmpp_3m (logsnr)": ["dpmpp_3m", {"grid": "logsnr"}],  # diffcli sample's default
        "dpmpp_3m (karras)": ["dpmpp_3m", {"grid": "karras"}],
        "unipc (trailing)": ["unipc", {"grid": "trailing"}],
        "unipc (bh1, trailing)": ["unipc", {"variant": "bh1", "grid": "trailing"}],
    },
}
SMOKE: dict[str, Any] = {"n": 200, "nfes": [5, 10]}


def cell(make: Callable[..., Sampler], name: str, run: Run, nfe: int, noise: Tensor,
         truth: Tensor, schedule: NoiseSchedule, directions: int,
         seed: int) -> tuple[str, float]:
    """(the table entry, seconds spent sampling) for one sampler at one NFE budget: the sliced
    W2 to ``truth``, the actual NFE in parentheses when it differs."""
    steps, actual = steps_for(make, name, nfe, schedule)
    if not 1 <= steps <= schedule.num_timesteps:
        return "n/a", 0.0
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            x = run(noise, steps)
    except ValueError:  # a grid this sampler cannot step on
        return "n/a", 0.0
    seconds = time.perf_counter() - t0
    distance = sliced_wasserstein(x, truth, directions, torch.Generator().manual_seed(seed))
    text = f"{distance:.4f}" if math.isfinite(distance) else "NaN"  # NaN/inf samples
    return (text if actual == nfe else f"{text} ({actual})"), seconds


def exact_draws(settings: Mapping[str, Any]) -> tuple[Tensor, float, Tensor]:
    """(``n`` exact draws of the mixture, the noise floor: sliced W2 between them and a second
    set of exact draws, the x_T noise (n, 2) float64), from the settings' seeds; the floor is
    printed."""
    seeds, n, directions = settings["seeds"], settings["n"], settings["directions"]
    data = two_d_mixture()
    truth = data.sample(n, torch.Generator().manual_seed(seeds["truth"]))
    floor = sliced_wasserstein(truth, data.sample(n, torch.Generator().manual_seed(
        seeds["floor"])), directions, torch.Generator().manual_seed(seeds["directions"]))
    noise = torch.randn(n, 2, generator=torch.Generator().manual_seed(seeds["noise"]),
                        dtype=torch.float64)
    print(f"noise floor (two independent true samples): {floor:.4f}", flush=True)
    return truth, floor, noise


def value(text: str) -> float:
    """The sliced W2 of a cell's text ("0.0811 (19)" -> 0.0811; "n/a", "NaN" -> inf)."""
    head = text.split(" ")[0]
    return float(head) if head not in ("n/a", "NaN") else math.inf


def measure(settings: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Every (objective, sampler) row's sliced W2 at every NFE budget, and the noise floor."""
    seeds, n, directions = settings["seeds"], settings["n"], settings["directions"]
    truth, floor, noise = exact_draws(settings)
    rows = []
    for objective, node in settings["objectives"].items():
        den = denoiser(node)
        for row, (name, options) in settings["samplers"].items():
            make = our_sampler(name, **options)
            run = our_run(make, den, seeds["sampler"])
            cells = [cell(make, name, run, nfe, noise, truth, den.schedule, directions,
                          seeds["directions"])[0] for nfe in settings["nfes"]]
            rows.append({"objective": objective, "sampler": row, "cells": cells})
            print(f"  {objective} / {row}: {' '.join(cells)}", flush=True)
    return {"floor": floor, "n": n, "nfes": list(settings["nfes"]), "rows": rows}


def nfe_table(result: Mapping[str, Any]) -> str:
    """The floor, then one row per (objective, sampler), one column per NFE."""
    head = (f"Noise floor (two independent sets of {result['n']:,} exact draws): "
            f"**{result['floor']:.4f}**.\n\n")
    body = [[r["objective"], r["sampler"], *r["cells"]] for r in result["rows"]]
    return head + markdown_table(["objective", "sampler", *(f"NFE {n}" for n in result["nfes"])],
                                 "ll" + "r" * len(result["nfes"]), body)


def best_table(result: Mapping[str, Any]) -> str:
    """At each NFE budget, each objective's best sampler row."""
    objectives = list(dict.fromkeys(r["objective"] for r in result["rows"]))
    body = []
    for i, nfe in enumerate(result["nfes"]):
        cells = []
        for objective in objectives:
            rows = [r for r in result["rows"] if r["objective"] == objective]
            top = min(rows, key=lambda r: value(r["cells"][i]))
            cells.append(f"{top['cells'][i]} ({top['sampler']})")
        body.append([str(nfe), *cells])
    return markdown_table(["NFE", *objectives], "r" + "l" * len(objectives), body)


def resolve(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings plus every objective's and sampler's fields (their defaults included)."""
    import dataclasses

    objectives = {row: ({k: plain(v) for k, v in dataclasses.asdict(
        build("objective", dict(node))).items()} if "_target_" in node else dict(node))
        for row, node in settings["objectives"].items()}
    samplers = {row: {k: plain(v) for k, v in dataclasses.asdict(
        our_sampler(name, **options)(steps=1)).items() if k != "steps"}
        for row, (name, options) in settings["samplers"].items()}
    return {**settings, "objectives_resolved": objectives, "samplers_resolved": samplers}


BENCHMARK = Benchmark(
    name="objective_nfe", title="sliced W2 against NFE for each objective's exact network",
    preset=PRESET, smoke=SMOKE, run=measure, resolve=resolve,
    tables={"nfe": nfe_table, "best": best_table})
