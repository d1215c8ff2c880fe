"""Every dataset by name: one table, one function that builds a dataset, one datamodule factory.

:data:`DATASETS` maps each name (the options of ``conf/dataset/*.yaml``) to a
:class:`DatasetSpec`: the kind of data, the native image size, whether random flips are on by
default, and the reader (:mod:`diffcli.data.sources`). :func:`build_dataset` builds a dataset by
name: a map-style Dataset of bare float32 tensors, (C, S, S) in [-1, 1] for images and (2,) for
2-D points. :func:`make_datamodule` wraps it in a :class:`DiffusionDataModule`; the dataset
configs call it::

    _target_: diffcli.data.registry.make_datamodule
    name: cifar10
    root: data
    batch_size: 128
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from torch import Tensor
from torch.utils.data import Dataset

from diffcli.data import sources, toy
from diffcli.data.datamodule import DiffusionDataModule
from diffcli.data.vision import RandomHorizontalFlip, check_image_size
from diffcli.errors import DiffcliError

__all__ = [
    "DATASETS", "IMAGE_DATASETS", "NATIVE_SIZES", "POINT_DATASETS", "DatasetOptions",
    "DatasetSpec", "build_dataset", "dataset_spec", "make_datamodule",
]


@dataclass(frozen=True)
class DatasetOptions:
    """What a reader may use from the dataset config; each reader ignores what it does not need.

    ``image_size`` is already resolved (the native size when the config gives none) for images,
    None for points.
    """

    root: str | Path | None = None
    split: str = "train"
    image_size: int | None = None
    n_points: int = 10000
    seed: int = 0
    download: bool = False
    channels: int = 3
    cache: bool = False


Reader = Callable[[DatasetOptions], Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    """One row of :data:`DATASETS`.

    ``kind`` is "image" (samples (C, S, S)) or "points" (samples (D,)); ``native_size`` is S
    when the config gives no ``image_size`` (None for points); ``flip_by_default`` is whether
    random horizontal flips are on unless the config says otherwise (off where a mirror image
    changes meaning, as for digits); ``read`` builds the un-augmented dataset.
    """

    kind: str
    native_size: int | None
    flip_by_default: bool
    read: Reader


def _toy(sampler: Callable[..., Tensor]) -> Reader:
    """The reader of a :mod:`diffcli.data.toy` sampler: ``n_points`` points drawn with ``seed``."""
    return lambda o: sources.toy_dataset(sampler, o.n_points, seed=o.seed)


def _size(o: DatasetOptions) -> int:
    """The image size S, which :func:`build_dataset` resolves for every image dataset."""
    assert o.image_size is not None, "build_dataset resolves image_size for images"
    return o.image_size


def _digits(o: DatasetOptions) -> Dataset:
    return sources.digits_dataset(_size(o))


def _mnist(o: DatasetOptions) -> Dataset:
    return sources.mnist_dataset(o.root, o.split, o.image_size, o.download)


def _fashion_mnist(o: DatasetOptions) -> Dataset:
    return sources.fashion_mnist_dataset(o.root, o.split, o.image_size, o.download)


def _cifar10(o: DatasetOptions) -> Dataset:
    return sources.cifar10_dataset(o.root, o.split, o.image_size, o.download)


def _celeba(o: DatasetOptions) -> Dataset:
    return sources.celeba_dataset(o.root, o.split, _size(o), o.download, o.cache)


def _imagefolder(o: DatasetOptions) -> Dataset:
    return sources.image_folder_dataset(o.root, _size(o), o.channels, o.cache, o.download)


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({
    "digits": DatasetSpec("image", sources.DIGITS_SIZE, False, _digits),
    "mnist": DatasetSpec("image", 28, False, _mnist),
    "fashion_mnist": DatasetSpec("image", 28, False, _fashion_mnist),
    "cifar10": DatasetSpec("image", 32, True, _cifar10),
    "celeba": DatasetSpec("image", 64, True, _celeba),
    "imagefolder": DatasetSpec("image", 32, True, _imagefolder),
    "swiss_roll": DatasetSpec("points", None, False, _toy(toy.swiss_roll)),
    "moons": DatasetSpec("points", None, False, _toy(toy.moons)),
    "gaussian_mixture": DatasetSpec("points", None, False, _toy(toy.gaussian_mixture)),
})
# Views of the table, for callers that only need names or sizes.
IMAGE_DATASETS: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.kind == "image")
POINT_DATASETS: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.kind == "points")
NATIVE_SIZES: Mapping[str, int] = MappingProxyType(
    {n: s.native_size for n, s in DATASETS.items() if s.native_size is not None})


def dataset_spec(name: str) -> DatasetSpec:
    """The row of :data:`DATASETS` for ``name``; one-line error listing the names otherwise."""
    spec = DATASETS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise DiffcliError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return spec


def build_dataset(
    name: str,
    *,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    n_points: int = 10000,
    seed: int = 0,
    download: bool = False,
    channels: int = 3,
    cache: bool = False,
    random_flip: bool = False,
) -> Dataset:
    """The dataset ``name`` as a map-style Dataset of bare float32 tensors.

    Images: items (C, S, S) in [-1, 1] with S = ``image_size``, or the native size
    (:data:`NATIVE_SIZES`) when None; ``root``, ``split``, ``download`` say where and which
    files (ignored by digits, which are bundled; imagefolder uses every image under ``root``).
    ``channels`` (1 or 3) applies to imagefolder, ``cache`` (decode all images into memory
    now) to celeba and imagefolder. Points: ``n_points`` items (2,) drawn with ``seed``.
    Samples are un-augmented unless ``random_flip`` (images: each mirrored left-right with
    probability 1/2; a datamodule applies its own flips instead).
    """
    spec = dataset_spec(name)
    if random_flip and spec.kind != "image":
        raise DiffcliError(f"random_flip applies to images only, not to {name}'s 2-D points")
    size = None
    if spec.kind == "image":
        size = check_image_size(spec.native_size if image_size is None else image_size)
    options = DatasetOptions(root=root, split=split, image_size=size, n_points=n_points,
                             seed=seed, download=bool(download), channels=channels,
                             cache=bool(cache))
    dataset = spec.read(options)
    return RandomHorizontalFlip(dataset) if random_flip else dataset


def make_datamodule(
    name: str,
    batch_size: int = 128,
    num_workers: int = 0,
    root: str | Path | None = None,
    split: str = "train",
    image_size: int | None = None,
    n_points: int = 10000,
    seed: int = 0,
    download: bool = False,
    random_flip: bool | None = None,
    channels: int = 3,
    cache: bool = False,
) -> DiffusionDataModule:
    """The datamodule of dataset ``name``, as the ``conf/dataset/*.yaml`` configs describe it.

    The dataset comes from :func:`build_dataset` (see there for ``root``, ``split``,
    ``image_size``, ``n_points``, ``seed``, ``download``, ``channels`` and ``cache``).
    ``batch_size`` is per device. ``random_flip`` None means the dataset's default
    (:attr:`DatasetSpec.flip_by_default`: on for cifar10, celeba and imagefolder). The data
    module's ``data`` holds the samples as one tensor for points and digits.
    """
    spec = dataset_spec(name)
    flip = spec.flip_by_default if random_flip is None else bool(random_flip)
    if flip and spec.kind != "image":
        raise DiffcliError(f"random_flip applies to images only, not to {name}'s 2-D points")
    dataset = build_dataset(name, root=root, split=split, image_size=image_size,
                            n_points=n_points, seed=seed, download=download, channels=channels,
                            cache=cache)
    return DiffusionDataModule(dataset, batch_size, num_workers, random_flip=flip,
                               kind=spec.kind)
