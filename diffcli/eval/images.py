"""Image sets for FID, all served the same way: batches of uint8 (B, 3, H, W).

Both sides of a comparison are brought to one resolution H x W *before* the extractor, which
then applies its own resize identically to both (Inception: 299 x 299, TF1-compatible).
Grayscale images are repeated to 3 channels, alpha is dropped. Sources:

* :class:`TensorImages` - uint8 images in memory (a ``.npz``, or freshly generated ones).
* :class:`FileImages` - image files decoded as they are (no resize, no crop); one size only.
* :class:`DatasetImages` - a dataset of :func:`diffcli.data.registry.build_dataset`
  (float (C, S, S) in [-1, 1], quantized back to uint8 exactly as generated samples are).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from diffcli.data.vision import IMAGE_EXTENSIONS, ImageFiles, UInt8Images, find_images
from diffcli.diffusion.generate import to_uint8
from diffcli.errors import DiffcliError

NPZ_KEYS = ("images", "arr_0")  # diffcli sample writes "images"; guided-diffusion/EDM "arr_0"


def to_rgb(x: Tensor) -> Tensor:
    """uint8 (B, C, H, W) with C = 1 (repeated), 3, or 4 (alpha dropped) -> (B, 3, H, W)."""
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] not in (1, 3, 4):
        raise DiffcliError(f"expected uint8 images (B, 1|3|4, H, W), got {x.dtype} "
                           f"{tuple(x.shape)}")
    if x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    return x[:, :3].contiguous()


def size_text(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


class ImageSource(Protocol):
    """N images of one size (H, W), served as uint8 (B, 3, H, W) batches."""

    description: str
    size: tuple[int, int]

    def __len__(self) -> int: ...

    def batches(self, batch_size: int) -> Iterator[Tensor]: ...


@dataclass
class TensorImages:
    """uint8 images (N, C, H, W) in memory."""

    images: Tensor
    description: str

    @property
    def size(self) -> tuple[int, int]:
        return (int(self.images.shape[-2]), int(self.images.shape[-1]))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        for start in range(0, len(self), batch_size):
            yield to_rgb(self.images[start:start + batch_size])


def _decode_as_is(path: Path) -> Tensor:
    """One image file as uint8 (3, H, W), not resized."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB") if image.mode != "RGB" else image
            array = np.array(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DiffcliError(f"cannot read image {path} ({str(e).splitlines()[0]})") from None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file, from its header only."""
    try:
        with Image.open(path) as image:
            return (image.height, image.width)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DiffcliError(f"cannot read image {path} ({str(e).splitlines()[0]})") from None


@dataclass
class FileImages:
    """Image files of one size (H, W), decoded as they are, in sorted order."""

    paths: list[Path]
    size: tuple[int, int]
    description: str

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        for start in range(0, len(self), batch_size):
            chunk = self.paths[start:start + batch_size]
            images = [_decode_as_is(p) for p in chunk]
            for path, img in zip(chunk, images, strict=True):
                if tuple(img.shape[-2:]) != self.size:
                    raise DiffcliError(f"{path} is {size_text(tuple(img.shape[-2:]))}, the other "
                                       f"images {size_text(self.size)}; FID needs one size")
            yield torch.stack(images)


class _AsUInt8(Dataset):
    """Item i of a registry dataset as uint8 (C, S, S), by the cheapest route."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor:
        ds = self.dataset
        if isinstance(ds, ImageFiles):
            return ds.load_uint8(index)
        if isinstance(ds, UInt8Images) and tuple(ds.images.shape[-2:]) == (ds.image_size,) * 2:
            return ds.images[index]
        return to_uint8(ds[index])


@dataclass
class DatasetImages:
    """The first ``n`` items of a registry dataset (flips off)."""

    dataset: Dataset
    n: int
    size: tuple[int, int]
    description: str
    num_workers: int = 0

    def __len__(self) -> int:
        return self.n

    def batches(self, batch_size: int) -> Iterator[Tensor]:
        subset = torch.utils.data.Subset(_AsUInt8(self.dataset), range(self.n))
        loader = DataLoader(subset, batch_size=batch_size, shuffle=False,
                            num_workers=self.num_workers)
        for batch in loader:
            yield to_rgb(batch)


# --- opening user inputs -------------------------------------------------------------------


def load_npz_images(path: Path) -> Tensor:
    """The images of a ``.npz`` (key ``images`` or ``arr_0``): uint8 (N, H, W, C) or (N, H, W)
    -> uint8 (N, C, H, W)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            key = next((k for k in NPZ_KEYS if k in data.files), None)
            if key is None:
                raise DiffcliError(f"{path} holds no images (no array named "
                                   f"{' or '.join(NPZ_KEYS)}; found {', '.join(data.files)})")
            array = data[key]
    except (OSError, ValueError) as e:
        raise DiffcliError(f"{path} is not a readable .npz ({str(e).splitlines()[0]})") from None
    if array.ndim == 3:
        array = array[..., None]
    if array.dtype != np.uint8 or array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise DiffcliError(f"{path}: expected uint8 images (N, H, W, C) with C = 1, 3 or 4, got "
                           f"{array.dtype} {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).contiguous()


def _take(n_wanted: int | None, available: int, what: str, key: str) -> int:
    """How many images to use: all, or ``n_wanted`` if there are that many."""
    if n_wanted is None:
        n = available
    elif n_wanted > available:
        raise DiffcliError(f"{what} holds {available} images, fewer than {key}={n_wanted}")
    else:
        n = n_wanted
    if n < 2:
        raise DiffcliError(f"{what}: {n} image(s); FID needs at least 2 per side (a covariance)")
    return n


def open_samples(path: str | Path, n: int | None = None) -> ImageSource:
    """Generated images to evaluate: a ``.npz``, a folder holding one (a `diffcli sample` output
    folder: its samples.npz), or a folder of image files (recursively; one size, used as is).
    The first ``n`` (sorted) are used, or all when ``n`` is None."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / "samples.npz").is_file():
        p = p / "samples.npz"
    if p.is_file():
        if p.suffix != ".npz":
            raise DiffcliError(f"samples={path}: expected a folder of images or a .npz file")
        images = load_npz_images(p)
        k = _take(n, len(images), f"samples={path}", "n")
        return TensorImages(images[:k], f"{k} images of {p}")
    if not p.is_dir():
        raise DiffcliError(f"samples={path}: no such folder or file")
    paths = find_images(p)
    if not paths:
        patterns = ", ".join(f"*{e}" for e in IMAGE_EXTENSIONS)
        raise DiffcliError(f"samples={path}: no images found ({patterns}, searched recursively)")
    k = _take(n, len(paths), f"samples={path}", "n")
    paths = paths[:k]
    sizes = {_image_size(q) for q in paths}
    if len(sizes) > 1:
        shown = ", ".join(size_text(s) for s in sorted(sizes)[:3])
        raise DiffcliError(f"samples={path} holds images of different sizes ({shown}); FID "
                           "compares images of one resolution, so resize them first")
    return FileImages(paths, sizes.pop(), f"{k} images of {p}")


def folder_fingerprint(root: Path) -> dict[str, Any]:
    """What identifies a folder of images for the cache without reading them: its resolved
    path (hashed), file count and newest modification time."""
    paths = find_images(root)
    newest = max((q.stat().st_mtime_ns for q in paths), default=0)
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]
    return {"root": digest, "files": len(paths), "mtime": newest}


def file_fingerprint(path: Path) -> dict[str, Any]:
    """A file's resolved path (hashed), size and modification time."""
    st = path.stat()
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return {"path": digest, "bytes": st.st_size, "mtime": st.st_mtime_ns}


def require_square(size: tuple[int, int], what: str) -> int:
    """S for a square size (S, S); one line saying why otherwise."""
    if size[0] != size[1]:
        raise DiffcliError(f"the samples are {size_text(size)} (not square) but {what} is "
                           "resized to square images; FID cannot compare them at one resolution")
    return size[0]


def open_reference_npz(path: Path, size: tuple[int, int], n: int | None) -> ImageSource:
    """Reference images from a ``.npz``; they must already be H x W (not resized)."""
    images = load_npz_images(path)
    found = (int(images.shape[-2]), int(images.shape[-1]))
    if found != size:
        raise DiffcliError(f"ref={path} holds {size_text(found)} images but the samples are "
                           f"{size_text(size)}; FID needs one resolution: pass ref=<folder> "
                           "(resized on load) or a .npz at the samples' size")
    k = _take(n, len(images), f"ref={path}", "ref_n")
    return TensorImages(images[:k], f"{k} images of {path}")


@dataclass(frozen=True)
class DatasetRef:
    """A named dataset as `diffcli train` reads it (the data registry), at one size."""

    name: str
    root: str | None
    split: str
    image_size: int
    channels: int = 3

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], image_size: int | None = None,
                     split: str | None = None, root: str | None = None) -> DatasetRef:
        """From a dataset config (``conf/dataset/*.yaml`` values, a plain mapping); the
        arguments override its image_size / split / root."""
        from diffcli.data.registry import IMAGE_DATASETS, NATIVE_SIZES

        name = str(cfg.get("name"))
        if name not in IMAGE_DATASETS:
            raise DiffcliError(f"FID needs image data; dataset={name} is not an image dataset "
                               f"(image datasets: {', '.join(IMAGE_DATASETS)})")
        size = image_size or cfg.get("image_size") or NATIVE_SIZES[name]
        got_root = root if root is not None else cfg.get("root")
        return cls(name, None if got_root is None else str(got_root),
                   str(split or cfg.get("split") or "train"), int(size),
                   int(cfg.get("channels") or 3))

    def cache_key(self) -> dict[str, Any]:
        key: dict[str, Any] = {"dataset": self.name, "split": self.split,
                               "resolution": [self.image_size, self.image_size]}
        if self.name == "imagefolder":  # contents depend on the folder, not the name
            root = Path(self.root or "").expanduser()
            key |= {"channels": self.channels} | (folder_fingerprint(root) if root.is_dir()
                                                  else {"root": str(root)})
        return key

    def open(self, n: int | None = None, num_workers: int = 0) -> DatasetImages:
        """Build the dataset (random flips off) and serve its first ``n`` images (all: None)."""
        from diffcli.data.registry import build_dataset

        dataset = build_dataset(self.name, root=self.root, split=self.split,
                                      image_size=self.image_size, download=False,
                                      channels=self.channels, random_flip=False)
        what = f"dataset={self.name} split={self.split}"
        k = _take(n, len(dataset), what, "ref_n")
        size = (self.image_size, self.image_size)
        return DatasetImages(dataset, k, size, f"{k} images of {what} at {size_text(size)}",
                             num_workers)
