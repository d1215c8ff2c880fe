"""LeNet-FID of MNIST models: FID's formula in the feature space of a small LeNet-5 trained here.

Inception features (FID proper) need downloaded weights and are made for 299x299 photographs;
for 28x28 digits a digit classifier's features are the usual stand-in. This LeNet-5 (LeCun et
al. 1998: conv 5x5 x6 -> pool -> conv 5x5 x16 -> pool -> 120 -> 84 -> 10, ReLU) is trained on
the first 9,000 images of the offline MNIST test split (../shared/data holds no training split)
and checked on the last 1,000. LeNet-FID = the Frechet distance between the 84-d penultimate
features of N generated digits (default 500) and of all 10,000 real test digits. The floor --
N real test digits against the same reference -- is printed beside every figure: a perfect
model scores about that.

Commands (2 CPU cores):
  python benchmarks/lenet_fid.py train                # ~1 min; benchmarks/out/lenet.pt
  python benchmarks/lenet_fid.py eval RUN [RUN ...]   # a run dir or checkpoint each
      [--sampler dpmpp_3m --steps 20 --on logsnr --n 500 --grid out.png]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_judge import (  # noqa: E402
    HELD_OUT,
    feature_distance,
    load_trained,
    predict,
    read_mnist_test,
    to_input,
    train,
)

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "out" / "lenet.pt"


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


def evaluate(run: str, net: LeNet5, ref: Tensor, *, sampler: str, steps: int | None, n: int,
             grid: Path | None, on: str | None = None) -> float:
    """Sample ``n`` digits (seeds 0..n-1) from ``run`` with ``sampler`` (on its grid ``on``,
    None: its default) and return their LeNet-FID."""
    from torchvision.utils import save_image

    import diffcli
    from diffcli.components import option

    pipe = diffcli.load(run)
    start = time.perf_counter()
    chosen = sampler if on is None else {**option("sampler", sampler), "grid": on}
    images = pipe.sample(n, sampler=chosen, steps=steps, batch_size=250)  # uint8 (n, 1, 28, 28)
    sec = time.perf_counter() - start
    fid = lenet_fid(images, net, ref)
    if grid is not None:
        grid.parent.mkdir(parents=True, exist_ok=True)
        save_image(images[:64].float() / 255, grid, nrow=8, padding=1)
    print(f"{run}: LeNet-FID {fid:.2f} ({n} samples, {sampler} {steps or 'default'} steps"
          f"{'' if on is None else ' on ' + on}, "
          f"{sec:.0f} s to sample)", flush=True)
    return fid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train the LeNet (benchmarks/out/lenet.pt)")
    tr.add_argument("--epochs", type=int, default=8)
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
        net, acc = train(args.epochs, make=LeNet5)
        WEIGHTS.parent.mkdir(exist_ok=True)
        torch.save(net.state_dict(), WEIGHTS)
        print(f"LeNet-5: held-out accuracy {acc:.4f} on {HELD_OUT} images; "
              f"{time.perf_counter() - start:.0f} s; weights {WEIGHTS}")
        return
    net = load_lenet()
    ref = reference(net)
    print(f"floor ({args.n} real digits vs the split): {floor(net, ref, args.n):.2f}")
    for run in args.runs:
        evaluate(run, net, ref, sampler=args.sampler, steps=args.steps, n=args.n,
                 grid=args.grid, on=args.on)


if __name__ == "__main__":
    main()
