"""Readers of the datasets, each from its usual on-disk layout (or from scikit-learn).

Every reader returns a map-style Dataset of bare float32 tensors in [-1, 1]:

* :func:`toy_dataset` - 2-D points (2,) of a :mod:`diffcli.data.toy` sampler.
* :func:`digits_dataset` - scikit-learn's bundled 8x8 digits (1, S, S), no download.
* :func:`mnist_dataset` / :func:`fashion_mnist_dataset` - idx files in ``<root>/MNIST/raw`` /
  ``<root>/FashionMNIST/raw`` (:mod:`diffcli.data.idx`), (1, S, S).
* :func:`cifar10_dataset` - the python pickles in ``<root>/cifar-10-batches-py``, (3, S, S).
* :func:`celeba_dataset` - ``<root>/celeba/img_align_celeba/*.jpg`` + ``list_eval_partition.txt``.
* :func:`image_folder_dataset` - every png/jpg/jpeg/bmp/webp under ``<root>``, recursively.

Files are read directly (torchvision's md5 checks would reject partial or re-packed copies);
torchvision only fetches them when ``download`` is true. Anything missing is one
:class:`DatasetNotFoundError` line naming the path looked at and how to get the files; errors
name options by their config key (``root``, ``download``, ``split``) but never in a command's
syntax, which the caller adds. :mod:`diffcli.data.registry` picks the reader by name.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.datasets
from sklearn.datasets import load_digits
from torch import Tensor
from torch.utils.data import Dataset

from diffcli.data.idx import check_idx_split, read_idx_split
from diffcli.data.vision import (
    IMAGE_EXTENSIONS,
    ImageFiles,
    TensorSamples,
    UInt8Images,
    center_crop_fraction_resize,
    check_image_size,
    find_images,
    resize_images,
)
from diffcli.errors import DatasetNotFoundError, DiffcliError, one_line

DIGITS_SIZE = 8  # scikit-learn's digits are 8x8, pixel values 0..16
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
FETCH_ADVICE = "check the internet connection"
_MAX_REASON = 200  # characters of a download error kept in the one-line message


def _reason(err: BaseException) -> str:
    """A short one-line reason for ``err``."""
    text = one_line(err)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _root_path(root: str | Path | None, label: str, holds: str, downloadable: bool = True) -> Path:
    """``root`` resolved; one-line error saying what root must hold when it is not set."""
    if root is None or str(root) == "":
        fetch = "; with download set to true, the files are fetched there" if downloadable else ""
        raise DatasetNotFoundError(
            f"{label} needs a data folder: set root to the folder that holds {holds}{fetch}"
        )
    return Path(root).expanduser().resolve()


def _download(fetch: Callable[[], Any], what: str, where: Path, advice: str) -> None:
    """Run torchvision's ``fetch()``; any failure becomes one DatasetNotFoundError line."""
    try:
        fetch()
    except Exception as err:  # network, disk and checksum errors all surface the same way
        raise DatasetNotFoundError(
            f"could not download {what} into {where} ({_reason(err)}); {advice}"
        ) from err


# --- 2-D toy points --------------------------------------------------------------------------


def toy_dataset(sampler: Callable[..., Tensor], n_points: int, seed: int = 0) -> TensorSamples:
    """``n_points`` points (n_points, 2) of a :mod:`diffcli.data.toy` sampler, drawn with
    ``seed``; item i is float32 (2,)."""
    return TensorSamples(sampler(n_points, seed=seed))


# --- scikit-learn's digits -------------------------------------------------------------------


def digits_dataset(image_size: int = DIGITS_SIZE) -> TensorSamples:
    """All 1797 of scikit-learn's 8x8 handwritten digits in memory, float (1797, 1, S, S).

    Pixel values 0..16 map linearly to [-1, 1] (background -1); sizes other than 8 are an
    antialiased bilinear resize (16: upsampled). Item i is float32 (1, S, S).
    """
    pixels = torch.from_numpy(load_digits().images).reshape(-1, 1, DIGITS_SIZE, DIGITS_SIZE)
    images = pixels.to(torch.float32) * (2.0 / 16.0) - 1.0  # (N, 1, 8, 8) in [-1, 1]
    return TensorSamples(resize_images(images, image_size).contiguous())


# --- MNIST and Fashion-MNIST -----------------------------------------------------------------


def _idx_dataset(
    root: str | Path | None, split: str, image_size: int | None, download: bool,
    *, label: str, folder: str,
) -> UInt8Images:
    """An idx dataset in ``<root>/<folder>/raw``, kept as uint8 (N, 1, 28, 28) in memory.

    ``folder`` is also the torchvision class that fetches it (``MNIST``, ``FashionMNIST``).
    """
    check_idx_split(split, label)
    root_path = _root_path(root, label, f"{folder}/raw")
    raw = root_path / folder / "raw"
    if download:
        fetch = partial(getattr(torchvision.datasets, folder), str(root_path),
                        train=split == "train", download=True)
        _download(fetch, label, raw, f"{FETCH_ADVICE}, or unpack the idx files there")
    images, _ = read_idx_split(raw, split, label)
    return UInt8Images(images.unsqueeze(1), image_size)


def mnist_dataset(
    root: str | Path | None, split: str = "train", image_size: int | None = None,
    download: bool = False,
) -> UInt8Images:
    """MNIST digits (train 60,000 / test 10,000) from ``<root>/MNIST/raw``; item i is float32
    (1, S, S) in [-1, 1] (S = 28 unless ``image_size``)."""
    return _idx_dataset(root, split, image_size, download, label="MNIST", folder="MNIST")


def fashion_mnist_dataset(
    root: str | Path | None, split: str = "train", image_size: int | None = None,
    download: bool = False,
) -> UInt8Images:
    """Fashion-MNIST (train 60,000 / test 10,000) from ``<root>/FashionMNIST/raw``; item i is
    float32 (1, S, S) in [-1, 1] (S = 28 unless ``image_size``)."""
    return _idx_dataset(root, split, image_size, download, label="Fashion-MNIST",
                        folder="FashionMNIST")


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
    root_path = _root_path(root, "CIFAR-10", CIFAR_DIR)
    folder = root_path / CIFAR_DIR
    unpack = f"unpack cifar-10-python.tar.gz from {CIFAR_URL} into {root_path}"
    if download:
        fetch = partial(torchvision.datasets.CIFAR10, str(root_path), train=split == "train",
                        download=True)
        _download(fetch, "CIFAR-10", folder, f"{FETCH_ADVICE}, or {unpack}")
    missing = [name for name in CIFAR_FILES[split] if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-10 {split} split not found under {folder} (missing {', '.join(missing)}); "
            f"set download to true to fetch it, or {unpack}"
        )
    parts = [_read_cifar_batch(folder / name) for name in CIFAR_FILES[split]]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def cifar10_dataset(
    root: str | Path | None, split: str = "train", image_size: int | None = None,
    download: bool = False,
) -> UInt8Images:
    """CIFAR-10 kept as uint8 (N, 3, 32, 32) in memory; item i is float32 (3, S, S) in [-1, 1]
    (S = 32 unless ``image_size``)."""
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
            f"CelebA split file {folder / CELEBA_PARTITION_FILES[0]} not found (needed for the "
            f"{split} split); {_celeba_get_it(folder)}, or set split to all"
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
    root_path = _root_path(root, "CelebA", "celeba/img_align_celeba")
    if download:
        fetch = partial(torchvision.datasets.CelebA, str(root_path), split="all",
                        target_type=[], download=True)
        _download(fetch, "CelebA", root_path / "celeba", "torchvision fetches it from Google "
                  f"Drive, which often refuses (quota); {_celeba_get_it(root_path / 'celeba')}")
    folder = _celeba_folder(root_path)
    images = folder / "img_align_celeba"
    if (images / "img_align_celeba").is_dir():  # Kaggle's zip nests the folder once more
        images = images / "img_align_celeba"
    if not images.is_dir():
        raise DatasetNotFoundError(
            f"CelebA not found: no folder {images}; {_celeba_get_it(folder)} "
            "(or set download to true)"
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
    root: str | Path | None, split: str = "train", image_size: int = 64, download: bool = False,
    cache: bool = False,
) -> Dataset:
    """CelebA faces: the 140x140 center crop of the aligned 178x218 images resized to S x S;
    item i is float32 (3, S, S) in [-1, 1]. ``cache`` decodes all of them into memory now."""
    size = check_image_size(image_size)
    prepare = partial(center_crop_fraction_resize, size=size, fraction=CELEBA_CROP_FRACTION)
    files = ImageFiles(celeba_files(root, split, download), size, channels=3, prepare=prepare)
    return files.cached() if cache else files


# --- any folder of images ------------------------------------------------------------------


def image_folder_dataset(
    root: str | Path | None, image_size: int = 32, channels: int = 3, cache: bool = False,
    download: bool = False,
) -> Dataset:
    """Every image under ``root`` (recursively): short side resized to S, center-cropped S x S;
    item i is float32 (C, S, S) in [-1, 1] with C = ``channels`` (1 or 3). There is nothing
    to download: ``download`` true is an error."""
    patterns = ", ".join(f"*{ext}" for ext in IMAGE_EXTENSIONS)
    if download:
        raise DiffcliError("an image folder cannot be downloaded: set download to false and "
                           "root to a folder of images")
    root_path = _root_path(root, "imagefolder",
                           f"the images ({patterns}, searched recursively)", downloadable=False)
    if not root_path.is_dir():
        raise DatasetNotFoundError(f"image folder {root_path} does not exist; "
                                   "set root to a folder of images")
    paths = find_images(root_path)
    if not paths:
        raise DatasetNotFoundError(f"no images found under {root_path} (looked for {patterns}, "
                                   "recursively); set root to a folder of images")
    files = ImageFiles(paths, check_image_size(image_size), channels=channels)
    return files.cached() if cache else files
