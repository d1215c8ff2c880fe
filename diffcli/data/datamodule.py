"""The Lightning data module that serves every dataset: images and 2-D points alike.

:class:`DiffusionDataModule` serves shuffled batches of a map-style dataset of bare tensors
or of ``(x, y)`` pairs (a :class:`~diffcli.data.labels.LabelledDataset`); :class:`TensorDataModule`
is the same over an in-memory tensor (and optional labels). Every data module has ``kind``
("image" or "points"), ``data_shape`` (e.g. (3, 32, 32) or (2,)), ``num_samples``,
``batch_size``, ``data`` (the samples as one tensor (N, *data_shape) when they are in memory),
``num_classes`` and ``class_names`` (None for unlabelled data) and a ``train_dataloader()``:
of float32 tensors x (B, *data_shape), in [-1, 1] for images, or for labelled data of pairs
``(x, y)`` with y (B,) int64 in 0..num_classes-1.
Datasets are built by name with :func:`diffcli.data.registry.make_datamodule`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from diffcli.data.labels import LabelledDataset, class_info, collate, numbered_names, unlabelled
from diffcli.data.order import EpochOrder
from diffcli.data.vision import RandomHorizontalFlip, TensorSamples, sample_shape
from diffcli.errors import DiffcliError

__all__ = ["KINDS", "DiffusionDataModule", "TensorDataModule"]

KINDS: tuple[str, ...] = ("image", "points")
SAMPLE_NDIM: dict[str, int] = {"image": 3, "points": 1}  # dimensions of one sample (C, H, W) / (D,)


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise DiffcliError(f"unknown data kind {kind!r}; choose one of: {', '.join(KINDS)}")


def _check_count(value: object, key: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum``; one-line error naming ``key`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value \
            or value < minimum:
        adjective = "positive" if minimum > 0 else "non-negative"
        raise DiffcliError(f"{key} must be a {adjective} integer, got {value!r}")
    return int(value)


class DiffusionDataModule(L.LightningDataModule):
    """Serves shuffled batches (B, *data_shape) of a map-style ``dataset`` of bare tensors, or
    ``(x, y)`` batches (y (B,) int64) of a labelled one (a dataset with ``class_names``, as
    :class:`~diffcli.data.labels.LabelledDataset`).

    ``kind`` is ``"image"`` for samples (C, H, W) in [-1, 1] or ``"points"`` for (D,).
    ``batch_size`` is per device and clamped to the dataset size so that ``drop_last`` never
    leaves an epoch without batches. ``random_flip`` (images only) mirrors each sample
    left-right with probability 1/2 (torch's default generator; seeded by
    ``L.seed_everything``); ``dataset`` itself stays un-augmented. Workers persist across
    epochs when ``num_workers > 0``; memory is pinned when CUDA is present.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 128,
        num_workers: int = 0,
        *,
        random_flip: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        kind: str = "image",
    ) -> None:
        super().__init__()
        _check_kind(kind)
        n = len(dataset)
        if n == 0:
            raise DiffcliError("the dataset is empty")
        shape = sample_shape(dataset)
        if len(shape) != SAMPLE_NDIM[kind]:
            raise DiffcliError(f"{kind} samples must have {SAMPLE_NDIM[kind]} dimensions, "
                               f"got shape {shape}")
        if random_flip and kind != "image":
            raise DiffcliError("random_flip applies to images only, not to 2-D points")
        self.dataset = dataset
        self.kind = kind
        self.data_shape: tuple[int, ...] = shape
        self.batch_size = min(_check_count(batch_size, "batch_size", 1), n)
        self.num_workers = _check_count(num_workers, "num_workers", 0)
        self.random_flip = bool(random_flip)
        self.shuffle = shuffle
        self.drop_last = drop_last
        # (seed, batches already trained): the sample order as a function of (seed, epoch) and
        # the resumed point, for a resume that continues exactly (diffcli.data.order); None:
        # the DataLoader's own shuffle
        self.order: tuple[int, int] | None = None

    @property
    def num_samples(self) -> int:
        """Number of samples N."""
        return len(self.dataset)

    @property
    def num_classes(self) -> int | None:
        """Number of classes K of labelled data (labels 0..K-1), None for unlabelled data."""
        return class_info(self.dataset)[0]

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Names of the classes (label k: ``class_names[k]``), None for unlabelled data."""
        return class_info(self.dataset)[1]

    @property
    def data(self) -> Tensor | None:
        """All samples (N, *data_shape) when they are one tensor in memory (2-D points, digits),
        else None (datasets decoded on access). Never the labels."""
        samples = unlabelled(self.dataset)
        return samples.data if isinstance(samples, TensorSamples) else None

    @property
    def captioned(self) -> bool:
        """Whether items are ``(x, caption)`` (text-to-image data)."""
        return isinstance(getattr(self.dataset, "captions", None), list)

    def head(self, n: int) -> tuple[Tensor, Tensor | list[str] | None]:
        """The first ``n`` items in dataset order, no flips: (x (n', ...), labels (n',), the
        captions or None), n' = min(n, len); reproducible, unlike the shuffled training
        loader."""
        loader = DataLoader(Subset(self.dataset, range(min(n, len(self.dataset)))),
                            batch_size=max(1, self.batch_size), shuffle=False, collate_fn=collate)
        batches = list(loader)
        if batches and isinstance(batches[0], tuple):
            x = torch.cat([b[0] for b in batches])
            if isinstance(batches[0][1], list | tuple):  # captions
                return x, [c for b in batches for c in b[1]]
            return x, torch.cat([b[1] for b in batches])
        return torch.cat(batches), None

    def train_dataloader(self) -> DataLoader:
        """Batches of shape (batch_size, *data_shape), float32 in [-1, 1] for images; for
        labelled data pairs (x, y) of such an x and its labels y, int64 (batch_size,)."""
        dataset = RandomHorizontalFlip(self.dataset) if self.random_flip else self.dataset
        sampler = None
        if self.order is not None:
            seed, done = self.order
            per_epoch = max(1, len(dataset) // self.batch_size if self.drop_last else
                            -(-len(dataset) // self.batch_size))
            sampler = EpochOrder(len(dataset), seed, self.shuffle,
                                 skip=(done % per_epoch) * self.batch_size,
                                 epoch=done // per_epoch)
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle if sampler is None else None,
            sampler=sampler,
            drop_last=self.drop_last,
            collate_fn=collate,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )


class TensorDataModule(DiffusionDataModule):
    """A :class:`DiffusionDataModule` over an in-memory tensor ``data`` (N, *data_shape).

    ``kind`` is ``"image"`` for (N, C, H, W) images or ``"points"`` for (N, D) point clouds;
    ``data`` is stored as contiguous float32. With ``labels`` (N,) integers in 0..K-1 it serves
    ``(x, y)`` batches; ``class_names`` names the K classes ("0".."K-1", K = max label + 1,
    when None).
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int = 128,
        num_workers: int = 0,
        *,
        random_flip: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        kind: str = "image",
        labels: Tensor | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        _check_kind(kind)
        if not isinstance(data, Tensor) or data.ndim < 2 or data.shape[0] == 0:
            shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            raise DiffcliError(f"data must be a non-empty tensor of shape (N, ...), got {shape}")
        samples: Dataset = TensorSamples(data.to(torch.float32).contiguous())
        if labels is not None:
            samples = _labelled_tensor(samples, labels, class_names)
        elif class_names is not None:
            raise DiffcliError("class_names were given without labels; pass labels too")
        super().__init__(samples, batch_size, num_workers, random_flip=random_flip,
                         shuffle=shuffle, drop_last=drop_last, kind=kind)


def _labelled_tensor(
    samples: Dataset, labels: Tensor, class_names: Sequence[str] | None
) -> LabelledDataset:
    """``samples`` with ``labels``; class names "0".."K-1" (K = max label + 1) when None."""
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point():
        got = (f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, Tensor)
               else type(labels).__name__)
        raise DiffcliError(f"labels must be an integer tensor of shape (N,), got {got}")
    if class_names is None:
        class_names = numbered_names(int(labels.max()) + 1 if labels.numel() else 1)
    return LabelledDataset(samples, labels, class_names, source="labels",
                           fix="give one label in 0..K-1 per sample and K class_names")


def __getattr__(name: str) -> Any:
    """``make_datamodule`` under its former path ``diffcli.data.datamodule.make_datamodule``,
    which configs stored in older checkpoints name: the very function of the registry."""
    if name == "make_datamodule":
        from diffcli.data.registry import make_datamodule

        return make_datamodule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
