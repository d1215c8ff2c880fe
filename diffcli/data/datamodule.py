"""Lightning data module over an in-memory tensor, and the dataset factory the configs call.

A Hydra config builds the training data with::

    _target_: diffcli.data.datamodule.make_datamodule
    name: digits
    batch_size: 128
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffcli.data.images import load_digits_images, load_mnist_images
from diffcli.data.toy import TOY_DATASETS
from diffcli.errors import DatasetNotFoundError, DiffcliError

IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist")
DATASET_NAMES: tuple[str, ...] = (*IMAGE_DATASETS, *TOY_DATASETS)
KINDS: tuple[str, ...] = ("image", "points")
DIGITS_NATIVE_SIZE = 16
MNIST_NATIVE_SIZE = 28


class _Samples(Dataset):
    """Index a tensor (N, *S) sample by sample, yielding bare tensors (*S) rather than tuples."""

    def __init__(self, data: Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.data[index]


class TensorDataModule(L.LightningDataModule):
    """Serves batches of an in-memory tensor ``data`` of shape (N, *data_shape).

    ``kind`` is ``"image"`` for (N, C, H, W) images or ``"points"`` for (N, D) point clouds.
    ``batch_size`` is clamped to N so that ``drop_last`` never leaves an epoch without batches.
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int = 128,
        num_workers: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        kind: str = "image",
    ) -> None:
        super().__init__()
        _check_data(data, kind)
        if batch_size < 1:
            raise DiffcliError(f"batch_size must be a positive integer, got {batch_size}")
        self.data = data.to(torch.float32).contiguous()  # (N, *data_shape)
        self.kind = kind
        self.batch_size = min(int(batch_size), self.data.shape[0])
        self.num_workers = int(num_workers)
        self.shuffle = shuffle
        self.drop_last = drop_last

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. (1, 16, 16) for images or (2,) for points."""
        return tuple(self.data.shape[1:])

    @property
    def num_samples(self) -> int:
        """Number of samples N."""
        return self.data.shape[0]

    def train_dataloader(self) -> DataLoader:
        """Batches of shape (batch_size, *data_shape)."""
        return DataLoader(
            _Samples(self.data),
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def _check_data(data: Tensor, kind: str) -> None:
    """Reject an unknown ``kind``, an empty tensor, or a shape that does not fit ``kind``."""
    if kind not in KINDS:
        raise DiffcliError(f"unknown data kind {kind!r}; choose one of: {', '.join(KINDS)}")
    if not isinstance(data, Tensor) or data.ndim < 2 or data.shape[0] == 0:
        shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
        raise DiffcliError(f"data must be a non-empty tensor of shape (N, ...), got {shape}")
    expected_ndim = 4 if kind == "image" else 2
    if data.ndim != expected_ndim:
        raise DiffcliError(
            f"{kind} data must have {expected_ndim} dimensions, got shape {tuple(data.shape)}"
        )


def _mnist(root: str | Path | None, split: str, image_size: int | None, download: bool) -> Tensor:
    """MNIST images (N, 1, S, S) in [-1, 1]; one-line error when no root is configured."""
    if root is None:
        raise DatasetNotFoundError(
            "MNIST needs a data folder: set dataset.root=<folder containing MNIST/raw> "
            "(add dataset.download=true to fetch it)"
        )
    size = MNIST_NATIVE_SIZE if image_size is None else image_size
    images, _ = load_mnist_images(root, split=split, image_size=size, download=download)
    return images


def build_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    n_points: int = 10000,
    seed: int = 0,
    download: bool = False,
) -> tuple[Tensor, str]:
    """Load dataset ``name`` into memory and say what kind of data it is.

    Image datasets ("digits", "mnist") give (N, 1, S, S) in [-1, 1] with ``S = image_size`` or
    the native size (digits 16, MNIST 28) when None; digits ignore ``split`` and use all 1797
    images. Toy datasets give ``n_points`` points (n_points, 2) drawn with ``seed``.

    Returns:
        (data, kind) with kind "image" or "points".
    """
    if name == "digits":
        size = DIGITS_NATIVE_SIZE if image_size is None else image_size
        return load_digits_images(image_size=size)[0], "image"
    if name == "mnist":
        return _mnist(root, split, image_size, download), "image"
    if name in TOY_DATASETS:
        return TOY_DATASETS[name](n_points, seed=seed), "points"
    raise DiffcliError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")


def make_datamodule(
    name: str,
    batch_size: int = 128,
    num_workers: int = 0,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    n_points: int = 10000,
    seed: int = 0,
    download: bool = False,
) -> TensorDataModule:
    """Build dataset ``name`` (see :func:`build_dataset`) and wrap it in a TensorDataModule."""
    data, kind = build_dataset(
        name,
        root=root,
        split=split,
        image_size=image_size,
        n_points=n_points,
        seed=seed,
        download=download,
    )
    return TensorDataModule(data, batch_size=batch_size, num_workers=num_workers, kind=kind)
