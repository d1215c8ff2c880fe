"""Every dataset by name: one table, one function that builds a dataset, one datamodule factory.

:data:`DATASETS` maps each name (the options of ``conf/dataset/*.yaml``) to a
:class:`DatasetSpec`: the kind of data, the native image size, whether random flips are on by
default, whether it has class labels, and the reader (:mod:`diffcli.data.sources`).
:func:`build_dataset` builds a dataset by name: a map-style Dataset of bare float32 tensors,
(C, S, S) in [-1, 1] for images and (2,) for 2-D points, or with ``labels=True`` of ``(x, y)``
items where the dataset has labels (:data:`LABELLED_DATASETS`, :func:`dataset_has_labels`).
:func:`make_datamodule` wraps the labelled version in a :class:`DiffusionDataModule`; the
dataset configs call it::

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
from typing import TYPE_CHECKING

from torch import Tensor
from torch.utils.data import Dataset

from diffcli.data import captions as text
from diffcli.data import sources, toy
from diffcli.data.celeba import celeba_files
from diffcli.data.cifar import CIFAR_DIR, check_cifar10_files
from diffcli.data.download import data_root
from diffcli.data.labels import unlabelled
from diffcli.data.vision import RandomHorizontalFlip, check_image_size
from diffcli.errors import DiffcliError

if TYPE_CHECKING:
    from diffcli.data.datamodule import DiffusionDataModule

__all__ = [
    "DATASETS", "IMAGE_DATASETS", "LABELLED_DATASETS", "NATIVE_SIZES", "POINT_DATASETS",
    "DatasetOptions", "DatasetSpec", "build_dataset", "dataset_has_labels", "dataset_spec",
    "check_dataset_present", "make_datamodule",
]


@dataclass(frozen=True)
class DatasetOptions:
    """What a reader may use from the dataset config; each reader ignores what it does not need.

    ``image_size`` is already resolved (the native size when the config gives none) for images,
    None for points. ``attribute`` (celeba only) picks the attribute that labels the faces.
    """

    root: str | Path | None = None
    split: str = "train"
    image_size: int | None = None
    n_points: int = 10000
    seed: int = 0
    download: bool = False
    channels: int = 3
    cache: bool = False
    attribute: str | None = None


Reader = Callable[[DatasetOptions], Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    """One row of :data:`DATASETS`.

    ``kind`` is "image" (samples (C, S, S)) or "points" (samples (D,)); ``native_size`` is S
    when the config gives no ``image_size`` (None for points); ``flip_by_default`` is whether
    random horizontal flips are on unless the config says otherwise (off where a mirror image
    changes meaning, as for digits); ``read`` builds the un-augmented dataset (a
    :class:`~diffcli.data.labels.LabelledDataset` where it has labels). ``has_labels`` is
    whether its items have class labels: always (True), never (False), or depending on the
    options (None: celeba's ``attribute``, imagefolder's sub-folders). ``present`` checks,
    without reading them, that the files are there (None: bundled or generated data).
    """

    kind: str
    native_size: int | None
    flip_by_default: bool
    read: Reader
    has_labels: bool | None = False
    present: Callable[[DatasetOptions], object] | None = None  # raises when files are missing


def _toy(sampler: Callable[..., Tensor]) -> Reader:
    """The reader of a :mod:`diffcli.data.toy` sampler: ``n_points`` points drawn with ``seed``."""
    return lambda o: sources.toy_dataset(sampler, o.n_points, seed=o.seed)


def _labelled_toy(sampler: Callable[..., toy.LabelledPoints]) -> Reader:
    """The reader of a labelled :mod:`diffcli.data.toy` sampler (points with labels)."""
    return lambda o: sources.labelled_toy_dataset(sampler, o.n_points, seed=o.seed)


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
    return sources.celeba_dataset(o.root, o.split, _size(o), o.download, o.cache, o.attribute)


def _imagefolder(o: DatasetOptions) -> Dataset:
    return sources.image_folder_dataset(o.root, _size(o), o.channels, o.cache, o.download)


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType({
    "digits": DatasetSpec("image", sources.DIGITS_SIZE, False, _digits, True),
    "mnist": DatasetSpec("image", 28, False, _mnist, True, lambda o: sources.idx_files(
        o.root, o.split, "MNIST", "MNIST")),
    "fashion_mnist": DatasetSpec("image", 28, False, _fashion_mnist, True,
                                 lambda o: sources.idx_files(o.root, o.split, "Fashion-MNIST",
                                                             "FashionMNIST")),
    "cifar10": DatasetSpec("image", 32, True, _cifar10, True, lambda o: check_cifar10_files(
        data_root(o.root, "CIFAR-10", CIFAR_DIR), o.split)),
    "celeba": DatasetSpec("image", 64, True, _celeba, None,
                          lambda o: celeba_files(o.root, o.split)),
    "imagefolder": DatasetSpec("image", 32, True, _imagefolder, None,
                               lambda o: sources.image_folder_files(o.root)),
    "swiss_roll": DatasetSpec("points", None, False, _toy(toy.swiss_roll), False),
    "moons": DatasetSpec("points", None, False, _labelled_toy(toy.labelled_moons), True),
    "gaussian_mixture": DatasetSpec("points", None, False,
                                    _labelled_toy(toy.labelled_gaussian_mixture), True),
})
# Views of the table, for callers that only need names or sizes.
IMAGE_DATASETS: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.kind == "image")
POINT_DATASETS: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.kind == "points")
LABELLED_DATASETS: tuple[str, ...] = tuple(n for n, s in DATASETS.items() if s.has_labels)
NATIVE_SIZES: Mapping[str, int] = MappingProxyType(
    {n: s.native_size for n, s in DATASETS.items() if s.native_size is not None})


def dataset_spec(name: str) -> DatasetSpec:
    """The row of :data:`DATASETS` for ``name``; one-line error listing the names otherwise."""
    spec = DATASETS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise DiffcliError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    return spec


def check_dataset_present(name: str, root: str | Path | None, split: str = "train",
                          download: bool = False) -> None:
    """Dataset ``name``'s files are where ``root`` says (without reading them), so that a run
    is refused before it starts; nothing to check for bundled and generated data, or when
    ``download`` fetches them. One :class:`~diffcli.errors.DatasetNotFoundError` line
    otherwise."""
    spec = dataset_spec(name)
    if spec.present is not None and not download:
        spec.present(DatasetOptions(root=root, split=split))


def dataset_has_labels(
    name: str, root: str | Path | None = None, *, attribute: str | None = None
) -> bool | None:
    """Whether dataset ``name`` has class labels: True / False where the name (and for celeba
    ``attribute``) tells; for imagefolder whether the images under ``root`` are sorted into 2
    or more first-level sub-folders, None when ``root`` is not given or not a folder (it
    depends on files not there)."""
    spec = dataset_spec(name)
    if spec.has_labels is not None:
        return spec.has_labels
    if name == "celeba":
        return attribute is not None
    if root is None or str(root) == "" or not Path(root).expanduser().is_dir():
        return None
    return sources.image_folder_classes(root) is not None


def _check_attribute(name: str, attribute: str | None) -> None:
    """``attribute`` is None or a string, and applies to celeba only; one-line error otherwise."""
    if attribute is None:
        return
    if name != "celeba":
        raise DiffcliError(f"attribute applies to celeba only, not to {name}; "
                           "set attribute to null")
    if not isinstance(attribute, str) or not attribute:
        raise DiffcliError(f"attribute must be a CelebA attribute name such as Smiling, or "
                           f"null, got {attribute!r}")


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
    attribute: str | None = None,
    labels: bool = False,
) -> Dataset:
    """The dataset ``name`` as a map-style Dataset of bare float32 tensors.

    Images: items (C, S, S) in [-1, 1] with S = ``image_size``, or the native size
    (:data:`NATIVE_SIZES`) when None; ``root``, ``split``, ``download`` say where and which
    files (ignored by digits, which are bundled; imagefolder uses every image under ``root``).
    ``channels`` (1 or 3) applies to imagefolder, ``cache`` (decode all images into memory
    now) to celeba and imagefolder, ``attribute`` (e.g. Smiling: 2 classes) to celeba.
    Points: ``n_points`` items (2,) drawn with ``seed``.
    Samples are un-augmented unless ``random_flip`` (images: each mirrored left-right with
    probability 1/2; a datamodule applies its own flips instead).

    With ``labels`` a labelled dataset yields ``(x, y)``, y a 0-dim int64 tensor in
    0..num_classes-1, and has ``num_classes`` and ``class_names``
    (:class:`~diffcli.data.labels.LabelledDataset`); an unlabelled one yields bare x as always.
    """
    spec = dataset_spec(name)
    if random_flip and spec.kind != "image":
        raise DiffcliError(f"random_flip applies to images only, not to {name}'s 2-D points")
    _check_attribute(name, attribute)
    size = None
    if spec.kind == "image":
        size = check_image_size(spec.native_size if image_size is None else image_size)
    options = DatasetOptions(root=root, split=split, image_size=size, n_points=n_points,
                             seed=seed, download=bool(download), channels=channels,
                             cache=bool(cache), attribute=attribute)
    dataset = spec.read(options)
    if not labels:
        dataset = unlabelled(dataset)
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
    attribute: str | None = None,
    caption: str | None = None,
    captions: bool = False,
) -> DiffusionDataModule:
    """The datamodule of dataset ``name``, as the ``conf/dataset/*.yaml`` configs describe it.

    The dataset comes from :func:`build_dataset` (see there for ``root``, ``split``,
    ``image_size``, ``n_points``, ``seed``, ``download``, ``channels``, ``cache`` and
    ``attribute``), with its labels where it has some: the data module then serves ``(x, y)``
    batches and tells ``num_classes`` and ``class_names`` (None for unlabelled data).
    ``batch_size`` is per device. ``random_flip`` None means the dataset's default
    (:attr:`DatasetSpec.flip_by_default`: on for cifar10, celeba and imagefolder). The data
    module's ``data`` holds the samples as one tensor for points and digits.

    ``captions`` (text-to-image training): items ``(x, caption)`` instead, the captions from
    an image folder's ``metadata.jsonl`` or, for a labelled dataset, the template ``caption``
    filled with each item's class (:mod:`diffcli.data.captions`).
    """
    spec = dataset_spec(name)
    flip = spec.flip_by_default if random_flip is None else bool(random_flip)
    if flip and spec.kind != "image":
        raise DiffcliError(f"random_flip applies to images only, not to {name}'s 2-D points")
    dataset = build_dataset(name, root=root, split=split, image_size=image_size,
                            n_points=n_points, seed=seed, download=download, channels=channels,
                            cache=cache, attribute=attribute, labels=True)
    if captions:
        dataset = text.CaptionedDataset(dataset, dataset_captions(name, root, dataset, caption))
    from diffcli.data.datamodule import DiffusionDataModule  # Lightning: only when training

    return DiffusionDataModule(dataset, batch_size, num_workers, random_flip=flip,
                               kind=spec.kind)


def dataset_captions(name: str, root: str | Path | None, dataset: Dataset,
                     template: str | None) -> list[str]:
    """One caption per item of ``dataset`` (built with labels): an image folder's
    ``metadata.jsonl`` when it has one, else the ``template`` filled with each item's class."""
    if name == "imagefolder" and root is not None and \
            (Path(root).expanduser() / text.METADATA_FILE).is_file():
        return text.folder_captions(root)
    names = getattr(dataset, "class_names", None)
    if names is None:
        if name == "imagefolder":
            return text.folder_captions(root or "")
        raise DiffcliError(f"text conditioning needs captions, but dataset={name} has neither "
                           "labels nor captions; use an imagefolder with metadata.jsonl or a "
                           "labelled dataset with dataset.caption=<template>")
    if not template:
        raise DiffcliError(f"text conditioning on dataset={name} needs a caption template: "
                           "dataset.caption='a handwritten digit {word}' ({name} = class name, "
                           "{word} = a number spelled out)")
    return text.template_captions(dataset.labels.tolist(), names, template)
