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
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from diffcli.data.idx import GET_IT, check_idx_split, read_idx_split
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
CELEBA_ATTRIBUTE_FILES = ("list_attr_celeba.txt", "list_attr_celeba.csv")
DIGIT_CLASSES: tuple[str, ...] = numbered_names(10)  # digits and MNIST: label k is digit k
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
    "Ankle boot",
)
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
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
    root_path = _root_path(root, label, f"{folder}/raw")
    raw = root_path / folder / "raw"
    if download:
        import torchvision.datasets

        fetch = partial(getattr(torchvision.datasets, folder), str(root_path),
                        train=split == "train", download=True)
        _download(fetch, label, raw, f"{FETCH_ADVICE}, or unpack the idx files there")
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
        import torchvision.datasets

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
) -> LabelledDataset:
    """CIFAR-10 kept as uint8 (N, 3, 32, 32) in memory; item i is (float32 (3, S, S) in
    [-1, 1], label 0..9 of :data:`CIFAR10_CLASSES`) (S = 32 unless ``image_size``)."""
    images, labels = load_cifar10_uint8(root, split, download)
    folder = _root_path(root, "CIFAR-10", CIFAR_DIR) / CIFAR_DIR
    return LabelledDataset(UInt8Images(images, image_size), labels, CIFAR10_CLASSES,
                           source=f"the CIFAR-10 {split} split in {folder}",
                           fix="delete them and unpack cifar-10-python.tar.gz again")


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
        import torchvision.datasets

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


def _celeba_attribute_file(folder: Path, attribute: str) -> Path:
    """list_attr_celeba.txt (or Kaggle's .csv) in ``folder``; one-line error when absent."""
    for name in CELEBA_ATTRIBUTE_FILES:
        if (folder / name).is_file():
            return folder / name
    raise DatasetNotFoundError(
        f"CelebA attribute file {folder / CELEBA_ATTRIBUTE_FILES[0]} not found (needed for "
        f"attribute {attribute}); download Anno/list_attr_celeba.txt from the official page "
        f"{CELEBA_URL} into {folder}, or set attribute to null"
    )


def _celeba_attribute_header(
    path: Path, rows: Iterator[list[str]], attribute: str
) -> tuple[int, int]:
    """The column of ``attribute`` (1 = the first after the file name) and the number of fields
    of a row, from the header rows at the start of ``rows``: the .txt's image count and line of
    the 40 attribute names, or the .csv's ``image_id,<names>``. An unknown ``attribute`` is one
    line listing the names."""
    header = next(rows, None)
    if header is not None and len(header) == 1 and header[0].isdigit():
        header = next(rows, None)  # the .txt's image count
    if header is None:
        raise DiffcliError(f"CelebA attribute file {path} is empty; download it again")
    names = header[1:] if header[0] == "image_id" else header
    if attribute not in names:
        raise DiffcliError(f"unknown celeba attribute {attribute!r} (not in {path}); set "
                           f"attribute to one of: {', '.join(names)}")
    return names.index(attribute) + 1, len(names) + 1


def _celeba_attribute_column(path: Path, attribute: str) -> dict[str, str]:
    """File name -> the value ("1" / "-1") of ``attribute`` in a CelebA attribute table
    (list_attr_celeba.txt, or Kaggle's .csv); one-line errors for a malformed table."""
    with path.open() as f:
        rows = (fields for line in f if (fields := line.replace(",", " ").split()))
        column, width = _celeba_attribute_header(path, rows, attribute)
        table = {}
        for fields in rows:
            if len(fields) != width:
                raise DiffcliError(f"CelebA attribute file {path}: the line of {fields[0]} has "
                                   f"{len(fields)} fields, expected {width}; download it again")
            table[fields[0]] = fields[column]
    return table


def celeba_attribute_labels(folder: Path, files: list[Path], attribute: str) -> Tensor:
    """Labels (N,) int64 of ``files`` by ``attribute`` in ``<folder>/list_attr_celeba.txt``:
    1 where the attribute is present (value 1), 0 where it is absent (value -1)."""
    path = _celeba_attribute_file(folder, attribute)
    table = _celeba_attribute_column(path, attribute)
    missing = [f.name for f in files if f.name not in table]
    if missing:
        raise DiffcliError(f"CelebA attribute file {path} lists no values for {len(missing)} "
                           f"of {len(files)} images (e.g. {missing[0]}); download it again")
    values = [table[f.name] for f in files]
    odd = next((v for v in values if v not in ("1", "-1")), None)
    if odd is not None:
        raise DiffcliError(f"CelebA attribute file {path} holds {attribute} value {odd!r}; "
                           "expected 1 or -1: download it again")
    return torch.tensor([v == "1" for v in values], dtype=torch.long)


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
        folder = _celeba_folder(_root_path(root, "CelebA", "celeba/img_align_celeba"))
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
    classes = folder_classes(root_path, paths)
    files = ImageFiles(paths, check_image_size(image_size), channels=channels)
    dataset = files.cached() if cache else files
    return dataset if classes is None else LabelledDataset(dataset, *classes)
