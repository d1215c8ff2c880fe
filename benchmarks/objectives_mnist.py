"""The MNIST recipe under each objective: DDPM chain (v), EDM, flow (issues 27 and 34).

``benchmarks/lenet_fid.py``'s recipe run (the same U-Net, data, optimizer, LR schedule, EMA and
its 280-step recipe budget, the one its recipes table compares at) trained once per objective
and seed, each scored by LeNet-FID of ``n`` samples from the same sampler budget
(DPM-Solver++(3M), 20 steps, the trailing grid: on each objective's own noise levels). The table
gives each objective's mean and spread over the seeds; the default objective changes only if one
wins by more than that spread. The 850-step budget (``BUDGET_STEPS``) x 3 seeds x 3 objectives
is about 3.5 hours of this 2-core CPU, longer than a working session; 280 steps x 9 runs is
about 75 minutes.

Two more tables score sampler=auto against the configurations it picks from at 5, 10 and 20
NFE on the EDM and flow models (seed 0): issue 34's trained-model yardstick beside
``lenet_fid``'s samplers table for the DDPM chain.

Run: ``python -m benchmarks run objectives_mnist`` (finished runs are reused when the benchmark
is run again at the same commit).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from benchmarks.core import Benchmark, markdown_table
from benchmarks.lenet_fid import (
    AFTER,
    COMMON,
    LINEAR,
    RECIPE_STEPS,
    SAMPLER_NFES,
    measure,
    resolve,
    samplers_table,
)

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
# issue 34: auto against what it picks from, on each new objective's own noise levels
SAMPLER_ROWS = [("auto", {}), *[(name, {**extra, "grid": "trailing"}) for name, extra in (
    ("ddim", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_2m_sde", {}), ("unipc", {}),
    ("unipc", {"order": 3, "variant": "bh1"}))],
    ("unipc", {"grid": "logsnr"}), ("unipc", {"grid": "karras"})]


def _run(objective: str, seed: int) -> dict[str, Any]:
    overrides = [o for o in COMMON if o != "seed=0"]
    return {"label": f"{objective}, seed {seed}",
            "overrides": [*overrides, *LINEAR, *AFTER, RECIPE_STEPS, *OBJECTIVES[objective],
                          f"seed={seed}"]}


PRESET: dict[str, Any] = {
    "lenet": {"epochs": 8, "seed": 0}, "n": 500, "floor_draws": 5,
    "runs": {f"{name}/{seed}": _run(name, seed) for name in OBJECTIVES for seed in SEEDS},
    "tables": {"objectives": [[f"{name}/{seed}", *SAMPLER] for name in OBJECTIVES
                              for seed in SEEDS],
               **{f"samplers_{name}": [[f"{name}/0", sampler, {**options, "steps": nfe}]
                                       for sampler, options in SAMPLER_ROWS
                                       for nfe in SAMPLER_NFES] for name in ("edm", "flow")}},
}
_TINY = ["trainer.max_steps=2", "model.base_channels=8", "dataset.batch_size=8"]
# the smoke run: one tiny flow run (the DDPM chain's path is lenet_fid's smoke, EDM's is covered
# by tests/test_objectives_cli.py), 2 sampler steps, 20 samples
SMOKE: dict[str, Any] = {
    "lenet": {"epochs": 0, "seed": 0}, "n": 20, "floor_draws": 1,
    "runs": {"flow/0": {**PRESET["runs"]["flow/0"],
                        "overrides": [*PRESET["runs"]["flow/0"]["overrides"], *_TINY]}},
    "tables": {"objectives": [["flow/0", "dpmpp_3m", {"steps": 2, "grid": "trailing"}]],
               "samplers_flow": [["flow/0", "auto", {"steps": 2}],
                                 ["flow/0", "unipc", {"steps": 2, "grid": "karras"}]]},
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
    name="objectives_mnist", title="the MNIST recipe under each objective, and its samplers",
    preset=PRESET, smoke=SMOKE, run=measure, resolve=resolve,
    tables={"objectives": objectives_table,
            "samplers_edm": lambda result: samplers_table(result, "samplers_edm"),
            "samplers_flow": lambda result: samplers_table(result, "samplers_flow")})
