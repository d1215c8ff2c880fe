"""The 15-minute MNIST recipe under each objective: DDPM chain (v), EDM, flow (issue 27).

``benchmarks/lenet_fid.py``'s budget run (the same U-Net, data, optimizer, LR schedule, EMA,
850 steps: what 15 minutes held on the 2-core CPU) trained once per objective and seed, each
scored by LeNet-FID of ``n`` samples from the same sampler budget (DPM-Solver++(3M), 20 steps,
the trailing grid: on each objective's own noise levels). The table gives each objective's mean
and spread over the seeds; the default objective changes only if one wins by more than that
spread.

Run: ``python -m benchmarks run objectives_mnist`` (about 9 x 15 minutes of training on 2 CPU
cores; finished runs are reused when the benchmark is run again at the same commit).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from benchmarks.core import Benchmark, markdown_table
from benchmarks.lenet_fid import AFTER, BUDGET_STEPS, COMMON, LINEAR, measure, resolve

SEEDS = (0, 1, 2)
OBJECTIVES = {  # objective -> its overrides over lenet_fid's "after" recipe (v prediction)
    "ddpm": ["objective=ddpm"],
    "edm": ["objective=edm", "objective.sigma_data=0.5", "objective.p_mean=-1.2",
            "objective.p_std=1.2", "objective.sigma_min=0.002", "objective.sigma_max=80.0",
            "objective.rho=7.0", "objective.uncertainty_weighting=false"],
    "flow": ["objective=flow", "objective.interpolant=linear", "objective.target=velocity",
             "objective.t_sampling=logit_normal", "objective.logit_mean=0.0",
             "objective.logit_std=1.0", "objective.shift=1.0"],
}
SAMPLER = ["dpmpp_3m", {"steps": 20, "grid": "trailing"}]


def _run(objective: str, seed: int) -> dict[str, Any]:
    overrides = [o for o in COMMON if o != "seed=0"]
    return {"label": f"{objective}, seed {seed}",
            "overrides": [*overrides, *LINEAR, *AFTER, BUDGET_STEPS, *OBJECTIVES[objective],
                          f"seed={seed}"]}


PRESET: dict[str, Any] = {
    "lenet": {"epochs": 8, "seed": 0}, "n": 500, "floor_draws": 5,
    "runs": {f"{name}/{seed}": _run(name, seed) for name in OBJECTIVES for seed in SEEDS},
    "tables": {"objectives": [[f"{name}/{seed}", *SAMPLER] for name in OBJECTIVES
                              for seed in SEEDS]},
}
_TINY = ["trainer.max_steps=2", "model.base_channels=8", "dataset.batch_size=8"]
# the smoke run: one tiny flow run (the DDPM chain's path is lenet_fid's smoke, EDM's is covered
# by tests/test_objectives_cli.py), 2 sampler steps, 20 samples
SMOKE: dict[str, Any] = {
    "lenet": {"epochs": 0, "seed": 0}, "n": 20, "floor_draws": 1,
    "runs": {"flow/0": {**PRESET["runs"]["flow/0"],
                        "overrides": [*PRESET["runs"]["flow/0"]["overrides"], *_TINY]}},
    "tables": {"objectives": [["flow/0", "dpmpp_3m", {"steps": 2, "grid": "trailing"}]]},
}


def objectives_table(result: Mapping[str, Any]) -> str:
    """Each objective's LeNet-FID: mean and standard deviation over seeds, and each seed's."""
    rows = result["tables"]["objectives"]
    body = []
    for name in dict.fromkeys(r["run"].split("/")[0] for r in rows):
        scores = [r["lenet_fid"] for r in rows if r["run"].split("/")[0] == name]
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        body.append([name, f"{statistics.mean(scores):.2f} ± {spread:.2f}",
                     ", ".join(f"{s:.2f}" for s in scores)])
    first = rows[0]
    head = (f"LeNet-FID of {result['n']:,} samples ({first['sampler']}, {first['sampler_steps']} "
            f"steps, {first['grid']} grid) after {first['steps']} training steps; floor: "
            f"**{result['floor']:.2f}**.\n\n")
    return head + markdown_table(["objective", "LeNet-FID (mean ± std over seeds)", "per seed"],
                                 "lrl", body)


BENCHMARK = Benchmark(
    name="objectives_mnist", title="the 15-minute MNIST recipe under each objective",
    preset=PRESET, smoke=SMOKE, run=measure, resolve=resolve,
    tables={"objectives": objectives_table})
