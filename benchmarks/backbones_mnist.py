"""The MNIST recipe with each backbone at the same wall-clock budget: the U-Net against the small
DiT and U-ViT (issue 28).

``benchmarks/lenet_fid.py``'s recipe (data, v prediction, optimizer, cosine LR over the run,
power EMA) with ``model=unet`` (lenet_fid's 634k-parameter net), ``model=dit`` (patch 2: 196
tokens of width 128, depth 4) or ``model=uvit`` (patch 2, width 128, depth 7 with long skips),
each trained for ``trainer.max_time`` (6 minutes: the recipe budget of lenet_fid) per seed and
scored by LeNet-FID of ``n`` samples from DPM-Solver++(3M), 20 steps, trailing grid. A time
budget, not a step count, because the backbones differ in speed per step; the steps each reached
are in the table. The runs are machine-dependent by design: compare rows of one result only.

Run: ``python -m benchmarks run backbones_mnist`` (3 backbones x 2 seeds x 6 minutes, plus
scoring: about 45 minutes on 2 CPU cores).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from benchmarks.core import Benchmark, markdown_table
from benchmarks.lenet_fid import AFTER, COMMON, LINEAR, measure, resolve

SEEDS = (0, 1)
BUDGET = "trainer.max_time=00:00:06:00"
_NOT_UNET = {"model=unet", "model.base_channels=32", "model.channel_mults=[1,2]",
             "model.num_res_blocks=1", "model.dropout=0.0", "model.groups=8",
             "model.attention_resolutions=[]"}
BACKBONES = {  # name -> its model overrides (the U-Net's are lenet_fid's)
    "unet": [],
    "dit": ["model=dit", "model.patch_size=2", "model.hidden_size=128", "model.depth=4",
            "model.num_heads=4", "model.mlp_ratio=4.0"],
    "uvit": ["model=uvit", "model.patch_size=2", "model.hidden_size=128", "model.depth=7",
             "model.num_heads=4", "model.mlp_ratio=4.0"],
}
SAMPLER = ["dpmpp_3m", {"steps": 20, "grid": "trailing"}]


def _run(backbone: str, seed: int) -> dict[str, Any]:
    common = [o for o in COMMON if o != "seed=0" and (not BACKBONES[backbone]
                                                      or o not in _NOT_UNET)]
    return {"label": f"{backbone}, seed {seed}",
            "overrides": [*common, *LINEAR, *AFTER, *BACKBONES[backbone], BUDGET,
                          "trainer.max_steps=-1", f"seed={seed}"]}


PRESET: dict[str, Any] = {
    "lenet": {"epochs": 8, "seed": 0}, "n": 500, "floor_draws": 5,
    "runs": {f"{name}/{seed}": _run(name, seed) for name in BACKBONES for seed in SEEDS},
    "tables": {"backbones": [[f"{name}/{seed}", *SAMPLER] for name in BACKBONES
                             for seed in SEEDS]},
}
_TINY = ["trainer.max_time=null", "trainer.max_steps=2", "dataset.batch_size=8",
         "model.hidden_size=16", "model.depth=1", "model.num_heads=2"]
SMOKE: dict[str, Any] = {  # one tiny DiT run (the U-Net's path is lenet_fid's smoke)
    "lenet": {"epochs": 0, "seed": 0}, "n": 20, "floor_draws": 1,
    "runs": {"dit/0": {**PRESET["runs"]["dit/0"],
                       "overrides": [*PRESET["runs"]["dit/0"]["overrides"], *_TINY]}},
    "tables": {"backbones": [["dit/0", "dpmpp_3m", {"steps": 2, "grid": "trailing"}]]},
}


def backbones_table(result: Mapping[str, Any]) -> str:
    """Each backbone's LeNet-FID (mean and standard deviation over seeds), per seed, and the
    steps it reached in the budget."""
    rows = result["tables"]["backbones"]
    body = []
    for name in dict.fromkeys(r["run"].split("/")[0] for r in rows):
        mine = [r for r in rows if r["run"].split("/")[0] == name]
        scores = [r["lenet_fid"] for r in mine]
        spread = statistics.stdev(scores) if len(scores) > 1 else 0.0
        body.append([name, f"{statistics.mean(scores):.2f} ± {spread:.2f}",
                     ", ".join(f"{s:.2f}" for s in scores),
                     ", ".join(str(r["steps"]) for r in mine)])
    first = rows[0]
    head = (f"LeNet-FID of {result['n']:,} samples ({first['sampler']}, {first['sampler_steps']} "
            f"steps, {first['grid']} grid) after the same wall-clock budget per run; floor: "
            f"**{result['floor']:.2f}**.\n\n")
    return head + markdown_table(["backbone", "LeNet-FID (mean ± std over seeds)", "per seed",
                                  "steps reached"], "lrll", body)


BENCHMARK = Benchmark(
    name="backbones_mnist", title="the MNIST recipe with the U-Net, DiT and U-ViT at one budget",
    preset=PRESET, smoke=SMOKE, run=measure, resolve=resolve,
    tables={"backbones": backbones_table})
