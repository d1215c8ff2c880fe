"""Guidance on MNIST, measured: does a guided sample show the digit it was asked for?

1. ``diffcli train`` a class-conditional U-Net on the offline MNIST test split with
   classifier-free guidance training (``conditional=true``, 10% null labels), and a noise-aware
   classifier (``task=classifier``) with the same schedule - both through the real CLI, each
   with the full list of overrides of the preset (every setting the model depends on, written
   out, so a change of diffcli's defaults does not change the recipe);
2. sample ``n`` images (classes 0-9 in equal numbers, DDIM ``steps``, EMA weights) at each
   guidance setting of the preset: classifier-free guidance scales w, and classifier guidance
   of scale s on the same network's unconditional branch (w = 0: the network trained with null
   labels is an unconditional model) or on the conditional model (w = 1);
3. judge them with the MNIST classifier of ``benchmarks/mnist_judge.py``: accuracy = fraction
   labelled as the requested class, and FD-judge = Frechet distance of the judge's features to
   those of the whole real test split (lower is closer to real digits; comparable only within
   this table and with the judge's floor for the same n); also NFE per sample and images/s.

Run: ``python -m benchmarks run guidance_mnist`` (writes docs/results/guidance_mnist.json and
the table of docs/guidance.md; trains the judge first when benchmarks/out/mnist_judge/ has no
weights of its preset; the runs go to benchmarks/out/guidance_mnist/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import mnist_judge
from benchmarks.core import Benchmark, Settings, composed, finished_before, mark_finished
from benchmarks.mnist_judge import (
    DATA,
    feature_distance,
    judge,
    judge_folder,
    predict,
    read_mnist_test,
    to_input,
)

COMMON = [  # both stages: data, schedule, trainer, LR schedule, seed
    "dataset=mnist", "dataset.split=test", "dataset.image_size=28", "dataset.random_flip=false",
    "dataset.batch_size=64", "dataset.num_workers=0", "logger=none",
    "schedule=cosine", "schedule.num_timesteps=1000", "schedule.s=0.008", "schedule.max_beta=0.999",
    "trainer.precision=32", "trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=1",
    "lr_scheduler=cosine", "lr_scheduler.warmup_steps=100", "lr_scheduler.min_ratio=0.0",
    "seed=0"]
MODEL = [*COMMON,  # the class-conditional U-Net (1.05M parameters)
         "conditional=true", "model=unet", "model.base_channels=32", "model.channel_mults=[1,2,2]",
         "model.num_res_blocks=1", "model.dropout=0.0", "model.groups=8",
         "model.attention_resolutions=[]", "model.use_scale_shift_norm=false",
         "module.prediction=v", "module.min_snr_gamma=null", "module.ema_sigma_rel=0.05",
         "module.ema_decay=0.995", "module.ema_warmup=true", "module.cond_drop_prob=0.1",
         "loss=simple", "optimizer=adam", "optimizer.lr=0.002", "optimizer.betas=[0.9,0.999]",
         "optimizer.eps=1e-8", "optimizer.weight_decay=0.0", "callbacks.preview=null",
         "trainer.max_steps=1500"]
CLASSIFIER = [*COMMON,  # the noise-aware classifier of x_t
              "task=classifier", "model.base_channels=32", "model.channel_mults=[1,2,2]",
              "model.num_res_blocks=1", "model.dropout=0.0", "model.groups=8",
              "model.use_scale_shift_norm=true", "optimizer=adamw", "optimizer.lr=0.002",
              "optimizer.betas=[0.9,0.999]", "optimizer.eps=1e-8", "optimizer.weight_decay=0.01",
              "trainer.max_steps=800"]
SAMPLER = {"_target_": "diffcli.diffusion.samplers.ddim.DDIM", "eta": 0.0, "grid": "trailing"}
ROWS = [  # name, classifier-free w, classifier scale s (None: no classifier)
    *[(f"classifier-free, w = {w:g}" + {0: " (unconditional)", 1: " (conditional)"}.get(w, ""),
       float(w), None) for w in (0, 1, 2, 3)],
    *[(f"classifier guidance, s = {s:g} (on w = 0)", 0.0, float(s)) for s in (1, 3, 10, 30, 100)],
    ("classifier guidance, s = 3 on the conditional model (w = 1)", 1.0, 3.0)]
PER_MACHINE = ("dataset.root", "hydra.run.dir")  # added at run time, not part of the recipe


def changed(overrides: Sequence[str], **values: Any) -> list[str]:
    """``overrides`` with the keys of ``values`` (``__`` for ``.``) set to them."""
    new = {k.replace("__", "."): v for k, v in values.items()}
    kept = [o for o in overrides if o.split("=", 1)[0] not in new]
    return kept + [f"{k}={v}" for k, v in new.items()]


PRESET = {
    "model": MODEL, "classifier": CLASSIFIER, "n": 500, "steps": 25, "batch": 250,
    "sampler": SAMPLER, "use_ema": True, "clip_denoised": True,
    "reference": None,  # real digits FD-judge compares with: the first N (None: all 10,000)
    "rows": [{"setting": name, "w": w, "s": s} for name, w, s in ROWS],
    "judge": mnist_judge.training(mnist_judge.PRESET)}
SMOKE = {
    "model": changed(MODEL, trainer__max_steps=2, model__base_channels=8,
                     model__channel_mults="[1,2]", lr_scheduler__warmup_steps=0,
                     dataset__batch_size=8),
    "classifier": changed(CLASSIFIER, trainer__max_steps=2, model__base_channels=8,
                          model__channel_mults="[1,2]", lr_scheduler__warmup_steps=0,
                          dataset__batch_size=8, module__eval_images=20),
    "n": 10, "steps": 2, "batch": 10, "reference": 1000,
    "judge": {**mnist_judge.training(mnist_judge.PRESET), "epochs": 1, "train_images": 300}}


def resolve(settings: Settings) -> dict[str, Any]:
    """The settings with each stage's overrides replaced by the config they compose to."""
    return {**settings, "model": composed("train", settings["model"]),
            "classifier": composed("train", settings["classifier"])}


def train_runs(settings: Settings, workdir: Path) -> dict[str, Path]:
    """Train the conditional diffusion run and the classifier run in ``workdir``, side by side
    (each ``diffcli train``'s output goes to ``<stage>.log`` there); their checkpoints."""
    procs, stages = {}, ("model", "classifier")
    argv = {stage: ["train", *settings[stage], f"dataset.root={DATA}",
                    f"hydra.run.dir={workdir / stage}"] for stage in stages}
    for stage in [s for s in stages if not finished_before(workdir / s, argv[s])]:
        args = argv[stage]
        if os.environ.get(mnist_judge.IN_PROCESS) == "1":  # the smoke tests: one after the other
            mnist_judge.run_diffcli(*args)
            mark_finished(workdir / stage, args)
            continue
        print("$ diffcli " + " ".join(args), flush=True)
        workdir.mkdir(parents=True, exist_ok=True)
        with open(workdir / f"{stage}.log", "w") as log:
            procs[stage] = subprocess.Popen([sys.executable, "-m", "diffcli", *args], stdout=log,
                                            stderr=subprocess.STDOUT,
                                            env={**os.environ, "COLUMNS": "120"})
    for stage, proc in procs.items():
        if proc.wait() != 0:
            tail = (workdir / f"{stage}.log").read_text()[-2000:]
            raise RuntimeError(f"diffcli train ({stage}) exited {proc.returncode}:\n{tail}")
        print(f"{stage}: " + (workdir / f"{stage}.log").read_text().strip().splitlines()[-2],
              flush=True)
        mark_finished(workdir / stage, argv[stage])
    return {stage: workdir / stage / "checkpoints" / "last.ckpt" for stage in stages}


def sample_row(model: Path, classifier: Path, row: Mapping[str, Any],
               settings: Settings, device: torch.device) -> tuple[torch.Tensor, torch.Tensor,
                                                                   int, float]:
    """(uint8 images, requested labels, NFE per sample, seconds) of one guidance setting."""
    from diffcli.diffusion.generate import generate, to_uint8
    from diffcli.guided_run import Guidance, guide
    from diffcli.restore import make_sampler, open_run

    n = settings["n"]
    opened = open_run(model, use_ema=settings["use_ema"], device=device)
    sampler, _ = make_sampler(dict(settings["sampler"]), opened.schedule, steps=settings["steps"],
                              clip_denoised=settings["clip_denoised"])
    g = (Guidance(scale=row["w"]) if row["s"] is None else
         Guidance(scale=row["w"], classifier=str(classifier), classifier_scale=row["s"]))
    guided = guide(opened, g, device)
    labels = guided.labels(n)
    start = time.perf_counter()
    x = generate(sampler, guided.denoiser, opened.info.shape, list(range(n)), settings["batch"],
                 device, labels=labels)
    return to_uint8(x), labels.cpu(), opened.counter.rows // n, time.perf_counter() - start


def measure(settings: Settings, workdir: Path) -> dict[str, Any]:
    """Train both stages, sample every guidance row and judge it; rows for the table."""
    start = time.perf_counter()
    ckpts = train_runs(settings, workdir)
    train_s = time.perf_counter() - start
    net, judge_acc = judge(settings["judge"], judge_folder(settings["judge"], workdir))
    _, real = predict(net, to_input(read_mnist_test()[0][:settings["reference"]]))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for row in settings["rows"]:
        images, labels, nfe, seconds = sample_row(ckpts["model"], ckpts["classifier"], row,
                                                  settings, device)
        pred, feats = predict(net, to_input(images))
        rows.append({**row, "accuracy": float((pred == labels).float().mean()),
                     "fd_judge": feature_distance(feats, real), "nfe": nfe,
                     "images_per_s": settings["n"] / seconds})
        print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, "n": settings["n"], "steps": settings["steps"],
            "judge_accuracy": judge_acc, "train_s": round(train_s, 1), "device": device.type}


def table(result: Mapping[str, Any]) -> str:
    """Accuracy, FD-judge and NFE per row (images/s stay in the JSON: measured on a shared
    machine they are not a reliable cost figure; NFE is)."""
    lines = ["| guidance | judge accuracy | FD-judge | NFE / sample |",
             "| --- | ---: | ---: | ---: |"]
    for r in result["rows"]:
        chance = " (chance: 10%)" if r["w"] == 0 and r["s"] is None else ""
        lines.append(f"| {r['setting']} | {100 * r['accuracy']:.1f}%{chance} | "
                     f"{r['fd_judge']:.1f} | {r['nfe']} |")
    return "\n".join(lines)


BENCHMARK = Benchmark(
    name="guidance_mnist",
    title="classifier-free and classifier guidance on MNIST: judge accuracy, FD-judge, NFE",
    preset=PRESET, smoke=SMOKE, run=measure, tables={"table": table}, resolve=resolve)
