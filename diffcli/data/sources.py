"""Readers of the datasets, each from its usual on-disk layout (or from scikit-learn).

Every reader returns a map-style Dataset of float32 tensors in [-1, 1]; a labelled one is a
:class:`~diffcli.data.labels.LabelledDataset` of ``(x, y)`` items over a dataset of bare tensors
(:func:`~diffcli.data.labels.unlabelled` takes the labels off):

* :func:`toy_dataset` - 2-D points (2,) of a :mod:`diffcli.data.toy` sampler (unlabelled);
  :func:`labelled_toy_dataset` - those of a labelled sampler (moons, gaussian_mixture).
* :func:`digits_dataset` - scikit-learn's bundled 8x8 digits (1, S, S), no download; 10 classes.
* :func:`mnist_dataset` / :func:`fashion_mnist_dataset` - idx files in ``<root>/MNIST/raw`` /
  ``<root>/FashionMNIST/raw`` (:mod:`diffcli.data.idx`), (1, S, S); 10 classes.
* :func:`cifar10_dataset` - the python pickles in ``<root>/cifar-10-batches-py``, (3, S, S);
  10 classes (:data:`CIFAR10_CLASSES`).
* :func:`celeba_dataset` - ``<root>/celeba/img_align_celeba/*.jpg`` + ``list_eval_partition.txt``;
  unlabelled, or 2 classes by one attribute of ``list_attr_celeba.txt``.
* :func:`image_folder_dataset` - every png/jpg/jpeg/bmp/webp under ``<root>``, recursively;
  one class per first-level sub-folder when every image lies in one and there are 2 or more.

Files are read directly (torchvision's md5 checks would reject partial or re-packed copies);
torchvision only fetches them when ``download`` is true. Anything missing is one
:class:`DatasetNotFoundError` line naming the path looked at and how to get the files; errors
name options by their config key (``root``, ``download``, ``split``) but never in a command's
syntax, which the caller adds. :mod:`diffcli.data.registry` picks the reader by name.

The file formats are read elsewhere: MNIST's idx files by :mod:`diffcli.data.idx`, CIFAR-10's
pickles by :mod:`diffcli.data.cifar`, CelebA's folder and tables by :mod:`diffcli.data.celeba`;
the root folder and downloads are :mod:`diffcli.data.download`'s. Their public names that
were defined here (``load_cifar10_uint8``, ``celeba_files``, ``CIFAR_DIR``, ...) are importable
from here as before.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffcli.data.celeba import (
    CELEBA_ATTRIBUTE_FILES,
    CELEBA_CROP_FRACTION,
    CELEBA_PARTITION_FILES,
    CELEBA_SPLITS,
    CELEBA_URL,
    celeba_attribute_labels,
    celeba_files,
    celeba_folder,
)
from diffcli.data.cifar import CIFAR_DIR, CIFAR_FILES, CIFAR_URL, load_cifar10_uint8
from diffcli.data.download import FETCH_ADVICE, data_root, run_download
from diffcli.data.idx import GET_IT, check_idx_split, idx_split_files, read_idx_split
from diffcli.data.labels import LabelledDataset, numbered_names
from diffcli.data.toy import LabelledPoints
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
from diffcli.errors import DatasetNotFoundError, DiffcliError

__all__ = [  # with the names defined in cifar.py, celeba.py and download.py before they moved
    "CELEBA_ATTRIBUTE_FILES",
    "CELEBA_CROP_FRACTION",
    "CELEBA_PARTITION_FILES",
    "CELEBA_SPLITS",
    "CELEBA_URL",
    "CIFAR10_CLASSES",
    "CIFAR_DIR",
    "CIFAR_FILES",
    "CIFAR_URL",
    "DIGITS_SIZE",
    "DIGIT_CLASSES",
    "FASHION_MNIST_CLASSES",
    "FETCH_ADVICE",
    "celeba_attribute_labels",
    "celeba_dataset",
    "celeba_files",
    "cifar10_dataset",
    "digits_dataset",
    "fashion_mnist_dataset",
    "folder_classes",
    "image_folder_classes",
    "image_folder_dataset",
    "labelled_toy_dataset",
    "load_cifar10_uint8",
    "mnist_dataset",
    "toy_dataset",
]

DIGITS_SIZE = 8  # scikit-learn's digits are 8x8, pixel values 0..16
DIGIT_CLASSES: tuple[str, ...] = numbered_names(10)  # digits and MNIST: label k is digit k
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


# --- 2-D toy points --------------------------------------------------------------------------


def toy_dataset(sampler: Callable[..., Tensor], n_points: int, seed: int = 0) -> TensorSamples:
    """``n_points`` points (n_points, 2) of a :mod:`diffcli.data.toy` sampler, drawn with
    ``seed``; item i is float32 (2,)."""
    return TensorSamples(sampler(n_points, seed=seed))


def labelled_toy_dataset(
    sampler: Callable[..., LabelledPoints], n_points: int, seed: int = 0
) -> LabelledDataset:
    """:func:`toy_dataset` of a labelled sampler (:func:`diffcli.data.toy.labelled_moons`, ...):
    item i is (float32 (2,), int64 label)."""
    points, labels, names = sampler(n_points, seed=seed)
    return LabelledDataset(TensorSamples(points), labels, names)


# --- scikit-learn's digits -------------------------------------------------------------------


def digits_dataset(image_size: int = DIGITS_SIZE) -> LabelledDataset:
    """All 1797 of scikit-learn's 8x8 handwritten digits in memory, float (1797, 1, S, S).

    Pixel values 0..16 map linearly to [-1, 1] (background -1); sizes other than 8 are an
    antialiased bilinear resize (16: upsampled). Item i is (float32 (1, S, S), the digit 0..9).
    """
    from sklearn.datasets import load_digits  # scikit-learn and torchvision load slowly:

    bunch = load_digits()  # only for the data sets that need them
    pixels = torch.from_numpy(bunch.images).reshape(-1, 1, DIGITS_SIZE, DIGITS_SIZE)
    images = pixels.to(torch.float32) * (2.0 / 16.0) - 1.0  # (N, 1, 8, 8) in [-1, 1]
    samples = TensorSamples(resize_images(images, image_size).contiguous())
    return LabelledDataset(samples, torch.from_numpy(bunch.target.astype(np.int64)),
                           DIGIT_CLASSES, source="scikit-learn's digits")


# --- MNIST and Fashion-MNIST -----------------------------------------------------------------


def _idx_dataset(
    root: str | Path | None, split: str, image_size: int | None, download: bool,
    *, label: str, folder: str, classes: tuple[str, ...],
) -> LabelledDataset:
    """An idx dataset in ``<root>/<folder>/raw``, kept as uint8 (N, 1, 28, 28) in memory, with
    the labels of its label file (names ``classes``).

    ``folder`` is also the torchvision class that fetches it (``MNIST``, ``FashionMNIST``).
    """
    check_idx_split(split, label)
    root_path = data_root(root, label, f"{folder}/raw")
    raw = root_path / folder / "raw"
    if download:
        import torchvision.datasets

        fetch = partial(getattr(torchvision.datasets, folder), str(root_path),
                        train=split == "train", download=True)
        run_download(fetch, label, raw, f"{FETCH_ADVICE}, or unpack the idx files there")
    images, labels = read_idx_split(raw, split, label)
    return LabelledDataset(
        UInt8Images(images.unsqueeze(1), image_size), labels, classes,
        source=f"the {label} {split} label file in {raw}",
        fix=f"delete them, then {GET_IT}")


def mnist_dataset(
    root: str | Path | None, split: str = "train", image_size: int | None = None,
    download: bool = False,
) -> LabelledDataset:
    """MNIST digits (train 60,000 / test 10,000) from ``<root>/MNIST/raw``; item i is (float32
    (1, S, S) in [-1, 1], the digit 0..9) (S = 28 unless ``image_size``)."""
    return _idx_dataset(root, split, image_size, download, label="MNIST", folder="MNIST",
                        classes=DIGIT_CLASSES)


def fashion_mnist_dataset(
    root: str | Path | None, split: str = "train", image_size: int | None = None,
    download: bool = False,
) -> LabelledDataset:
    """Fashion-MNIST (train 60,000 / test 10,000) from ``<root>/FashionMNIST/raw``; item i is
    (float32 (1, S, S) in [-1, 1], label 0..9 of :data:`FASHION_MNIST_CLASSES`) (S = 28 unless
    ``image_size``)."""
    return _idx_dataset(root, split, image_size, download, label="Fashion-MNIST",
                        folder="FashionMNIST", classes=FASHION_MNIST_CLASSES)


# --- CIFAR-10 ------------------------------------------------------------------------------


def cifar10_dataset(
    root: str | Path | None, split: str = "train", image_size: int | None = None,
    download: bool = False,
) -> LabelledDataset:
    """CIFAR-10 kept as uint8 (N, 3, 32, 32) in memory; item i is (float32 (3, S, S) in
    [-1, 1], label 0..9 of :data:`CIFAR10_CLASSES`) (S = 32 unless ``image_size``)."""
    images, labels = load_cifar10_uint8(root, split, download)
    folder = data_root(root, "CIFAR-10", CIFAR_DIR) / CIFAR_DIR
    return LabelledDataset(UInt8Images(images, image_size), labels, CIFAR10_CLASSES,
                           source=f"the CIFAR-10 {split} split in {folder}",
                           fix="delete them and unpack cifar-10-python.tar.gz again")


# --- CelebA --------------------------------------------------------------------------------


def celeba_dataset(
    root: str | Path | None, split: str = "train", image_size: int = 64, download: bool = False,
    cache: bool = False, attribute: str | None = None,
) -> Dataset:
    """CelebA faces: the 140x140 center crop of the aligned 178x218 images resized to S x S;
    item i is float32 (3, S, S) in [-1, 1]. ``cache`` decodes all of them into memory now.

    With ``attribute`` (one of the 40 columns of list_attr_celeba.txt, e.g. ``Smiling``) item i
    is (x, label): 1 with the attribute, 0 without (class names "not <attribute>", attribute).
    """
    size = check_image_size(image_size)
    prepare = partial(center_crop_fraction_resize, size=size, fraction=CELEBA_CROP_FRACTION)
    paths = celeba_files(root, split, download)
    labels = None
    if attribute is not None:
        folder = celeba_folder(data_root(root, "CelebA", "celeba/img_align_celeba"))
        labels = celeba_attribute_labels(folder, paths, attribute)
    files = ImageFiles(paths, size, channels=3, prepare=prepare)
    dataset = files.cached() if cache else files
    if labels is None:
        return dataset
    return LabelledDataset(dataset, labels, (f"not {attribute}", attribute))


# --- any folder of images ------------------------------------------------------------------


def folder_classes(root: Path, paths: list[Path]) -> tuple[Tensor, tuple[str, ...]] | None:
    """Labels (N,) int64 and class names of images ``paths`` under ``root`` by first-level
    sub-folder: the names are the sub-folders that hold images, sorted; label = index there.

    None (unlabelled) when an image lies directly in ``root`` or fewer than 2 sub-folders
    hold images.
    """
    firsts = [p.relative_to(root).parts for p in paths]
    if any(len(parts) < 2 for parts in firsts):
        return None
    names = tuple(sorted({parts[0] for parts in firsts}))
    if len(names) < 2:
        return None
    index = {name: k for k, name in enumerate(names)}
    return torch.tensor([index[parts[0]] for parts in firsts], dtype=torch.long), names


def image_folder_classes(root: str | Path) -> tuple[str, ...] | None:
    """The class names of the image folder ``root`` (see :func:`folder_classes`), None when it
    is unlabelled or holds no images."""
    root_path = Path(root).expanduser().resolve()
    classes = folder_classes(root_path, find_images(root_path))
    return None if classes is None else classes[1]


def image_folder_files(root: str | Path | None) -> tuple[Path, list[Path]]:
    """The folder ``root`` resolved and every image under it (recursively), sorted; one line
    when it is not set, not a folder, or holds no image."""
    patterns = ", ".join(f"*{ext}" for ext in IMAGE_EXTENSIONS)
    root_path = data_root(root, "imagefolder",
                          f"the images ({patterns}, searched recursively)", downloadable=False)
    if not root_path.is_dir():
        raise DatasetNotFoundError(f"image folder {root_path} does not exist; "
                                   "set root to a folder of images")
    paths = find_images(root_path)
    if not paths:
        raise DatasetNotFoundError(f"no images found under {root_path} (looked for {patterns}, "
                                   "recursively); set root to a folder of images")
    return root_path, paths


def idx_files(root: str | Path | None, split: str, label: str, folder: str) -> None:
    """The idx files of ``split`` are under ``<root>/<folder>/raw`` (one line otherwise)."""
    idx_split_files(data_root(root, label, f"{folder}/raw") / folder / "raw", split, label)


def image_folder_dataset(
    root: str | Path | None, image_size: int = 32, channels: int = 3, cache: bool = False,
    download: bool = False,
) -> Dataset:
    """Every image under ``root`` (recursively): short side resized to S, center-cropped S x S;
    item i is float32 (C, S, S) in [-1, 1] with C = ``channels`` (1 or 3). There is nothing
    to download: ``download`` true is an error.

    When every image lies in a first-level sub-folder of ``root`` and there are 2 or more such
    folders, item i is (x, label): one class per sub-folder, in sorted order
    (:func:`folder_classes`); otherwise the images are unlabelled."""
    if download:
        raise DiffcliError("an image folder cannot be downloaded: set download to false and "
                           "root to a folder of images")
    root_path, paths = image_folder_files(root)
    classes = folder_classes(root_path, paths)
    files = ImageFiles(paths, check_image_size(image_size), channels=channels)
    dataset = files.cached() if cache else files
    return dataset if classes is None else LabelledDataset(dataset, *classes)
