"""A small MNIST classifier that judges generated digits (not part of the package).

Trained on the first 9,000 images of the offline MNIST test split (../shared/data: the 60k
training split is not available here), checked on the last 1,000, with small random shifts so
that it does not depend on exact centring. It answers two questions about samples of a
class-conditional model: which digit does each image show (accuracy against the requested
class), and how far is the distribution of its penultimate features (128-d) from real digits'
(a Frechet distance in this classifier's feature space, "FD-judge": like FID, lower is better,
but only comparable between runs judged by this same network).

Run: ``python benchmarks/mnist_judge.py`` (about 2 minutes on 2 CPU cores); the weights go
to ``benchmarks/out/mnist_judge.pt`` and are reused by ``benchmarks/guidance_mnist.py``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcli.eval.fid import frechet_distance

HERE = Path(__file__).resolve().parent
WEIGHTS = HERE / "out" / "mnist_judge.pt"
DATA = Path(os.environ.get("MNIST_ROOT", HERE.parent.parent / "shared" / "data"))  # MNIST/raw/
HELD_OUT = 1000


def read_mnist_test(root: Path = DATA) -> tuple[Tensor, Tensor]:
    """The 10,000 test images (N, 28, 28) uint8 and labels (N,) int64, from the idx files."""
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


def train(epochs: int = 4, seed: int = 0, make: type[nn.Module] = Judge) -> tuple[nn.Module, float]:
    """Train a ``make()`` classifier (``features`` + ``head``) on images 0..8999; return it and
    its accuracy on 9000..9999."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    images, labels = read_mnist_test()
    x, y = to_input(images), labels
    xt, yt, xv, yv = x[:-HELD_OUT], y[:-HELD_OUT], x[-HELD_OUT:], y[-HELD_OUT:]
    judge = make()
    opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=gen)
        for start in range(0, len(xt), 128):
            idx = order[start:start + 128]
            loss = F.cross_entropy(judge(_shift(xt[idx], gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"epoch {epoch + 1}/{epochs}: held-out accuracy {accuracy(judge, xv, yv):.4f}")
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


def run_diffcli(*args: str) -> None:
    """Run the real CLI (``python -m diffcli``), echoing the command; stop on failure."""
    import os
    import subprocess
    import sys

    print("$ diffcli " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "diffcli", *args], check=True,
                   env={**os.environ, "COLUMNS": "120"})


def load_trained(make: type[nn.Module], path: Path, script: str) -> nn.Module:
    """A ``make()`` network with the weights saved at ``path`` by ``script``, in eval mode."""
    if not path.is_file():
        raise SystemExit(f"no weights at {path}: run python {script} first")
    net = make()
    net.load_state_dict(torch.load(path, weights_only=True))
    return net.eval()


def load_judge(path: Path = WEIGHTS) -> Judge:
    """The trained judge (train it first with this script)."""
    return load_trained(Judge, path, "benchmarks/mnist_judge.py")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    start = time.perf_counter()
    judge, acc = train(args.epochs)
    WEIGHTS.parent.mkdir(exist_ok=True)
    torch.save(judge.state_dict(), WEIGHTS)
    images, labels = read_mnist_test()
    _, feats = predict(judge, to_input(images))
    half = len(feats) // 2  # the distance between two halves of real data: the floor
    floor = feature_distance(feats[:half], feats[half:])
    print(f"judge: held-out accuracy {acc:.4f} on {HELD_OUT} images; FD-judge between two "
          f"halves of the real test split {floor:.3f}; {time.perf_counter() - start:.0f} s; "
          f"weights {WEIGHTS}")


if __name__ == "__main__":
    main()
