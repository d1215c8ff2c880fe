"""LeNet-FID of MNIST models: FID's formula in the feature space of a small LeNet-5 trained here.

Inception features (FID proper) need downloaded weights and are made for 299x299 photographs;
for 28x28 digits a digit classifier's features are the usual stand-in. This LeNet-5 (LeCun et
al. 1998: conv 5x5 x6 -> pool -> conv 5x5 x16 -> pool -> 120 -> 84 -> 10, ReLU) is trained on
the first 9,000 images of the offline MNIST test split (../shared/data holds no training split)
and checked on the last 1,000. LeNet-FID = the Frechet distance between the 84-d penultimate
features of N generated digits (default 500) and of all 10,000 real test digits. The floor --
N real test digits against the same reference -- is printed beside every figure: a perfect
model scores about that.

The benchmark (``python -m benchmarks run lenet_fid``) trains the LeNet and every run of its
pinned preset itself (``diffcli train`` with the full list of overrides of each run: data,
network, schedule, prediction, EMA, optimizer, LR schedule, loss, steps, seed, precision on the
CPU), then samples each with pinned samplers and scores them: the tables of docs/training.md
("Training at a time budget": the recipes and the 15-minute result, as fixed step counts, so the
numbers do not depend on the machine's speed) and of docs/samplers.md (20-step samplers on the
15-minute model). About 75 minutes of training on 2 CPU cores.

To score your own runs (2 CPU cores):
  python benchmarks/lenet_fid.py train                # ~1 min; benchmarks/out/lenet.pt
  python benchmarks/lenet_fid.py eval RUN [RUN ...]   # a run dir or checkpoint each
      [--sampler dpmpp_3m --steps 20 --on logsnr --n 500 --grid out.png]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from benchmarks.auto_pick import config_key, current_picks
from benchmarks.core import Benchmark, composed, finished_before, mark_finished, markdown_table
from benchmarks.mnist_judge import (
    DATA,
    HELD_OUT,
    feature_distance,
    load_trained,
    predict,
    read_mnist_test,
    run_diffcli,
    to_input,
    train,
)

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "out" / "lenet.pt"

# every setting of the model that the numbers depend on, today's defaults written out
_DATA = ["dataset=mnist", "dataset.split=test", "dataset.image_size=28",
         "dataset.random_flip=false", "dataset.batch_size=128"]
_NET = ["model=unet", "model.base_channels=32", "model.channel_mults=[1,2]",
        "model.num_res_blocks=1", "model.dropout=0.0", "model.groups=8",
        "model.attention_resolutions=[]", "conditional=false"]
_PROCESS = ["loss=simple", "module.min_snr_gamma=null"]
LINEAR = ["schedule=linear", "schedule.num_timesteps=1000", "schedule.beta_start=1e-4",
          "schedule.beta_end=0.02"]
COSINE = ["schedule=cosine", "schedule.num_timesteps=1000", "schedule.s=0.008",
          "schedule.max_beta=0.999"]
_OPT = ["optimizer=adam", "optimizer.lr=2e-3", "optimizer.betas=[0.9,0.999]",
        "optimizer.eps=1e-8", "optimizer.weight_decay=0.0"]
_RUN = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32",
        "trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=1", "seed=0",
        "logger=none"]
COMMON = [*_DATA, *_NET, *_PROCESS, *_OPT, *_RUN]
# the recipes: before (the old defaults) and today's (v, cosine LR over the run, power EMA)
BEFORE = ["module.prediction=eps", "lr_scheduler=warmup", "lr_scheduler.warmup_steps=100",
          "module.ema_sigma_rel=null", "module.ema_decay=0.995", "module.ema_warmup=true"]
EPS_NEW = ["module.prediction=eps", "lr_scheduler=cosine", "lr_scheduler.warmup_steps=100",
           "lr_scheduler.min_ratio=0.0", "module.ema_sigma_rel=0.05", "module.ema_warmup=true"]
AFTER = [*EPS_NEW[1:], "module.prediction=v"]
RECIPE_STEPS = "trainer.max_steps=280"  # what 6 minutes held (272-284 steps)
BUDGET_STEPS = "trainer.max_steps=850"  # what 15 minutes held on the 2-core CPU (848-866)


def _run(label: str, *overrides: str, schedule: list[str] = LINEAR) -> dict[str, Any]:
    return {"label": label, "overrides": [*COMMON, *schedule, *overrides]}


SAMPLER_NFES = (5, 10, 20)
SAMPLER_ROWS = [("auto", {}), ("ddim", {"grid": "trailing"}),
                *[(name, {**extra, "grid": grid}) for name, extra in (
                    ("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_2m_sde", {}), ("unipc", {}),
                    ("unipc", {"order": 3, "variant": "bh1"})) for grid in ("trailing", "logsnr")],
                ("unipc", {"grid": "karras"})]

PRESET: dict[str, Any] = {
    "lenet": {"epochs": 8, "seed": 0},
    "n": 500,  # samples per score, seeds 0..n-1; the floor: n random real digits, 5 draws
    "floor_draws": 5,
    "runs": {
        "before": _run("eps, warm-up then constant LR 2e-3, EMA decay 0.995 (the old defaults)",
                       *BEFORE, BUDGET_STEPS),
        "after": _run("v, cosine LR over the run, power EMA sigma_rel 0.05 (the defaults now)",
                      *AFTER, BUDGET_STEPS),
        "r-before": _run("before: eps, warm-up then constant LR 2e-3, EMA decay 0.995",
                         *BEFORE, RECIPE_STEPS),
        "r-eps": _run("eps, cosine LR over the budget, power EMA sigma_rel 0.05",
                      *EPS_NEW, RECIPE_STEPS),
        "r-ema10": _run("... with sigma_rel 0.10", *EPS_NEW, "module.ema_sigma_rel=0.10",
                        RECIPE_STEPS),
        "r-cosine": _run("... with the cosine noise schedule", *EPS_NEW, RECIPE_STEPS,
                         schedule=COSINE),
        "r-level3": _run("... with a third U-Net level (`model.channel_mults=[1,2,2]`)",
                         *EPS_NEW, "model.channel_mults=[1,2,2]", RECIPE_STEPS),
        "r-minsnr": _run("... with Min-SNR-5 weighting", *EPS_NEW, "module.min_snr_gamma=5.0",
                         RECIPE_STEPS),
        "r-v": _run("... with v-prediction (the new default)", *AFTER, RECIPE_STEPS),
    },
    # table -> scores: [run, sampler, {options over the shipped sampler config}]
    "tables": {
        "budget": [["before", "dpmpp_3m", {"steps": 20, "grid": "logsnr"}],
                   ["after", "dpmpp_3m", {"steps": 20, "grid": "logsnr"}]],
        "recipes": [[run, "dpmpp_3m", {"steps": 20, "grid": "trailing"}] for run in (
            "r-before", "r-eps", "r-ema10", "r-cosine", "r-level3", "r-minsnr", "r-v")],
        # issue 34's second yardstick: sampler=auto against the configurations it picks from,
        # at 5, 10 and 20 NFE on the 15-minute model
        "samplers": [["after", name, {**options, "steps": nfe}]
                     for name, options in SAMPLER_ROWS for nfe in SAMPLER_NFES],
    },
}
_TINY = ["trainer.max_steps=2", "model.base_channels=8", "dataset.batch_size=8"]
# the smoke run: an untrained LeNet (mnist_judge's smoke runs the training loop they share; one
# epoch takes longer than the smoke budget), one 2-step run of a tiny net, 2-step samplers and
# 20 samples; every run's overrides are still composed and checked (resolve)
SMOKE: dict[str, Any] = {
    "lenet": {"epochs": 0, "seed": 0}, "n": 20, "floor_draws": 1,
    "runs": {name: {**run, "overrides": [*run["overrides"], *_TINY]}
             for name, run in PRESET["runs"].items()},
    "tables": {"budget": [["after", "dpmpp_3m", {"steps": 2, "grid": "logsnr"}]],
               "samplers": [["after", "unipc", {"steps": 2, "grid": "karras"}],
                            ["after", "auto", {"steps": 2}]]},
}


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max-pooling; input (B, 1, 28, 28) in [-1, 1], features (B, 84)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.head = nn.Linear(84, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)  # (B, 84)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, 10)


def load_lenet(path: Path = WEIGHTS) -> LeNet5:
    """The trained LeNet-5 (``python benchmarks/lenet_fid.py train`` first)."""
    return load_trained(LeNet5, path, "benchmarks/lenet_fid.py train")


def reference(net: LeNet5) -> Tensor:
    """Features (10000, 84) of the real test split."""
    return predict(net, to_input(read_mnist_test()[0]))[1]


def floor(net: LeNet5, ref: Tensor, n: int, draws: int = 5) -> float:
    """Mean LeNet-FID of ``n`` random real test digits against the whole split."""
    gen = torch.Generator().manual_seed(0)
    return sum(feature_distance(ref[torch.randperm(len(ref), generator=gen)[:n]], ref)
               for _ in range(draws)) / draws


def lenet_fid(images: Tensor, net: LeNet5, ref: Tensor) -> float:
    """LeNet-FID of uint8 images (N, 1, 28, 28) against the reference features."""
    return feature_distance(predict(net, to_input(images))[1], ref)


def sampler_config(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The shipped config of sampler ``name`` with ``options`` over it (every key pinned)."""
    from diffcli.components import option

    return {**option("sampler", name), **options}


def evaluate(run: str, net: LeNet5, ref: Tensor, *, sampler: str | dict[str, Any],
             steps: int | None, n: int, grid: Path | None = None) -> tuple[float, float]:
    """Sample ``n`` digits (seeds 0..n-1) from ``run`` with ``sampler`` (a name or a full
    config); (their LeNet-FID, seconds spent sampling)."""
    import diffcli

    pipe = diffcli.load(run)
    start = time.perf_counter()
    images = pipe.sample(n, sampler=sampler, steps=steps, batch_size=250)  # uint8 (n,1,28,28)
    sec = time.perf_counter() - start
    fid = lenet_fid(images, net, ref)
    if grid is not None:
        from torchvision.utils import save_image

        grid.parent.mkdir(parents=True, exist_ok=True)
        save_image(images[:64].float() / 255, grid, nrow=8, padding=1)
    return fid, sec


def train_lenet(settings: Mapping[str, Any], path: Path) -> float:
    """Train the LeNet of ``settings["lenet"]`` and save it at ``path``; its held-out
    accuracy."""
    net, acc = train(settings["lenet"]["epochs"], seed=settings["lenet"]["seed"], make=LeNet5)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return acc


def train_runs(settings: Mapping[str, Any], workdir: Path) -> dict[str, dict[str, Any]]:
    """``diffcli train`` each run the tables use, from scratch, into ``workdir/runs/NAME``;
    name -> {folder, steps trained, seconds (None: a run this commit had finished, reused)}."""
    used = {score[0] for scores in settings["tables"].values() for score in scores}
    out = {}
    for name in [r for r in settings["runs"] if r in used]:
        folder = workdir / "runs" / name
        args = ["train", *settings["runs"][name]["overrides"], f"dataset.root={DATA}",
                f"runs_root={workdir / 'runs'}", f"hydra.run.dir={folder}"]
        start = time.perf_counter()
        reused = finished_before(folder, args)
        if not reused:
            run_diffcli(*args)
            mark_finished(folder, args)
        ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=False)
        out[name] = {"folder": str(folder), "steps": int(ckpt["global_step"]),
                     "seconds": None if reused else round(time.perf_counter() - start, 1)}
    return out


def measure(settings: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Train the LeNet and the runs, then score every entry of every table; rows per table."""
    acc = train_lenet(settings, workdir / "lenet.pt")
    runs = train_runs(settings, workdir)
    net = load_lenet(workdir / "lenet.pt")
    ref = reference(net)
    n = settings["n"]
    result: dict[str, Any] = {"lenet_accuracy": acc, "held_out": HELD_OUT, "n": n,
                              "floor": floor(net, ref, n, settings["floor_draws"]),
                              "runs": runs, "tables": {}}
    cache: dict[str, tuple[float, float]] = {}
    for table, scores in settings["tables"].items():
        rows = []
        for run, sampler, options in scores:
            config = sampler_config(sampler, options)
            key = f"{run}/{sorted(config.items())}"
            if key not in cache:
                cache[key] = evaluate(runs[run]["folder"], net, ref, sampler=config,
                                      steps=None, n=n)
            fid, sec = cache[key]
            rows.append({"run": run, "label": settings["runs"][run]["label"],
                         "steps": runs[run]["steps"], "sampler": sampler,
                         "sampler_steps": config["steps"], "grid": config.get("grid", "auto"),
                         "options": {k: v for k, v in options.items() if k != "steps"},
                         "lenet_fid": fid, "sample_s": round(sec, 1)})
            print(f"{table}: {run} {sampler} on {rows[-1]['grid']}, {config['steps']} steps: "
                  f"LeNet-FID {fid:.2f}", flush=True)
        result["tables"][table] = rows
    return result


def resolve(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings plus each run's composed training config (without what varies per
    machine: hydra, runs_root, dataset.root) and each score's full sampler config."""
    configs = {name: composed("train", run["overrides"])
               for name, run in settings["runs"].items()}
    samplers = {table: [sampler_config(s, o) for _, s, o in scores]
                for table, scores in settings["tables"].items()}
    return {**settings, "train_configs": configs, "sampler_configs": samplers}


def _caption(result: Mapping[str, Any], what: str) -> str:
    return (f"LeNet-FID of {result['n']:,} samples ({what}); floor ({result['n']:,} real test "
            f"digits against all 10,000): **{result['floor']:.2f}**.\n\n")


def budget_table(result: Mapping[str, Any]) -> str:
    rows = result["tables"]["budget"]
    lines = ["| run | recipe | steps | LeNet-FID |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {r['run']} | {r['label']} | {r['steps']} | {r['lenet_fid']:.2f} |"
              for r in rows]
    first = rows[0]
    return _caption(result, f"{first['sampler']}, {first['sampler_steps']} steps, "
                            f"{first['grid']} grid") + "\n".join(lines)


def recipes_table(result: Mapping[str, Any]) -> str:
    rows = result["tables"]["recipes"]
    lines = [f"| recipe ({rows[0]['steps']} steps) | LeNet-FID |", "| --- | ---: |"]
    lines += [f"| {r['label']} | {r['lenet_fid']:.2f} |" for r in rows]
    return _caption(result, f"{rows[0]['sampler']}, {rows[0]['sampler_steps']} steps, "
                            f"{rows[0]['grid']} grid") + "\n".join(lines)


TABLE_OBJECTIVE = {"samplers": "ddpm", "samplers_edm": "edm", "samplers_flow": "flow"}


def samplers_table(result: Mapping[str, Any], table: str = "samplers") -> str:
    """One row per sampler configuration of ``table``, one column per NFE; auto's row first
    (the cells of the configurations auto's table picks today,
    :func:`benchmarks.auto_pick.current_picks`), then how far it is from the best configuration
    at each NFE."""
    rows = result["tables"][table]
    nfes = sorted({r["sampler_steps"] for r in rows})

    def label(r: Mapping[str, Any]) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in r.get("options", {}).items() if k != "grid")
        return r["sampler"] + (f" ({r['grid']}{', ' + extra if extra else ''})"
                               if r["sampler"] != "auto" else "")

    cells: dict[str, dict[int, float]] = {}
    for r in rows:
        cells.setdefault(label(r), {})[r["sampler_steps"]] = r["lenet_fid"]
    # auto runs exactly the configuration its table picks, with the same seeds: its cells are
    # those of today's picks (the table may have changed since this result was measured)
    picks = current_picks(TABLE_OBJECTIVE[table])
    measured = {(r["sampler_steps"], config_key(r["sampler"], r["options"])): r["lenet_fid"]
                for r in rows if r["sampler"] != "auto"}
    for n, key in picks.items():
        if (n, key) in measured and n in cells.get("auto", {}):
            cells["auto"][n] = measured[n, key]
    body = [[name, *(f"{by[n]:.2f}" if n in by else "-" for n in nfes)]
            for name, by in cells.items()]
    auto = cells.get("auto", {})
    gap = []
    for n in nfes:
        best = min(by[n] for by in cells.values() if n in by)
        if n in auto:
            gap.append(f"{n} NFE: auto {auto[n]:.2f}, best {best:.2f} "
                       f"({100 * (auto[n] / best - 1):+.0f}%)")
    return (_caption(result, f"the '{rows[0]['run']}' model, {rows[0]['steps']} steps")
            + markdown_table(["sampler", *(f"NFE {n}" for n in nfes)], "l" + "r" * len(nfes),
                             body) + ("\n\n" + "; ".join(gap) + "." if gap else ""))


BENCHMARK = Benchmark(
    name="lenet_fid", title="LeNet-FID of MNIST models trained here (recipes, 15-minute runs, "
                            "20-step samplers)",
    preset=PRESET, smoke=SMOKE, run=measure, resolve=resolve,
    tables={"budget": budget_table, "recipes": recipes_table, "samplers": samplers_table})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the LeNet (benchmarks/out/lenet.pt)")
    tr.add_argument("--epochs", type=int, default=PRESET["lenet"]["epochs"])
    ev = sub.add_parser("eval", help="LeNet-FID of runs' samples")
    ev.add_argument("runs", nargs="+", help="run folders or checkpoints")
    ev.add_argument("--sampler", default="dpmpp_3m")
    ev.add_argument("--steps", type=int, default=20)
    ev.add_argument("--n", type=int, default=500)
    ev.add_argument("--on", help="the sampler's grid (sampler.grid), e.g. logsnr or karras")
    ev.add_argument("--grid", type=Path, help="save the first 64 samples here (one run)")
    args = parser.parse_args()
    if args.cmd == "train":
        start = time.perf_counter()
        acc = train_lenet({"lenet": {**PRESET["lenet"], "epochs": args.epochs}}, WEIGHTS)
        print(f"LeNet-5: held-out accuracy {acc:.4f} on {HELD_OUT} images; "
              f"{time.perf_counter() - start:.0f} s; weights {WEIGHTS}")
        return
    net = load_lenet()
    ref = reference(net)
    print(f"floor ({args.n} real digits vs the split): {floor(net, ref, args.n):.2f}")
    sampler = args.sampler if args.on is None else sampler_config(args.sampler, {"grid": args.on})
    for run in args.runs:
        fid, sec = evaluate(run, net, ref, sampler=sampler, steps=args.steps, n=args.n,
                            grid=args.grid)
        print(f"{run}: LeNet-FID {fid:.2f} ({args.n} samples, {args.sampler} {args.steps} steps"
              f"{'' if args.on is None else ' on ' + args.on}, {sec:.0f} s to sample)",
              flush=True)


if __name__ == "__main__":
    main()
