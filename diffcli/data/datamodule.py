"""Lightning data modules over map-style datasets, and the factory the dataset configs call.

A Hydra config builds the training data with::

    _target_: diffcli.data.datamodule.make_datamodule
    name: cifar10
    root: data
    batch_size: 128

Every data module has ``kind`` ("image" or "points"), ``data_shape`` (e.g. (3, 32, 32)),
``num_samples``, ``batch_size`` and a ``train_dataloader()`` of bare float32 tensors
(B, *data_shape), in [-1, 1] for images.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffcli.data.images import load_digits_images, load_mnist_images
from diffcli.data.sources import FLIP_BY_DEFAULT, IMAGE_DATASETS, build_image_dataset
from diffcli.data.toy import TOY_DATASETS
from diffcli.data.vision import RandomHorizontalFlip, TensorSamples, sample_shape
from diffcli.errors import DatasetNotFoundError, DiffcliError

__all__ = [
    "DATASET_NAMES", "IMAGE_DATASETS", "ImageDataModule", "TensorDataModule", "build_dataset",
    "build_image_dataset", "make_datamodule",
]

IN_MEMORY_IMAGE_DATASETS: tuple[str, ...] = ("digits", "mnist")  # what build_dataset loads
DATASET_NAMES: tuple[str, ...] = (*IMAGE_DATASETS, *TOY_DATASETS)
KINDS: tuple[str, ...] = ("image", "points")
DIGITS_NATIVE_SIZE = 16
MNIST_NATIVE_SIZE = 28
_Samples = TensorSamples  # former name, kept for importers


class ImageDataModule(L.LightningDataModule):
    """Serves shuffled batches (B, *data_shape) of a map-style ``dataset`` of bare tensors.

    ``kind`` is ``"image"`` for samples (C, H, W) or ``"points"`` for (D,) (see
    :class:`TensorDataModule`). ``batch_size`` is per device and clamped to the dataset size so
    that ``drop_last`` never leaves an epoch without batches. ``random_flip`` mirrors each image
    left-right with probability 1/2 (torch's default generator; seeded by ``L.seed_everything``).
    Workers persist across epochs when ``num_workers > 0``; memory is pinned when CUDA is present.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 128,
        num_workers: int = 0,
        random_flip: bool = False,
        shuffle: bool = True,
        drop_last: bool = True,
        kind: str = "image",
    ) -> None:
        super().__init__()
        n = len(dataset)
        if n == 0:
            raise DiffcliError("the dataset is empty")
        shape = sample_shape(dataset)
        _check_shape(shape, kind)
        if random_flip and kind != "image":
            raise DiffcliError("random_flip applies to images only, not to 2-D points")
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise DiffcliError(f"batch_size must be a positive integer, got {batch_size!r}")
        if isinstance(num_workers, bool) or int(num_workers) != num_workers or num_workers < 0:
            raise DiffcliError(f"num_workers must be a non-negative integer, got {num_workers!r}")
        self.dataset = dataset
        self.kind = kind
        self.data_shape: tuple[int, ...] = shape
        self.batch_size = min(int(batch_size), n)
        self.num_workers = int(num_workers)
        self.random_flip = bool(random_flip)
        self.shuffle = shuffle
        self.drop_last = drop_last

    @property
    def num_samples(self) -> int:
        """Number of samples N."""
        return len(self.dataset)

    def train_dataloader(self) -> DataLoader:
        """Batches of shape (batch_size, *data_shape), float32 in [-1, 1] for images."""
        dataset = RandomHorizontalFlip(self.dataset) if self.random_flip else self.dataset
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            drop_last=self.drop_last,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )


class TensorDataModule(ImageDataModule):
    """Serves batches of an in-memory tensor ``data`` of shape (N, *data_shape).

    ``kind`` is ``"image"`` for (N, C, H, W) images or ``"points"`` for (N, D) point clouds.
    """

    def __init__(
        self,
        data: Tensor,
        batch_size: int = 128,
        num_workers: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        kind: str = "image",
        random_flip: bool = False,
    ) -> None:
        _check_data(data, kind)
        self.data = data.to(torch.float32).contiguous()  # (N, *data_shape)
        super().__init__(
            TensorSamples(self.data), batch_size=batch_size, num_workers=num_workers,
            random_flip=random_flip, shuffle=shuffle, drop_last=drop_last, kind=kind,
        )


def _check_shape(shape: tuple[int, ...], kind: str) -> None:
    """Reject an unknown ``kind`` or a sample shape that does not fit it."""
    if kind not in KINDS:
        raise DiffcliError(f"unknown data kind {kind!r}; choose one of: {', '.join(KINDS)}")
    expected = 3 if kind == "image" else 1
    if len(shape) != expected:
        raise DiffcliError(f"{kind} samples must have {expected} dimensions, got shape {shape}")


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
    """Load dataset ``name`` into memory as one tensor and say what kind of data it is.

    Image datasets ("digits", "mnist") give (N, 1, S, S) in [-1, 1] with ``S = image_size`` or
    the native size (digits 16, MNIST 28) when None; digits ignore ``split`` and use all 1797
    images. Toy datasets give ``n_points`` points (n_points, 2) drawn with ``seed``. The larger
    image sets (fashion_mnist, cifar10, celeba, imagefolder) are served by
    :func:`build_image_dataset` / :func:`make_datamodule` instead.

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
    if name in IMAGE_DATASETS:
        raise DiffcliError(f"dataset {name!r} is decoded on access, not loaded into one tensor; "
                           "use make_datamodule or build_image_dataset")
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
    random_flip: bool | None = None,
    channels: int = 3,
    cache: bool = False,
) -> ImageDataModule:
    """The datamodule of dataset ``name``, as the ``conf/dataset/*.yaml`` configs describe it.

    Toy point sets and digits are in-memory tensors (:class:`TensorDataModule`); the other
    image sets are map-style datasets from :func:`build_image_dataset`. ``batch_size`` is per
    device. ``random_flip`` None means the dataset's default (on for cifar10, celeba and
    imagefolder; off for digits, mnist and fashion_mnist, where mirroring changes meaning).
    ``channels`` (1 or 3) and ``cache`` (keep decoded uint8 images in memory) apply to
    imagefolder (``cache`` also to celeba).
    """
    flip = name in FLIP_BY_DEFAULT if random_flip is None else bool(random_flip)
    if name in TOY_DATASETS or name == "digits":
        data, kind = build_dataset(name, image_size=image_size, n_points=n_points, seed=seed)
        return TensorDataModule(data, batch_size=batch_size, num_workers=num_workers, kind=kind,
                                random_flip=flip)
    if name not in IMAGE_DATASETS:
        raise DiffcliError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    dataset = build_image_dataset(
        name, root=root, split=split, image_size=image_size, download=download,
        channels=channels, cache=cache,
    )
    return ImageDataModule(dataset, batch_size=batch_size, num_workers=num_workers,
                           random_flip=flip)
