"""A small MNIST classifier that judges generated digits (not part of the package).

Trained on the first 9,000 images of the offline MNIST test split (../shared/data: the 60k
training split is not available here), checked on the last 1,000, with small random shifts so
that it does not depend on exact centring. It answers two questions about samples of a
class-conditional model: which digit does each image show (accuracy against the requested
class), and how far is the distribution of its penultimate features (128-d) from real digits'
(a Frechet distance in this classifier's feature space, "FD-judge": like FID, lower is better,
but only comparable between runs judged by this same network). Its floor: n real digits
drawn at random (each n of ``floor_n``, one draw per seed of ``floor_seeds``) against the whole
split - what a model drawing real digits scores with n samples (mean and spread in the table).

Run: ``python -m benchmarks run mnist_judge`` (about 2 minutes on 2 CPU cores; writes
docs/results/mnist_judge.json); the weights go to ``benchmarks/out/mnist_judge/`` and
:func:`judge` / :func:`load_judge` load them there (training them first when missing) for the
guidance, likelihood and latent benchmarks.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.core import Benchmark, Settings
from diffcli.eval.fid import frechet_distance

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "out" / "mnist_judge" / "mnist_judge.pt"  # the real run's workdir
DATA = Path(os.environ.get("MNIST_ROOT", HERE.parent.parent / "shared" / "data"))  # MNIST/raw/
HELD_OUT = 1000


@functools.cache
def read_mnist_test(root: Path = DATA) -> tuple[Tensor, Tensor]:
    """The 10,000 test images (N, 28, 28) uint8 and labels (N,) int64, from the idx files
    (read once a process; do not modify them in place)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    raw = root / "MNIST" / "raw"
    return read_image_file(str(raw / "t10k-images-idx3-ubyte")), read_label_file(
        str(raw / "t10k-labels-idx1-ubyte"))


class Judge(nn.Module):
    """conv 32 -> conv 64 -> conv 128 (each 3x3, ReLU, 2x2 max-pool) -> 128-d features ->
    10 logits. Input (B, 1, 28, 28) in [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(128 * 3 * 3, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)  # (B, 128)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))  # (B, 10)


def to_input(images: Tensor) -> Tensor:
    """uint8 (N, 28, 28) or (N, 1, 28, 28) -> float (N, 1, 28, 28) in [-1, 1]."""
    x = images.float().reshape(len(images), 1, 28, 28)
    return x / 127.5 - 1


def _shift(x: Tensor, gen: torch.Generator, pixels: int = 2) -> Tensor:
    dx, dy = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=gen))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train(epochs: int = 4, seed: int = 0, make: type[nn.Module] = Judge,
          train_images: int | None = None) -> tuple[nn.Module, float]:
    """Train a ``make()`` classifier (``features`` + ``head``) on images 0..8999 (the first
    ``train_images`` of them when given); return it and its accuracy on 9000..9999."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = read_mnist_test()
    x, y = to_input(images), labels
    xt, yt, xv, yv = x[:-HELD_OUT], y[:-HELD_OUT], x[-HELD_OUT:], y[-HELD_OUT:]
    xt, yt = xt[:train_images], yt[:train_images]
    judge = make()
    opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        judge.train()
        for start in range(0, len(xt), 128):
            idx = order[start:start + 128]
            loss = F.cross_entropy(judge(_shift(xt[idx], gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}/{epochs}: held-out accuracy {accuracy(judge, xv, yv):.4f}",
              flush=True)
    return judge, accuracy(judge, xv, yv)


@torch.inference_mode()
def predict(judge: nn.Module, x: Tensor, batch: int = 500) -> tuple[Tensor, Tensor]:
    """(labels (N,), features (N, D)) of inputs (N, 1, 28, 28) in [-1, 1]."""
    judge.eval()
    feats = torch.cat([judge.features(x[i:i + batch]) for i in range(0, len(x), batch)])
    return judge.head(feats).argmax(1), feats


def accuracy(judge: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((predict(judge, x)[0] == y).float().mean())


def feature_distance(a: Tensor, b: Tensor) -> float:
    """Frechet distance between two feature sets (N, D) (FID's formula, this feature space)."""
    a64, b64 = a.double().numpy(), b.double().numpy()
    return float(frechet_distance(a64.mean(0), np.cov(a64, rowvar=False),
                                  b64.mean(0), np.cov(b64, rowvar=False)))


IN_PROCESS = "BENCHMARKS_IN_PROCESS"  # set (to 1) by the smoke tests: see run_diffcli


def run_diffcli(*args: str) -> None:
    """Run the real CLI (``python -m diffcli``), echoing the command; stop on failure. With
    ``BENCHMARKS_IN_PROCESS=1`` (the smoke tests, which check the benchmarks' code paths, not
    the processes) the same entry point runs in this process, sparing a start-up of torch,
    Lightning and Hydra per command."""
    import os
    import subprocess
    import sys

    print("$ diffcli " + " ".join(args), flush=True)
    if os.environ.get(IN_PROCESS) != "1":
        subprocess.run([sys.executable, "-m", "diffcli", *args], check=True,
                       env={**os.environ, "COLUMNS": "120"})
        return
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from diffcli.cli import app

    GlobalHydra.instance().clear()  # as in a new process
    HydraConfig.instance().cfg = None
    argv, sys.argv = sys.argv, ["diffcli"]
    try:
        app(list(args), prog_name="diffcli")
    except SystemExit as done:
        if done.code not in (0, None):
            raise subprocess.CalledProcessError(int(done.code), ["diffcli", *args]) from None
    finally:
        sys.argv = argv


def load_trained(make: type[nn.Module], path: Path, script: str) -> nn.Module:
    """A ``make()`` network with the weights saved at ``path`` by ``script``, in eval mode."""
    if not path.is_file():
        raise SystemExit(f"no weights at {path}: run python {script} first")
    net = make()
    net.load_state_dict(torch.load(path, weights_only=True))
    return net.eval()


PRESET = {"epochs": 8, "seed": 0, "train_images": 9000, "held_out": HELD_OUT,
          "floor_n": [200, 500], "floor_seeds": [0, 1, 2, 3, 4]}
TRAINING = ("epochs", "seed", "train_images")  # the settings the judge's weights depend on
SMOKE = {"epochs": 1, "train_images": 1000, "floor_n": [100], "floor_seeds": [0, 1]}


def floor(feats: Tensor, n: int, seeds: list[int]) -> list[float]:
    """FD-judge of ``n`` random real digits (one draw per seed) against all of ``feats`` (the
    whole split): what a model that draws real digits scores with ``n`` samples."""
    out = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        out.append(feature_distance(feats[torch.randperm(len(feats), generator=gen)[:n]], feats))
    return out


def training(settings: Settings) -> dict[str, Any]:
    """The settings of :data:`TRAINING` (what another benchmark pins of its judge)."""
    return {k: settings[k] for k in TRAINING}


def judge(settings: Settings = PRESET, folder: Path = WEIGHTS.parent,
          retrain: bool = False) -> tuple[Judge, float]:
    """The judge trained with ``settings`` and its held-out accuracy: loaded from
    ``folder/mnist_judge.pt`` when it was saved there with these same settings (its
    ``.json`` beside it says which), else trained now and saved there. The one way the
    MNIST benchmarks get their judge."""
    weights, stamp = folder / WEIGHTS.name, folder / "mnist_judge.json"
    want = {"settings": training(settings)}
    if not retrain and weights.is_file() and stamp.is_file():
        saved = json.loads(stamp.read_text())
        if saved.get("settings") == want["settings"]:
            net = Judge()
            net.load_state_dict(torch.load(weights, weights_only=True))
            return net.eval(), saved["accuracy"]
    net, acc = train(settings["epochs"], settings["seed"], train_images=settings["train_images"])
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), weights)
    stamp.write_text(json.dumps({**want, "accuracy": acc}) + "\n")
    return net.eval(), acc


def judge_folder(settings: Settings, workdir: Path) -> Path:
    """Where the judge of ``settings`` lives: the published judge's folder (the real run's,
    benchmarks/out/mnist_judge/) for the preset, else ``workdir/judge`` (a smoke run's judge
    never replaces the real one)."""
    return WEIGHTS.parent if training(settings) == training(PRESET) else workdir / "judge"


def load_judge(settings: Settings = PRESET, folder: Path = WEIGHTS.parent) -> Judge:
    """The judge of ``settings`` (trained on first use, see :func:`judge`), in eval mode."""
    return judge(settings, folder)[0]


def measure(settings: Settings, workdir: Path) -> dict[str, Any]:
    """Train the judge (weights to ``workdir``), its accuracy on the held-out real digits and
    the random-split floor of FD-judge for each sample count of ``floor_n``."""
    if settings["held_out"] != HELD_OUT:
        raise ValueError(f"held_out is fixed at {HELD_OUT}")
    net, acc = judge(settings, workdir, retrain=True)
    _, feats = predict(net, to_input(read_mnist_test()[0]))
    floors = []
    for n in settings["floor_n"]:
        draws = floor(feats, n, settings["floor_seeds"])
        floors.append({"n": n, "draws": draws, "mean": float(np.mean(draws)),
                       "sd": float(np.std(draws, ddof=1)) if len(draws) > 1 else 0.0})
    result = {"accuracy": acc, "held_out": HELD_OUT, "floors": floors, "reference": len(feats)}
    print(json.dumps(result), flush=True)
    return result


def table(result: Mapping[str, Any]) -> str:
    lines = ["| the judge | value |", "| --- | ---: |",
             f"| accuracy on the {result['held_out']:,} held-out real digits | "
             f"{100 * result['accuracy']:.1f}% |"]
    lines += [f"| FD-judge floor: {f['n']} random real digits vs all {result['reference']:,} "
              f"(mean ± sd of {len(f['draws'])} draws) | {f['mean']:.1f} ± {f['sd']:.1f} |"
              for f in result["floors"]]
    return "\n".join(lines)


BENCHMARK = Benchmark(
    name="mnist_judge", title="the MNIST judge: held-out accuracy and FD-judge's real-data floor",
    preset=PRESET, smoke=SMOKE, run=measure, tables={"judge": table})

