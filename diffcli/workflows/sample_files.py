"""What ``diffcli sample`` writes, as the samples are made: each batch goes to disk when it is
drawn, so memory holds one batch (and the few images of the grid), whatever ``n`` is.

- images: ``images/<seed>.png`` each, ``samples.npz`` (``images`` (N, H, W, C) uint8 streamed
  by :class:`diffcli.files.NpzStream`, ``seeds``, ``labels``) and ``grid.png`` (at most
  :data:`GRID_MAX` samples: the first ones, or the first columns of every class row);
- points: ``samples.npz`` (``points`` (N, D)) and ``scatter.png`` over the training points
  (2-D points are 8 bytes a sample: they are kept for the scatter plot).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType

import numpy as np
import torch
from torch import Tensor

from diffcli.diffusion.generate import to_uint8
from diffcli.files import NpzStream

GRID_MAX = 256  # samples shown in grid.png; samples.npz and images/ hold all of them


def grid_picks(n: int, per_row: int | None) -> tuple[list[int], int]:
    """Which samples grid.png shows, and how many a row: every one when ``n <= GRID_MAX``;
    else the first ones (square grid) or, with rows of ``per_row`` samples (one per class),
    the first columns of each row."""
    if per_row is None:
        shown = min(n, GRID_MAX)
        return list(range(shown)), math.ceil(math.sqrt(shown))
    rows = math.ceil(n / per_row)
    cols = per_row if n <= GRID_MAX else max(1, min(per_row, GRID_MAX // rows))
    picks = [r * per_row + c for r in range(rows) for c in range(cols) if r * per_row + c < n]
    return picks, cols


def _extra(labels: Tensor | None) -> dict[str, np.ndarray]:
    return {} if labels is None else {"labels": labels.numpy()}


class ImageSink:
    """Writes image samples (B, C, H, W) float in [-1, 1], batch by batch in seed order, into
    ``folder``; :meth:`close` finishes samples.npz and draws grid.png."""

    def __init__(self, folder: Path, seeds: list[int], shape: tuple[int, ...],
                 labels: Tensor | None = None, per_row: int | None = None) -> None:
        c, h, w = shape
        self.folder, self.seeds, self.labels = folder, seeds, labels
        self.npz = NpzStream(folder / "samples.npz", "images", (len(seeds), h, w, c), np.uint8)
        picks, self.per_row = grid_picks(len(seeds), per_row)
        self.picks = set(picks)
        self.shown: list[Tensor] = []  # the grid's images, (C, H, W) uint8 each
        self.done = 0
        (folder / "images").mkdir(exist_ok=True)

    def __enter__(self) -> ImageSink:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:  # an error or Ctrl-C: drop the half-written samples.npz
            self.npz.__exit__(kind, exc, tb)

    def add(self, x: Tensor) -> None:
        """The next ``len(x)`` samples: their PNGs, their rows of samples.npz, grid picks."""
        from torchvision.io import write_png

        imgs = to_uint8(x)
        self.npz.write(imgs.permute(0, 2, 3, 1).numpy())
        for i, img in enumerate(imgs, start=self.done):
            write_png(img, str(self.folder / "images" / f"{self.seeds[i]:06d}.png"))
            if i in self.picks:
                self.shown.append(img)
        self.done += len(imgs)

    def close(self) -> None:
        from torchvision.utils import make_grid, save_image

        self.npz.close(seeds=np.array(self.seeds), **_extra(self.labels))
        imgs = torch.stack(self.shown)
        grid = make_grid(imgs.float() / 255, nrow=self.per_row, padding=1, pad_value=1)
        scale = max(1, 256 // max(imgs.shape[-1], 1) // 2)
        grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
        save_image(grid, self.folder / "grid.png")


class PointSink:
    """Collects point samples (B, D) and writes samples.npz and scatter.png (the samples,
    coloured by class when labelled, over the training points ``data``)."""

    def __init__(self, folder: Path, seeds: list[int], data: Tensor, title: str,
                 labels: Tensor | None = None) -> None:
        self.folder, self.seeds, self.data, self.title = folder, seeds, data, title
        self.labels = labels
        self.parts: list[Tensor] = []

    def __enter__(self) -> PointSink:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add(self, x: Tensor) -> None:
        self.parts.append(x)

    def close(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        x, data, labels = torch.cat(self.parts), self.data, self.labels
        np.savez_compressed(self.folder / "samples.npz", points=x.numpy(),
                            seeds=np.array(self.seeds), **_extra(labels))
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        ax.scatter(data[:, 0], data[:, 1], s=2, c="0.75", label="data")
        if labels is None:
            ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:red", label="samples")
        for c in ([] if labels is None else sorted(set(labels.tolist()))):
            pick = labels == c
            ax.scatter(x[pick, 0], x[pick, 1], s=2, label=f"class {c}")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
        ax.set_title(self.title, fontsize=9)
        fig.tight_layout()
        fig.savefig(self.folder / "scatter.png")
        plt.close(fig)


__all__ = ["GRID_MAX", "ImageSink", "PointSink", "grid_picks"]
