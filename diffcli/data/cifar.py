"""The python pickles of CIFAR-10, read from ``<root>/cifar-10-batches-py``.

The folder of ``cifar-10-python.tar.gz`` (Krizhevsky 2009) holds ``data_batch_1`` ..
``data_batch_5`` (the 50,000 training images) and ``test_batch`` (10,000), each a pickled dict
of ``data`` uint8 (N, 3072) and ``labels`` (N,). They are unpickled with an allowlist of plain
containers and numpy arrays, so a data file cannot run code. :func:`load_cifar10_uint8` returns
one split as stored: uint8 images (N, 3, 32, 32) and int64 labels (N,);
:func:`~diffcli.data.sources.cifar10_dataset` makes the dataset of them.
"""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcli.data.download import FETCH_ADVICE, data_root, run_download, short_reason
from diffcli.errors import DatasetNotFoundError, DiffcliError

__all__ = ["CIFAR_DIR", "CIFAR_FILES", "CIFAR_URL", "load_cifar10_uint8"]

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


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
        raise DiffcliError(f"could not read CIFAR-10 batch {path} ({short_reason(err)}); "
                           "delete it and unpack cifar-10-python.tar.gz again") from err
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DiffcliError(f"CIFAR-10 batch {path} holds data of shape {data.shape} and "
                           f"{labels.size} labels; expected (N, 3072) and N labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def _unpack(root: Path) -> str:
    return f"unpack cifar-10-python.tar.gz from {CIFAR_URL} into {root}"


def check_cifar10_files(root: Path, split: str) -> None:
    """One line naming the missing batch files of ``split`` under ``root``/cifar-10-batches-py."""
    if split not in CIFAR_FILES:
        raise DiffcliError(f"unknown cifar10 split {split!r}; choose one of: train, test")
    folder = root / CIFAR_DIR
    missing = [name for name in CIFAR_FILES[split] if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-10 {split} split not found under {folder} (missing {', '.join(missing)}); "
            f"set download to true to fetch it, or {_unpack(root)}"
        )


def load_cifar10_uint8(
    root: str | Path | None, split: str = "train", download: bool = False
) -> tuple[Tensor, Tensor]:
    """CIFAR-10 from ``<root>/cifar-10-batches-py``: uint8 (N, 3, 32, 32) and int64 labels (N,).

    ``split="train"`` reads data_batch_1..5 (50,000 images), ``"test"`` test_batch (10,000).
    """
    if split not in CIFAR_FILES:
        raise DiffcliError(f"unknown cifar10 split {split!r}; choose one of: train, test")
    root_path = data_root(root, "CIFAR-10", CIFAR_DIR)
    folder = root_path / CIFAR_DIR
    unpack = _unpack(root_path)
    if download:
        import torchvision.datasets

        fetch = partial(torchvision.datasets.CIFAR10, str(root_path), train=split == "train",
                        download=True)
        run_download(fetch, "CIFAR-10", folder, f"{FETCH_ADVICE}, or {unpack}")
    check_cifar10_files(root_path, split)
    parts = [_read_cifar_batch(folder / name) for name in CIFAR_FILES[split]]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
