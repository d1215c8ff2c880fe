"""Class labels: a dataset of bare samples paired with one integer label per sample.

:class:`LabelledDataset` wraps any map-style dataset of bare tensors (the readers of
:mod:`diffcli.data.sources`) and yields ``(x, y)``: ``x`` the wrapped item, ``y`` a 0-dim int64
tensor in ``0..num_classes-1``. It carries ``num_classes`` and ``class_names``, which
:class:`~diffcli.data.datamodule.DiffusionDataModule` exposes; :func:`unlabelled` takes the
wrapper off again (the bare dataset, as callers that want no labels get it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from diffcli.data.vision import sample_shape
from diffcli.errors import DiffcliError

__all__ = ["LabelledDataset", "check_labels", "class_info", "numbered_names", "unlabelled"]


def numbered_names(num_classes: int) -> tuple[str, ...]:
    """Class names "0", "1", ..., str(num_classes - 1)."""
    return tuple(str(k) for k in range(num_classes))


def check_labels(
    labels: Tensor, num_classes: int, n: int, *, source: str = "the dataset",
    fix: str = "check its label data",
) -> Tensor:
    """``labels`` as contiguous int64 (n,) in 0..num_classes-1; one-line error otherwise.

    ``source`` names the data (a file or folder) and ``fix`` says what to do, in errors.
    """
    if not isinstance(labels, Tensor) or labels.shape != (n,):
        shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
        raise DiffcliError(f"{source} has labels of shape {shape} for {n} samples; {fix}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise DiffcliError(f"{source} has {labels.dtype} labels, expected integers; {fix}")
    labels = labels.to(torch.long).contiguous()
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.numel():
        raise DiffcliError(f"{source} has labels outside 0..{num_classes - 1} "
                           f"(e.g. {int(bad[0])}); {fix}")
    return labels


class LabelledDataset(Dataset):
    """Items ``(x, y)``: ``x = dataset[i]`` as is, ``y = labels[i]`` a 0-dim int64 tensor.

    ``class_names[k]`` names class k (at least one name; ``num_classes`` is their number).
    ``source`` and ``fix`` word the error for labels that do not fit (see :func:`check_labels`).
    The wrapped dataset stays reachable as ``dataset``, the labels (N,) as ``labels``.
    """

    def __init__(
        self, dataset: Dataset, labels: Tensor, class_names: Sequence[str], *,
        source: str = "the dataset", fix: str = "check its label data",
    ) -> None:
        names = tuple(str(name) for name in class_names)
        if not names:
            raise DiffcliError(f"{source} has labels but no class names; {fix}")
        self.dataset = dataset
        self.labels = check_labels(labels, len(names), len(dataset), source=source, fix=fix)
        self.class_names: tuple[str, ...] = names

    @property
    def num_classes(self) -> int:
        """Number of classes K (labels are 0..K-1)."""
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        return self.dataset[index], self.labels[index]

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample x, as in the wrapped dataset."""
        return sample_shape(self.dataset)


def unlabelled(dataset: Dataset) -> Dataset:
    """The bare dataset under a :class:`LabelledDataset`; any other dataset as it is."""
    return dataset.dataset if isinstance(dataset, LabelledDataset) else dataset


def class_info(dataset: Dataset) -> tuple[int | None, tuple[str, ...] | None]:
    """``(num_classes, class_names)`` of a dataset that yields ``(x, y)``, else (None, None).

    A dataset is labelled when it has a non-None ``class_names`` attribute (as
    :class:`LabelledDataset` and wrappers of one, e.g. random flips, do).
    """
    names = getattr(dataset, "class_names", None)
    if names is None:
        return None, None
    names = tuple(names)
    return len(names), names


def collate(items: list[Any]) -> Any:
    """torch's default collation, with a tuple ``(x, y)`` (not a list) for ``(x, y)`` items."""
    batch = default_collate(items)
    return tuple(batch) if isinstance(batch, list) else batch


def batch_data(batch: Tensor | tuple | list) -> Tensor:
    """The data tensor of a batch: the batch itself, or its first item ((data, labels))."""
    return batch[0] if isinstance(batch, tuple | list) else batch
