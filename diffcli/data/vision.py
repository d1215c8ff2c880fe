"""Map-style image datasets that decode on access, and the image transforms they share.

Every dataset here yields bare float32 tensors (C, S, S) with values in [-1, 1] (labels are
added by :class:`diffcli.data.labels.LabelledDataset`):

* :class:`TensorSamples` - an in-memory float tensor (N, *S), indexed sample by sample.
* :class:`UInt8Images` - uint8 images (N, C, H, W) kept in memory (4x smaller than float32),
  converted (and resized) one sample at a time.
* :class:`ImageFiles` - image files decoded lazily with PIL in ``__getitem__``.
* :class:`RandomHorizontalFlip` - wraps any of them and mirrors each sample with probability 1/2,
  drawing from torch's default generator (``L.seed_everything`` makes it reproducible, also in
  DataLoader workers, which torch seeds from that generator); of ``(x, y)`` items it mirrors x
  and keeps the label y.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import Dataset

from diffcli.errors import DiffcliError, one_line

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
RESAMPLE = Image.Resampling.BICUBIC
EXIF_ORIENTATION = 0x0112


def uint8_to_unit(images: Tensor) -> Tensor:
    """Map uint8 pixels 0..255 to float32 in [-1, 1] (0 -> -1, 255 -> 1); same shape."""
    return images.to(torch.float32).mul_(2.0 / 255.0).sub_(1.0)


def check_image_size(image_size: int) -> int:
    """``image_size`` as a positive int; one-line error otherwise."""
    if isinstance(image_size, bool) or int(image_size) != image_size or image_size < 1:
        raise DiffcliError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)


def resize_images(images: Tensor, image_size: int) -> Tensor:
    """Antialiased bilinear resize of float (N, C, H, W) in [-1, 1] to (N, C, S, S), clamped.

    Returns ``images`` itself when they already are S x S.
    """
    size = check_image_size(image_size)
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False,
                        antialias=True)
    return out.clamp_(-1.0, 1.0)


class TensorSamples(Dataset):
    """Index a tensor (N, *S) sample by sample, yielding bare tensors (*S) rather than tuples."""

    def __init__(self, data: Tensor) -> None:
        self.data = data

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        return self.data[index]

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample (*S)."""
        return tuple(self.data.shape[1:])


class UInt8Images(Dataset):
    """uint8 images (N, C, H, W) in memory; item i is float32 (C, S, S) in [-1, 1].

    ``image_size`` S defaults to the stored size; other sizes are an antialiased bilinear resize
    of each sample (square inputs only, as for MNIST and CIFAR-10).
    """

    def __init__(self, images: Tensor, image_size: int | None = None) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] == 0:
            raise DiffcliError(
                f"expected non-empty uint8 images (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        self.images = images.contiguous()
        self.image_size = images.shape[-1] if image_size is None else check_image_size(image_size)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> Tensor:
        x = uint8_to_unit(self.images[index])  # (C, H, W)
        if tuple(x.shape[-2:]) == (self.image_size, self.image_size):
            return x
        return resize_images(x.unsqueeze(0), self.image_size)[0]  # (C, S, S)

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(C, S, S)."""
        return (self.images.shape[1], self.image_size, self.image_size)


class Prepare(Protocol):
    """Turns a decoded PIL image into the final S x S picture (crop and resize)."""

    def __call__(self, image: Image.Image, mode: str) -> Image.Image: ...


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Convert to "RGB" or "L"; palette images go through RGBA, 16-bit grayscale is rescaled."""
    if image.mode == "P":
        image = image.convert("RGBA")
    elif image.mode.startswith("I;16"):
        image = image.convert("I").point(lambda v: v * (1 / 256))
    return image if image.mode == mode else image.convert(mode)


def _center_crop(image: Image.Image, width: int, height: int) -> Image.Image:
    """The central ``width`` x ``height`` window of ``image``."""
    left = (image.width - width) // 2
    top = (image.height - height) // 2
    return image.crop((left, top, left + width, top + height))


def resize_short_side_center_crop(image: Image.Image, mode: str, size: int) -> Image.Image:
    """Scale so the short side is ``size`` (bicubic), then take the central size x size square.

    JPEGs much larger than needed are first decoded at a reduced scale (``Image.draft``).
    """
    short = min(image.width, image.height)
    width = max(size, math.ceil(image.width * size / short))
    height = max(size, math.ceil(image.height * size / short))
    if image.format == "JPEG":
        image.draft(mode, (width, height))
    image = _to_mode(image, mode)
    if (image.width, image.height) != (width, height):
        image = image.resize((width, height), RESAMPLE)
    return _center_crop(image, size, size)


def center_crop_fraction_resize(
    image: Image.Image, mode: str, size: int, fraction: float
) -> Image.Image:
    """Take the central square of side ``round(fraction * short side)``, resize it to ``size``."""
    side = max(1, round(fraction * min(image.width, image.height)))
    image = _center_crop(_to_mode(image, mode), side, side)
    return image if side == size else image.resize((size, size), RESAMPLE)


def decode_image(path: Path, channels: int, prepare: Prepare) -> Tensor:
    """Decode ``path`` with PIL into uint8 (C, S, S); one-line error for an unreadable file."""
    mode = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as image:
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:  # camera photo stored rotated
                image = ImageOps.exif_transpose(image)
            image = prepare(image, mode)
            array = np.array(image, dtype=np.uint8)  # (S, S) or (S, S, 3)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DiffcliError(f"cannot read image {path} ({one_line(err)}); fix or remove it") from err
    pixels = torch.from_numpy(array)
    return pixels.unsqueeze(0) if pixels.ndim == 2 else pixels.permute(2, 0, 1).contiguous()


class ImageFiles(Dataset):
    """Image files decoded lazily with PIL; item i is float32 (C, S, S) in [-1, 1].

    ``prepare(image, mode)`` crops and resizes a decoded image to S x S (see
    :func:`resize_short_side_center_crop`); it must be picklable for DataLoader workers
    (a module-level function or a :func:`functools.partial` of one).
    """

    def __init__(
        self, paths: Sequence[Path], image_size: int, channels: int = 3,
        prepare: Prepare | None = None,
    ) -> None:
        if channels not in (1, 3):
            raise DiffcliError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        if not paths:
            raise DiffcliError("no image files given")
        self.paths = list(paths)
        self.image_size = check_image_size(image_size)
        self.channels = channels
        self.prepare = prepare or partial(resize_short_side_center_crop, size=self.image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def load_uint8(self, index: int) -> Tensor:
        """The decoded image ``index`` as uint8 (C, S, S)."""
        return decode_image(self.paths[index], self.channels, self.prepare)

    def __getitem__(self, index: int) -> Tensor:
        return uint8_to_unit(self.load_uint8(index))

    @property
    def data_shape(self) -> tuple[int, int, int]:
        """(C, S, S)."""
        return (self.channels, self.image_size, self.image_size)

    def cached(self) -> UInt8Images:
        """Decode every file now into one uint8 tensor (N, C, S, S) kept in memory."""
        images = torch.empty((len(self), *self.data_shape), dtype=torch.uint8)
        for i in range(len(self)):
            images[i] = self.load_uint8(i)
        return UInt8Images(images)


def find_images(root: Path) -> list[Path]:
    """Image files under ``root``, recursively (symlinks followed, hidden entries skipped), sorted.

    Matches :data:`IMAGE_EXTENSIONS` case-insensitively. A folder reached twice (a symlink
    loop, or two links to one folder) is read once, where the walk (in sorted order) meets it
    first.
    """
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # sorted: a fixed walk order
        found.extend(
            Path(folder) / name for name in files
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)
        )
    return sorted(found)


class RandomHorizontalFlip(Dataset):
    """Mirror each sample (..., H, W) of ``dataset`` left-right with probability ``p``.

    Items ``(x, y)`` of a labelled dataset come back as ``(mirrored x, y)``. The coin comes from
    torch's default generator (one draw per item), so ``torch.manual_seed`` /
    ``L.seed_everything`` make the flips reproducible (DataLoader workers are seeded from it).
    ``num_classes`` and ``class_names`` are those of the wrapped dataset (None if it has none).
    """

    def __init__(self, dataset: Dataset, p: float = 0.5) -> None:
        self.dataset = dataset
        self.p = p

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Tensor | tuple[Tensor, ...]:
        item = self.dataset[index]
        if torch.rand(()).item() >= self.p:
            return item
        if isinstance(item, tuple):
            return (item[0].flip(-1), *item[1:])
        return item.flip(-1)

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample, as in the wrapped dataset."""
        return sample_shape(self.dataset)

    @property
    def num_classes(self) -> int | None:
        """Number of classes of the wrapped dataset, None when it is unlabelled."""
        return getattr(self.dataset, "num_classes", None)

    @property
    def class_names(self) -> tuple[str, ...] | None:
        """Class names of the wrapped dataset, None when it is unlabelled."""
        return getattr(self.dataset, "class_names", None)


def sample_shape(dataset: Dataset) -> tuple[int, ...]:
    """Shape of one sample: the dataset's ``data_shape`` if it has one, else that of item 0
    (of its x, for ``(x, y)`` items)."""
    shape = getattr(dataset, "data_shape", None)
    if shape is not None:
        return tuple(shape)
    item = dataset[0]
    return tuple((item[0] if isinstance(item, tuple | list) else item).shape)
