"""The aligned CelebA faces (Liu et al. 2015), found under ``<root>/celeba`` or ``<root>``.

The folder holds ``img_align_celeba/*.jpg`` (202,599 aligned 178x218 faces; Kaggle's zip nests
that folder once more), ``list_eval_partition.txt`` (file name -> split 0 / 1 / 2 = train /
valid / test) and, for labels, ``list_attr_celeba.txt`` (an image count, a line of the 40
attribute names, then per image its name and 40 values 1 / -1); Kaggle's ``.csv`` copies of
both tables are read too. :func:`celeba_files` lists the images of a split and
:func:`celeba_attribute_labels` reads one attribute as 0 / 1 labels;
:func:`~diffcli.data.sources.celeba_dataset` makes the dataset of them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from diffcli.data.download import data_root, run_download
from diffcli.errors import DatasetNotFoundError, DiffcliError

__all__ = ["CELEBA_ATTRIBUTE_FILES", "CELEBA_CROP_FRACTION", "CELEBA_PARTITION_FILES",
           "CELEBA_SPLITS", "CELEBA_URL", "celeba_attribute_labels", "celeba_files",
           "celeba_folder"]

CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"
CELEBA_SPLITS: dict[str, int | None] = {"train": 0, "valid": 1, "test": 2, "all": None}
CELEBA_CROP_FRACTION = 140 / 178  # a 140x140 center crop of the 178x218 aligned faces
CELEBA_PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")
CELEBA_ATTRIBUTE_FILES = ("list_attr_celeba.txt", "list_attr_celeba.csv")


def celeba_folder(root: Path) -> Path:
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
    root_path = data_root(root, "CelebA", "celeba/img_align_celeba")
    if download:
        import torchvision.datasets

        fetch = partial(torchvision.datasets.CelebA, str(root_path), split="all",
                        target_type=[], download=True)
        run_download(fetch, "CelebA", root_path / "celeba", "torchvision fetches it from Google "
                  f"Drive, which often refuses (quota); {_celeba_get_it(root_path / 'celeba')}")
    folder = celeba_folder(root_path)
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
