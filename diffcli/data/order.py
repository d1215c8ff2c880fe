"""The order of the training samples as a function of (seed, epoch), so that a resumed run sees
exactly the batches the uninterrupted run would have seen.

:class:`EpochOrder` draws epoch ``e``'s permutation from its own generator seeded by
``(seed, e)`` (not from torch's global stream, which the training step also draws from), and
after a resume in the middle of an epoch it starts that epoch ``skip`` samples in: the batches
the interrupted run had already trained on (Lightning, on a resume, ends that epoch after the
remaining batches). The sampler counts epochs itself, one per iteration from the one it was
built for: Lightning's own counter, which it hands to ``set_epoch``, is one ahead after a run
that stopped at ``max_steps`` in the middle of an epoch is resumed, so it is not used.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["EpochOrder"]


class EpochOrder(Sampler[int]):
    """Indices ``0 .. n-1`` shuffled per epoch from ``(seed, epoch)`` (in order when
    ``shuffle`` is false), one epoch per iteration from ``epoch`` on; the first iteration starts
    ``skip`` indices in."""

    def __init__(self, n: int, seed: int, shuffle: bool = True, skip: int = 0,
                 epoch: int = 0) -> None:
        if n < 1 or not 0 <= skip < n:
            raise ValueError(f"EpochOrder needs n >= 1 and 0 <= skip < n, got n={n}, "
                             f"skip={skip}")
        self.n, self.seed, self.shuffle = int(n), int(seed), bool(shuffle)
        self.epoch = int(epoch)  # the epoch of the next iteration
        self.skip = int(skip)

    def permutation(self, epoch: int) -> torch.Tensor:
        """Epoch ``epoch``'s order of the indices. (n,) int64"""
        if not self.shuffle:
            return torch.arange(self.n)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=gen)

    def __iter__(self) -> Iterator[int]:
        """One epoch: its permutation (from ``skip`` on, the first time)."""
        start, self.skip = self.skip, 0  # only the resumed epoch starts inside
        epoch, self.epoch = self.epoch, self.epoch + 1
        return iter(self.permutation(epoch)[start:].tolist())

    def __len__(self) -> int:
        return self.n
