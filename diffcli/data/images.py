"""Small grayscale image datasets, returned as float32 tensors scaled to [-1, 1].

* :func:`load_digits_images` - scikit-learn's bundled 8x8 handwritten digits (no download).
* :func:`load_mnist_images` - MNIST read straight from torchvision's ``MNIST/raw`` idx files.
* :func:`read_idx_split` - the idx reader shared with Fashion-MNIST (:mod:`diffcli.data.vision`).

No augmentation (in particular no flips: a mirrored digit is not a digit).
"""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import Tensor
from torchvision.datasets.mnist import read_image_file, read_label_file

from diffcli.errors import DatasetNotFoundError, DiffcliError

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DOWNLOAD_HINT = "download it with `diffcli train dataset=mnist dataset.download=true`"


def _one_line(err: BaseException) -> str:
    """An exception's message collapsed onto a single line."""
    return " ".join(str(err).split()) or type(err).__name__


def _to_unit_range(images: Tensor, max_value: float) -> Tensor:
    """Map pixel values in [0, max_value] to float32 in [-1, 1]; same shape."""
    return images.to(torch.float32) * (2.0 / max_value) - 1.0


def _resize(images: Tensor, image_size: int) -> Tensor:
    """Bilinear (antialiased) resize of (N, C, H, W) images to (N, C, S, S), kept in [-1, 1]."""
    if image_size < 1:
        raise DiffcliError(f"image_size must be a positive integer, got {image_size}")
    if tuple(images.shape[-2:]) == (image_size, image_size):
        return images
    out = F.interpolate(
        images, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
    )
    return out.clamp_(-1.0, 1.0)


def load_digits_images(image_size: int = 16) -> tuple[Tensor, Tensor]:
    """All 1797 of scikit-learn's 8x8 handwritten digits, upsampled to ``image_size``.

    Pixel values 0..16 are mapped linearly to [-1, 1] (background is -1).

    Returns:
        images: float32, shape (1797, 1, image_size, image_size), values in [-1, 1].
        labels: int64, shape (1797,), values 0..9.
    """
    bunch = load_digits()
    pixels = torch.from_numpy(bunch.images).reshape(-1, 1, 8, 8)  # (N, 1, 8, 8), 0..16
    images = _resize(_to_unit_range(pixels, 16.0), image_size)  # (N, 1, S, S)
    labels = torch.from_numpy(bunch.target).to(torch.long)  # (N,)
    return images.contiguous(), labels


def _find_idx_file(raw: Path, name: str, split: str, label: str, hint: str) -> Path:
    """The path of ``name`` or ``name.gz`` under ``raw``; one-line error when neither exists."""
    for candidate in (raw / name, raw / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DatasetNotFoundError(
        f"{label} {split} split not found under {raw} (expected {name}[.gz]); "
        f"{hint} or copy the idx files there"
    )


def _read_idx(path: Path, reader: Callable[[str], Tensor]) -> Tensor:
    """Read an idx file with a torchvision reader, gunzipping ``.gz`` files into a temp file."""
    if path.suffix != ".gz":
        return reader(str(path))
    with tempfile.TemporaryDirectory(prefix="diffcli-idx-") as tmp:
        plain = Path(tmp) / path.stem
        with gzip.open(path, "rb") as src:
            plain.write_bytes(src.read())
        return reader(str(plain))


def read_idx_split(
    raw: Path, split: str, label: str = "MNIST", hint: str = DOWNLOAD_HINT
) -> tuple[Tensor, Tensor]:
    """Raw uint8 images (N, 28, 28) and int64 labels (N,) of one split of an MNIST-format folder.

    ``raw`` holds torchvision's ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` files
    (MNIST and Fashion-MNIST share the format); ``label`` and ``hint`` word the errors.
    """
    if split not in MNIST_FILES:
        raise DiffcliError(f"unknown {label} split {split!r}; choose one of: train, test")
    image_name, label_name = MNIST_FILES[split]
    image_path = _find_idx_file(raw, image_name, split, label, hint)
    label_path = _find_idx_file(raw, label_name, split, label, hint)
    try:
        images = _read_idx(image_path, read_image_file)
        labels = _read_idx(label_path, read_label_file)
    except (OSError, EOFError, ValueError, TypeError, AssertionError, KeyError,
            RuntimeError) as err:
        raise DiffcliError(
            f"could not read {label} {split} idx files in {raw} ({_one_line(err)}); "
            f"delete them and {hint}"
        ) from err
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise DiffcliError(
            f"{label} {split} files in {raw} disagree: images of shape {tuple(images.shape)} "
            f"but {labels.shape[0]} labels; delete them and {hint}"
        )
    return images, labels.to(torch.long)


def _download_mnist(root: Path, split: str) -> None:
    """Fetch MNIST into ``root/MNIST/raw`` with torchvision; one-line error on failure."""
    from torchvision.datasets import MNIST

    try:
        MNIST(str(root), train=(split == "train"), download=True)
    except Exception as err:  # network, disk and checksum errors all surface the same way
        raise DatasetNotFoundError(
            f"could not download MNIST into {root / 'MNIST' / 'raw'} ({_one_line(err)}); "
            "check your internet connection or copy the idx files there"
        ) from err


def load_mnist_uint8(
    root: str | Path, split: str = "test", download: bool = False
) -> tuple[Tensor, Tensor]:
    """MNIST as stored: uint8 images (N, 28, 28) in 0..255 and int64 labels (N,)."""
    if split not in MNIST_FILES:
        raise DiffcliError(f"unknown MNIST split {split!r}; choose one of: train, test")
    root_path = Path(root).expanduser().resolve()
    if download:
        _download_mnist(root_path, split)
    return read_idx_split(root_path / "MNIST" / "raw", split)


def load_mnist_images(
    root: str | Path,
    split: str = "test",
    image_size: int = 28,
    download: bool = False,
) -> tuple[Tensor, Tensor]:
    """MNIST digits read from ``<root>/MNIST/raw`` (gunzipped or ``.gz`` idx files).

    ``split`` is ``"train"`` (60,000 images) or ``"test"`` (10,000 images). Pixel values 0..255
    are mapped linearly to [-1, 1]; images are resized bilinearly when ``image_size != 28``.
    With ``download=True`` torchvision fetches the files first (needs internet).

    Returns:
        images: float32, shape (N, 1, image_size, image_size), values in [-1, 1].
        labels: int64, shape (N,), values 0..9.
    """
    raw_images, labels = load_mnist_uint8(root, split=split, download=download)
    images = _to_unit_range(raw_images.unsqueeze(1), 255.0)  # (N, 1, 28, 28)
    return _resize(images, image_size).contiguous(), labels
