"""The idx file format of MNIST and Fashion-MNIST, read from torchvision's ``<Name>/raw`` folders.

A folder holds ``{train,t10k}-images-idx3-ubyte`` and ``{train,t10k}-labels-idx1-ubyte``, each
either as is or gzipped (``.gz``, as distributed). :func:`read_idx_split` returns one split as
stored: uint8 images (N, 28, 28) and int64 labels (N,).
"""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from diffcli.errors import DatasetNotFoundError, DiffcliError, one_line

IDX_FILES: dict[str, tuple[str, str]] = {  # split -> (images, labels), without ".gz"
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
GET_IT = "set download to true to fetch it, or unpack the files there"
_READ_ERRORS = (OSError, EOFError, ValueError, TypeError, AssertionError, KeyError, RuntimeError)


def check_idx_split(split: str, label: str) -> None:
    """Reject a split other than "train" and "test"; ``label`` names the dataset."""
    if split not in IDX_FILES:
        choices = ", ".join(IDX_FILES)
        raise DiffcliError(f"unknown {label} split {split!r}; choose one of: {choices}")


def _find(raw: Path, name: str, split: str, label: str) -> Path:
    """The path of ``name`` or ``name.gz`` under ``raw``; one-line error when neither exists."""
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        f"{label} {split} split not found under {raw}: expected {name}[.gz]; {GET_IT}"
    )


def _read(path: Path, reader: Callable[[str], Tensor]) -> Tensor:
    """Read an idx file with a torchvision reader, gunzipping ``.gz`` files into a temp file."""
    if path.suffix != ".gz":
        return reader(str(path))
    with tempfile.TemporaryDirectory(prefix="diffcli-idx-") as tmp:
        plain = Path(tmp) / path.stem
        with gzip.open(path, "rb") as src:
            plain.write_bytes(src.read())
        return reader(str(plain))


def idx_split_files(raw: Path, split: str, label: str = "MNIST") -> tuple[Path, Path]:
    """The image and label files of ``split`` under ``raw`` (plain or .gz); one line naming
    the folder and the missing file otherwise."""
    check_idx_split(split, label)
    image_name, label_name = IDX_FILES[split]
    return _find(raw, image_name, split, label), _find(raw, label_name, split, label)


def read_idx_split(raw: Path, split: str, label: str = "MNIST") -> tuple[Tensor, Tensor]:
    """One split of an idx folder ``raw``: uint8 images (N, 28, 28) and int64 labels (N,).

    ``label`` ("MNIST", "Fashion-MNIST") names the dataset in errors, which are one line naming
    the folder and the expected file.
    """
    image_path, label_path = idx_split_files(raw, split, label)
    from torchvision.datasets.mnist import read_image_file, read_label_file  # slow to import

    try:
        images = _read(image_path, read_image_file)
        labels = _read(label_path, read_label_file)
    except _READ_ERRORS as err:
        raise DiffcliError(
            f"could not read the {label} {split} idx files in {raw} ({one_line(err)}); "
            f"delete them, then {GET_IT}"
        ) from err
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DiffcliError(
            f"{label} {split} files in {raw} disagree: images of shape {tuple(images.shape)} "
            f"but {labels.shape[0]} labels; delete them, then {GET_IT}"
        )
    return images, labels.to(torch.long)
