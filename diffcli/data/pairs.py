"""Coupled data: each sample with the noise it is paired with (reflow's (z, x) pairs).

Rectified flow's reflow (Liu et al. 2023, Sec. 2.2 / 3) trains a new flow on pairs (z, x) with
x = ODE(z) from a trained flow: the coupling, not independent noise, sets the straight paths
it learns. :class:`CoupledSamples` serves items :class:`Coupled` ``(x, noise)``; the data
module's collation keeps the named tuple, so a batch is ``Coupled(x (B, ...), noise (B, ...))``
and :func:`batch_noise` finds the noise of a batch (None for any other batch).
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor
from torch.utils.data import Dataset

from diffcli.errors import DiffcliError

__all__ = ["Coupled", "CoupledSamples", "batch_noise"]


class Coupled(NamedTuple):
    """One item or batch of coupled data: ``x`` the sample (..., *S), ``noise`` its eps (same
    shape)."""

    x: Tensor
    noise: Tensor


class CoupledSamples(Dataset):
    """Item i is ``Coupled(x[i], noise[i])``; x and noise (N, *S) of one shape."""

    def __init__(self, x: Tensor, noise: Tensor) -> None:
        if x.shape != noise.shape or x.ndim < 2 or len(x) == 0:
            raise DiffcliError(f"coupled data needs samples and noise of one shape (N, ...), "
                               f"got {tuple(x.shape)} and {tuple(noise.shape)}")
        self.x, self.noise = x, noise

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> Coupled:
        return Coupled(self.x[index], self.noise[index])

    @property
    def data_shape(self) -> tuple[int, ...]:
        """Shape of one sample (*S)."""
        return tuple(self.x.shape[1:])


def batch_noise(batch: Any) -> Tensor | None:
    """The noise (B, ...) paired with a :class:`Coupled` batch's samples; None otherwise."""
    return batch.noise if isinstance(batch, Coupled) else None
