"""The image datasets by name, read straight from their usual on-disk layouts.

* ``mnist`` / ``fashion_mnist`` - idx files in ``<root>/MNIST/raw`` / ``<root>/FashionMNIST/raw``.
* ``cifar10`` - the python pickles in ``<root>/cifar-10-batches-py``.
* ``celeba`` - ``<root>/celeba/img_align_celeba/*.jpg`` + ``list_eval_partition.txt``.
* ``imagefolder`` - every png/jpg/jpeg/bmp/webp under ``<root>``, recursively.

Files are read directly (torchvision's md5 checks would reject partial or re-packed copies);
torchvision only fetches them when ``download=True``. Anything missing is one
:class:`DatasetNotFoundError` line naming the path looked at and how to get the files.
"""

from __future__ import annotations

import os
import pickle
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffcli.data.images import _one_line, load_digits_images, load_mnist_uint8, read_idx_split
from diffcli.data.vision import (
    IMAGE_EXTENSIONS,
    ImageFiles,
    RandomHorizontalFlip,
    TensorSamples,
    UInt8Images,
    center_crop_fraction_resize,
    check_image_size,
    find_images,
)
from diffcli.errors import DatasetNotFoundError, DiffcliError

NATIVE_SIZES: dict[str, int] = {
    "digits": 16, "mnist": 28, "fashion_mnist": 28, "cifar10": 32, "celeba": 64, "imagefolder": 32,
}
IMAGE_DATASETS: tuple[str, ...] = tuple(NATIVE_SIZES)
FLIP_BY_DEFAULT: frozenset[str] = frozenset({"cifar10", "celeba", "imagefolder"})

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
CELEBA_SPLITS: dict[str, int | None] = {"train": 0, "valid": 1, "test": 2, "all": None}
CELEBA_CROP_FRACTION = 140 / 178  # a 140x140 center crop of the 178x218 aligned faces
CELEBA_PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")
_MAX_REASON = 200  # characters of a download error kept in the one-line message


def _reason(err: BaseException) -> str:
    """A short one-line reason for ``err``."""
    text = _one_line(err)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _root_path(root: str | Path | None, name: str, holds: str) -> Path:
    """``root`` resolved; one-line error saying what to set when it is None."""
    if root is None or str(root) == "":
        raise DatasetNotFoundError(
            f"dataset={name} needs a data folder: set dataset.root=<folder containing {holds}>"
            + ("" if name == "imagefolder" else " (add dataset.download=true to fetch it)")
        )
    return Path(root).expanduser().resolve()


def _download(fetch: Any, what: str, where: Path, advice: str) -> None:
    """Run torchvision's ``fetch()``; any failure becomes one DatasetNotFoundError line."""
    try:
        fetch()
    except Exception as err:  # network, disk and checksum errors all surface the same way
        raise DatasetNotFoundError(
            f"could not download {what} into {where} ({_reason(err)}); {advice}"
        ) from err


# --- MNIST and Fashion-MNIST ----------------------------------------------------------------


def mnist_dataset(
    root: str | Path | None, split: str, image_size: int | None = None, download: bool = False
) -> UInt8Images:
    """MNIST digits kept as uint8 (N, 1, 28, 28), served as float (1, S, S) in [-1, 1]."""
    images, _ = load_mnist_uint8(_root_path(root, "mnist", "MNIST/raw"), split, download)
    return UInt8Images(images.unsqueeze(1), image_size)


def fashion_mnist_dataset(
    root: str | Path | None, split: str, image_size: int | None = None, download: bool = False
) -> UInt8Images:
    """Fashion-MNIST from ``<root>/FashionMNIST/raw`` idx files, kept as uint8 (N, 1, 28, 28)."""
    if split not in ("train", "test"):
        raise DiffcliError(f"unknown fashion_mnist split {split!r}; choose one of: train, test")
    root_path = _root_path(root, "fashion_mnist", "FashionMNIST/raw")
    raw = root_path / "FashionMNIST" / "raw"
    if download:
        from torchvision.datasets import FashionMNIST

        fetch = partial(FashionMNIST, str(root_path), train=split == "train", download=True)
        _download(fetch, "Fashion-MNIST", raw,
                  "check your internet connection or copy the idx files there")
    hint = "fetch it with `diffcli train dataset=fashion_mnist dataset.download=true`"
    images, _ = read_idx_split(raw, split, label="Fashion-MNIST", hint=hint)
    return UInt8Images(images.unsqueeze(1), image_size)


# --- CIFAR-10 ------------------------------------------------------------------------------


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only plain containers and numpy arrays (no arbitrary code from a data file)."""

    ALLOWED = frozenset({
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
          for n in ("_reconstruct", "scalar")),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    })

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    """One CIFAR-10 pickle -> uint8 images (N, 3, 32, 32) and int64 labels (N,)."""
    try:
        with path.open("rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError,
            AttributeError, IndexError) as err:
        raise DiffcliError(f"could not read CIFAR-10 batch {path} ({_reason(err)}); "
                           "delete it and unpack cifar-10-python.tar.gz again") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DiffcliError(f"CIFAR-10 batch {path} holds data of shape {data.shape} and "
                           f"{labels.size} labels; expected (N, 3072) and N labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def load_cifar10_uint8(
    root: str | Path | None, split: str = "train", download: bool = False
) -> tuple[Tensor, Tensor]:
    """CIFAR-10 from ``<root>/cifar-10-batches-py``: uint8 (N, 3, 32, 32) and int64 labels (N,).

    ``split="train"`` reads data_batch_1..5 (50,000 images), ``"test"`` test_batch (10,000).
    """
    if split not in CIFAR_FILES:
        raise DiffcliError(f"unknown cifar10 split {split!r}; choose one of: train, test")
    root_path = _root_path(root, "cifar10", CIFAR_DIR)
    folder = root_path / CIFAR_DIR
    if download:
        from torchvision.datasets import CIFAR10

        fetch = partial(CIFAR10, str(root_path), train=split == "train", download=True)
        _download(fetch, "CIFAR-10", folder, "check your internet connection or unpack "
                  f"cifar-10-python.tar.gz from {CIFAR_URL} into {root_path}")
    missing = [name for name in CIFAR_FILES[split] if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-10 {split} split not found under {folder} (missing {', '.join(missing)}); "
            "fetch it with `diffcli train dataset=cifar10 dataset.download=true` or unpack "
            f"cifar-10-python.tar.gz from {CIFAR_URL} into {root_path}"
        )
    parts = [_read_cifar_batch(folder / name) for name in CIFAR_FILES[split]]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def cifar10_dataset(
    root: str | Path | None, split: str, image_size: int | None = None, download: bool = False
) -> UInt8Images:
    """CIFAR-10 kept as uint8 (N, 3, 32, 32) in memory, served as float (3, S, S) in [-1, 1]."""
    return UInt8Images(load_cifar10_uint8(root, split, download)[0], image_size)


# --- CelebA --------------------------------------------------------------------------------


def _celeba_folder(root: Path) -> Path:
    """The folder holding img_align_celeba: ``<root>/celeba`` (torchvision) or ``<root>``."""
    for candidate in (root / "celeba", root):
        if (candidate / "img_align_celeba").is_dir():
            return candidate
    return root / "celeba"


def _celeba_get_it(folder: Path) -> str:
    """How to get CelebA by hand, in one sentence fragment."""
    return (f"download img_align_celeba.zip and Eval/list_eval_partition.txt from the official "
            f"page {CELEBA_URL} (Google Drive links) and unzip them so that "
            f"{folder}/img_align_celeba/000001.jpg and {folder}/list_eval_partition.txt exist")


def _celeba_partition(folder: Path, split: str) -> list[str]:
    """File names listed for ``split`` in list_eval_partition.txt (or Kaggle's .csv)."""
    path = next((folder / n for n in CELEBA_PARTITION_FILES if (folder / n).is_file()), None)
    if path is None:
        raise DatasetNotFoundError(
            f"CelebA split file {folder / CELEBA_PARTITION_FILES[0]} not found (needed for "
            f"dataset.split={split}); {_celeba_get_it(folder)}, or set dataset.split=all"
        )
    wanted = str(CELEBA_SPLITS[split])
    names = []
    for line in path.read_text().splitlines():
        fields = line.replace(",", " ").split()
        if len(fields) == 2 and fields[1] == wanted:
            names.append(fields[0])
    return names


def celeba_files(
    root: str | Path | None, split: str = "train", download: bool = False
) -> list[Path]:
    """Paths of the aligned CelebA JPEGs of ``split`` (train / valid / test / all), sorted."""
    if split not in CELEBA_SPLITS:
        raise DiffcliError(f"unknown celeba split {split!r}; choose one of: "
                           f"{', '.join(CELEBA_SPLITS)}")
    root_path = _root_path(root, "celeba", "celeba/img_align_celeba")
    if download:
        from torchvision.datasets import CelebA

        fetch = partial(CelebA, str(root_path), split="all", target_type=[], download=True)
        _download(fetch, "CelebA", root_path / "celeba", "torchvision fetches it from Google "
                  f"Drive, which often refuses (quota); {_celeba_get_it(root_path / 'celeba')}")
    folder = _celeba_folder(root_path)
    images = folder / "img_align_celeba"
    if (images / "img_align_celeba").is_dir():  # Kaggle's zip nests the folder once more
        images = images / "img_align_celeba"
    if not images.is_dir():
        raise DatasetNotFoundError(
            f"CelebA not found: no folder {images}; {_celeba_get_it(folder)} "
            "(or try dataset.download=true)"
        )
    present = {e.name for e in os.scandir(images) if e.name.lower().endswith((".jpg", ".png"))}
    names = sorted(present if split == "all" else _celeba_partition(folder, split))
    missing = [n for n in names if n not in present]
    if missing:
        raise DatasetNotFoundError(
            f"CelebA {split} split: {len(missing)} of {len(names)} listed images are missing "
            f"from {images} (e.g. {missing[0]}); unzip img_align_celeba.zip there again"
        )
    if not names:
        raise DatasetNotFoundError(f"CelebA {split} split is empty (no image of {images} "
                                   f"belongs to it); {_celeba_get_it(folder)}")
    return [images / n for n in names]


def celeba_dataset(
    root: str | Path | None, split: str, image_size: int, download: bool, cache: bool
) -> Dataset:
    """CelebA faces: 140x140 center crop of the aligned 178x218 images, resized to S x S."""
    size = check_image_size(image_size)
    prepare = partial(center_crop_fraction_resize, size=size, fraction=CELEBA_CROP_FRACTION)
    files = ImageFiles(celeba_files(root, split, download), size, channels=3, prepare=prepare)
    return files.cached() if cache else files


# --- any folder of images ------------------------------------------------------------------


def image_folder_dataset(
    root: str | Path | None, image_size: int, channels: int = 3, cache: bool = False
) -> Dataset:
    """Every image under ``root`` (recursively): short side resized to S, center-cropped S x S."""
    patterns = ", ".join(f"*{ext}" for ext in IMAGE_EXTENSIONS)
    root_path = _root_path(root, "imagefolder", f"images ({patterns}), searched recursively")
    if not root_path.is_dir():
        raise DatasetNotFoundError(f"image folder {root_path} does not exist; "
                                   "set dataset.root=<folder of images>")
    paths = find_images(root_path)
    if not paths:
        raise DatasetNotFoundError(f"no images found under {root_path} (looked for {patterns}, "
                                   "recursively); set dataset.root=<folder of images>")
    files = ImageFiles(paths, check_image_size(image_size), channels=channels)
    return files.cached() if cache else files


# --- by name -------------------------------------------------------------------------------


def _digits(image_size: int) -> TensorSamples:
    """scikit-learn's digits, float (1797, 1, S, S) in memory."""
    return TensorSamples(load_digits_images(image_size=image_size)[0])


def build_image_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    download: bool = False,
    channels: int = 3,
    random_flip: bool = False,
    cache: bool = False,
) -> Dataset:
    """The image dataset ``name`` as a map-style Dataset of float32 (C, S, S) in [-1, 1].

    ``image_size`` None means the dataset's native size (:data:`NATIVE_SIZES`). ``channels``
    (1 or 3) applies to ``imagefolder`` only; the others have fixed channels (MNIST-like 1,
    CIFAR-10 and CelebA 3). ``split`` is ignored by digits and imagefolder. ``cache`` keeps
    decoded uint8 images of celeba / imagefolder in memory. Samples are un-augmented unless
    ``random_flip`` (then each is mirrored left-right with probability 1/2).
    """
    if name not in NATIVE_SIZES:
        raise DiffcliError(f"unknown image dataset {name!r}; choose one of: "
                           f"{', '.join(IMAGE_DATASETS)}")
    size = check_image_size(NATIVE_SIZES[name] if image_size is None else image_size)
    if name == "imagefolder" and download:
        raise DiffcliError("dataset=imagefolder cannot be downloaded; set dataset.download=false "
                           "and dataset.root=<folder of images>")
    if name == "digits":
        dataset: Dataset = _digits(size)
    elif name == "mnist":
        dataset = mnist_dataset(root, split, size, download)
    elif name == "fashion_mnist":
        dataset = fashion_mnist_dataset(root, split, size, download)
    elif name == "cifar10":
        dataset = cifar10_dataset(root, split, size, download)
    elif name == "celeba":
        dataset = celeba_dataset(root, split, size, download, cache)
    else:
        dataset = image_folder_dataset(root, size, channels, cache)
    return RandomHorizontalFlip(dataset) if random_flip else dataset
