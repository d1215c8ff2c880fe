"""Peak memory of sampling and evaluation, measured: does it stay flat as ``n`` grows?

1. train the digits model once (``diffcli train`` with the preset's pinned ``train`` overrides);
2. run ``diffcli sample n=N`` for each N of ``n`` and ``diffcli eval-fid n=fid_n
   extractor=standin`` (the preset's ``sample`` / ``fid`` overrides: DDIM 5 steps) as real
   processes, each reading its own peak resident memory (``os.wait4``'s ``ru_maxrss``: the
   child's high-water mark);
3. the table: command, peak RSS, wall time, and the ratio to the first row.

Run: ``python -m benchmarks run memory`` (about 10 minutes on 2 CPU cores; writes
docs/results/memory.json; the trained run stays under ``benchmarks/out/memory`` until the
next run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.core import Benchmark, child_env, composed, markdown_table

TRAIN = [  # every setting the trained model depends on, pinned (not diffcli's defaults)
    "dataset=digits", "dataset.image_size=8", "dataset.batch_size=128", "dataset.random_flip=false",
    "model=unet", "model.base_channels=32", "model.channel_mults=[1,2]", "model.num_res_blocks=1",
    "model.dropout=0.0", "model.groups=8", "model.attention_resolutions=[]",
    "schedule=linear", "schedule.num_timesteps=1000", "schedule.beta_start=0.0001",
    "schedule.beta_end=0.02", "module=diffusion", "module.prediction=v",
    "module.ema_sigma_rel=0.05", "module.ema_decay=0.995", "module.ema_warmup=true",
    "loss=simple", "optimizer=adam", "optimizer.lr=0.002", "optimizer.weight_decay=0.0",
    "lr_scheduler=cosine", "lr_scheduler.warmup_steps=100", "lr_scheduler.min_ratio=0.0",
    "trainer.max_steps=200", "trainer.precision=32", "trainer.gradient_clip_val=1.0",
    "trainer.accelerator=cpu", "seed=0", "logger=none",
]
SAMPLE = ["sampler=ddim", "steps=5", "batch_size=256", "seed=0", "use_ema=true", "device=cpu",
          "precision=32", "overwrite=true"]
FID = ["extractor=standin", "sampler=ddim", "steps=5", "batch_size=256", "use_ema=true",
       "device=cpu", "precision=32", "overwrite=true"]


def replaced(overrides: Sequence[str], changes: Mapping[str, Any]) -> list[str]:
    """``overrides`` with the value of each key of ``changes`` replaced (appended if absent)."""
    out = [o for o in overrides if o.split("=", 1)[0] not in changes]
    return out + [f"{k}={v}" for k, v in changes.items()]


def peak(args: list[str], cwd: Path) -> tuple[float, float]:
    """(peak RSS in MiB, wall seconds) of ``diffcli <args>`` run in ``cwd``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "diffcli", *args], cwd=cwd, env=child_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = proc.stderr.read().decode() if proc.stderr else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"diffcli {' '.join(args)} failed:\n{err[-3000:]}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start


def measure(settings: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Train in ``workdir`` (an earlier run there is removed first: it may come from other
    settings), then the peak RSS and wall time of each sampling / evaluation process; rows
    for the table."""
    shutil.rmtree(workdir / "outputs", ignore_errors=True)
    peak(["train", *settings["train"]], workdir)
    rows = []
    for n in settings["n"]:
        rss, wall = peak(["sample", f"n={n}", *settings["sample"]], workdir)
        rows.append({"command": f"sample n={n}", "peak_rss_mib": rss, "wall_s": wall})
    if settings["fid_n"]:
        rss, wall = peak(["eval-fid", f"n={settings['fid_n']}", *settings["fid"]], workdir)
        rows.append({"command": f"eval-fid n={settings['fid_n']} extractor=standin",
                     "peak_rss_mib": rss, "wall_s": wall})
    for row in rows:
        row["ratio"] = row["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    return {"rows": rows}


def table(result: Mapping[str, Any]) -> str:
    return markdown_table(
        ["command (digits model, ddim 5 steps)", "peak RSS", "wall", "RSS / first"], "llll",
        [[f"`diffcli {r['command']}`", f"{r['peak_rss_mib']:.0f} MiB", f"{r['wall_s']:.0f} s",
          f"{r['ratio']:.2f}x"] for r in result["rows"]])


def resolve(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Each stage's composed config (the ``n`` values are in the settings)."""
    return {"n": list(settings["n"]), "fid_n": settings["fid_n"],
            "train": composed("train", settings["train"]),
            "sample": composed("sample", settings["sample"]),
            "eval_fid": composed("eval_fid", [f"n={settings['fid_n'] or 1}", *settings["fid"]])}


BENCHMARK = Benchmark(
    name="memory", title="peak RSS of sample / eval-fid as n grows (digits model, CPU)",
    preset={"train": TRAIN, "sample": SAMPLE, "fid": FID, "n": [1000, 100000], "fid_n": 50000,
            "seeds": [0]},
    smoke={"train": replaced(TRAIN, {"trainer.max_steps": 2, "lr_scheduler.warmup_steps": 1,
                                     "model.base_channels": 8, "dataset.batch_size": 16}),
           "sample": replaced(SAMPLE, {"steps": 2, "batch_size": 8}),
           "fid": replaced(FID, {"steps": 2, "batch_size": 8}), "n": [8], "fid_n": 16},
    run=measure, tables={"streaming": table}, resolve=resolve)
