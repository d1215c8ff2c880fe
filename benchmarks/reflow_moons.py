"""How much reflow straightens a flow: moons, a rectified flow and its reflow (issue 27).

Three runs through the real CLI, each with the full list of overrides of the preset: the
1-rectified flow (``objective=flow`` on moons, an MLP, ``steps`` training steps: the source),
the same run trained on for as many steps again (the control: as much training as the reflowed
model has seen in total), and its reflow (``reflow=<source>``: ``pairs`` (noise, sample) pairs
drawn by DPM-Solver++(2M) at 32 steps, then ``steps`` training steps on them; Liu et al. 2023,
Sec. 2.2). Each is sampled from seeds 0..N-1 with DDIM (on the linear path, Euler in t) at 1, 2
and 4 steps and with DPM-Solver++(2M) at 64 steps (the reference: the ODE's solution). The table
gives the mean distance of each few-step sample to the reference sample of its seed (0 for a
straight flow) and the sliced W2 of each sample set to fresh moons points.

Run: ``python -m benchmarks run reflow_moons`` (writes docs/results/reflow_moons.json and the
table of docs/training.md's Reflow section; a few minutes on 2 CPU cores).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.core import Benchmark, composed, finished_before, mark_finished, markdown_table
from benchmarks.mnist_judge import run_diffcli

COMMON = ["dataset=moons", "dataset.n_points=10000", "dataset.batch_size=512", "model=mlp",
          "objective=flow", "objective.interpolant=linear", "objective.target=velocity",
          "objective.t_sampling=logit_normal", "objective.shift=1.0", "optimizer=adam",
          "optimizer.lr=2e-3", "lr_scheduler=cosine", "lr_scheduler.warmup_steps=100",
          "module.ema_sigma_rel=0.05", "seed=0", "logger=none", "callbacks.preview=null",
          "trainer.precision=32"]
PRESET: dict[str, Any] = {
    "steps": 2000, "pairs": 10000, "n": 2000, "few": [1, 2, 4], "reference_steps": 64,
    "data_seed": 123, "overrides": COMMON,
}
SMOKE: dict[str, Any] = {"steps": 5, "pairs": 64, "n": 32, "few": [1], "reference_steps": 4,
                         "overrides": [*COMMON, "lr_scheduler.warmup_steps=1",
                                       "dataset.n_points=256"]}


def stages(settings: Mapping[str, Any], workdir: Path) -> dict[str, list[str]]:
    """The three runs' ``diffcli train`` arguments: source, control, reflow."""
    base, steps = list(settings["overrides"]), int(settings["steps"])
    source = workdir / "source"
    return {
        "source": ["train", *base, f"trainer.max_steps={steps}", f"hydra.run.dir={source}"],
        "control": ["train", *base, f"trainer.max_steps={2 * steps}",
                    f"ckpt_path={source / 'checkpoints' / 'last.ckpt'}",
                    f"hydra.run.dir={workdir / 'control'}"],
        "reflow": ["train", *base, f"trainer.max_steps={steps}", f"reflow={source}",
                   f"reflow.n={settings['pairs']}", "reflow.sampler=dpmpp_2m",
                   "reflow.steps=32", f"runs_root={workdir}",
                   f"hydra.run.dir={workdir / 'reflow'}"],
    }


def draw(run_dir: Path, sampler: str, steps: int, n: int) -> np.ndarray:
    """``n`` samples (seeds 0..n-1) of the run in ``run_dir``. (n, 2)"""
    run_diffcli("sample", f"ckpt={run_dir / 'checkpoints' / 'last.ckpt'}", f"sampler={sampler}",
                f"steps={steps}", f"seeds=0-{n - 1}", "overwrite=true")
    return np.load(run_dir / "samples" / f"{sampler}-{steps}" / "samples.npz")["points"]


def measure(settings: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Train the three runs (reusing finished ones), sample them, measure the gaps."""
    from diffcli.data.toy import moons
    from diffcli.eval.distances import sliced_wasserstein

    for name, args in stages(settings, workdir).items():
        if not finished_before(workdir / name, args):
            run_diffcli(*args)
            mark_finished(workdir / name, args)
    n = int(settings["n"])
    data = moons(n, seed=int(settings["data_seed"]))
    rows = []
    for name in ("source", "control", "reflow"):
        ref = draw(workdir / name, "dpmpp_2m", int(settings["reference_steps"]), n)
        for steps in [*settings["few"], None]:
            x = ref if steps is None else draw(workdir / name, "ddim", int(steps), n)
            rows.append({"run": name, "sampler": "ddim" if steps else "dpmpp_2m",
                         "nfe": steps or int(settings["reference_steps"]),
                         "gap": float(np.linalg.norm(x - ref, axis=1).mean()),
                         "sw2": float(sliced_wasserstein(torch.from_numpy(x), data))})
    return {"rows": rows, "n": n, "steps": settings["steps"], "pairs": settings["pairs"]}


LABELS = {"source": "flow (source)", "control": "flow trained twice as long (control)",
          "reflow": "its reflow"}


def table(result: Mapping[str, Any]) -> str:
    """One row per run and sampler budget."""
    names = {"ddim": "DDIM (Euler in t)", "dpmpp_2m": "DPM-Solver++(2M): the reference"}
    body = [[LABELS[r["run"]], names[r["sampler"]], r["nfe"], f"{r['gap']:.3f}",
             f"{r['sw2']:.3f}"] for r in result["rows"]]
    head = (f"Moons, MLP, {result['steps']:,} training steps, reflow on {result['pairs']:,} "
            f"pairs; {result['n']:,} seeds each:\n\n")
    return head + markdown_table(["run", "sampler", "NFE", "mean distance to the reference",
                                  "sliced W2 to data"], "llrrr", body)


def resolve(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings plus each run's composed training config."""
    work = Path("/work")  # only the structure matters: the per-machine paths are dropped
    configs = {name: composed("train", [a for a in args[1:] if not a.startswith(
        ("hydra.run.dir=", "ckpt_path=", "runs_root=", "reflow="))])
        for name, args in stages(settings, work).items()}
    return {**settings, "train_configs": configs}


BENCHMARK = Benchmark(
    name="reflow_moons", title="how much reflow straightens a flow (moons)",
    preset=PRESET, smoke=SMOKE, run=measure, resolve=resolve, tables={"gaps": table})
