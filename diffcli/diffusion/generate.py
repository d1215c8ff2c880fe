"""Drawing samples: per-seed noise, batching, NFE counting, trajectories (EDM's generate.py role).

An image depends on its seed only - not on the batch size, the number of processes or which
other seeds are drawn - because sample i starts from noise of its own generator seeded
``seeds[i]``, and stochastic samplers draw their later noise from the same generator (Karras et
al. 2022 use one generator per seed for this). Everything here takes the sampler and the
denoiser as arguments; progress display is the caller's (``on_step``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from diffcli.diffusion.samplers import Denoiser, Sampler, SamplerStep
from diffcli.diffusion.samplers.base import randn_like
from diffcli.errors import DiffcliError


@dataclass
class CountingNet:
    """Wraps a network to count its evaluations: ``calls`` batch calls, and ``rows``, the sum
    of their batch sizes x.shape[0]. Network evaluations per sample (NFE) = rows / samples: a
    classifier-free guidance step's one forward of 2B (Ho & Salimans 2022) counts 2 per
    sample, as NFE counts both halves."""

    net: nn.Module | Callable[..., Tensor]
    calls: int = 0
    rows: int = 0

    def __call__(self, x: Tensor, t: Tensor, *args: object, **kwargs: object) -> Tensor:
        self.calls += 1
        self.rows += x.shape[0]
        return self.net(x, t, *args, **kwargs)


@dataclass
class Trajectory:
    """Records x_t and the predicted x0 at every step for the first ``keep`` samples."""

    keep: int
    t: list = field(default_factory=list)
    x_t: list = field(default_factory=list)
    x0: list = field(default_factory=list)

    def __call__(self, step: SamplerStep) -> None:
        self.t.append(step.t)
        self.x_t.append(step.x_t[: self.keep].float().cpu())
        self.x0.append(step.x0[: self.keep].float().cpu())

    def save(self, path: Path) -> None:
        """``t`` (K,), ``x_t`` and ``x0`` (K, keep, ...) as a compressed .npz."""
        np.savez_compressed(path, t=np.array(self.t), x_t=torch.stack(self.x_t).numpy(),
                            x0=torch.stack(self.x0).numpy())


def seed_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per seed (CPU so that a seed gives the same noise on every device)."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def seed_noise(generators: Sequence[torch.Generator], shape: tuple[int, ...],
               device: torch.device) -> Tensor:
    """x_T for each generator: (len(generators), *shape) standard normal noise on ``device``."""
    return randn_like(torch.empty(len(generators), *shape, device=device), list(generators))


def num_steps(sampler: Sampler, denoiser: Denoiser) -> int:
    """The sampler's steps on the denoiser's schedule (one progress tick each)."""
    return len(sampler.timesteps(denoiser.schedule))


def check_finite(x: Tensor) -> Tensor:
    """``x`` (N, ...) unchanged, or a one-line error when a sample holds NaN or inf (a broken
    network) - so no black images are ever written."""
    bad = ~torch.isfinite(x.flatten(1)).all(dim=1)
    if bool(bad.any()):
        raise DiffcliError(f"sampling produced non-finite values in {int(bad.sum())} of "
                           f"{len(x)} samples; nothing was written (the network's weights are "
                           "broken: check the training run)")
    return x


def generate_batches(sampler: Sampler, denoiser: Denoiser, shape: tuple[int, ...],
                     seeds: Sequence[int], batch_size: int, device: torch.device, *,
                     trajectory: Trajectory | None = None,
                     on_step: Callable[[], None] | None = None,
                     labels: Tensor | None = None) -> Iterator[Tensor]:
    """Sample one item per seed, ``batch_size`` at a time: float32 CPU batches (B, *shape).

    ``trajectory`` records the first batch's steps; ``on_step`` is called after every
    sampler step (progress bars). ``labels`` (len(seeds),) int64: the class of each seed's
    sample, given per batch to the denoiser (:meth:`Denoiser.with_labels`; e.g. classifier-free
    guidance); None leaves the denoiser as it is. Every batch is checked finite
    (:func:`check_finite`).
    """
    if batch_size < 1:
        raise DiffcliError(f"batch_size must be >= 1, got {batch_size}")
    if labels is not None and len(labels) != len(seeds):
        raise ValueError(f"got {len(labels)} labels for {len(seeds)} seeds: give one per seed")
    for start in range(0, len(seeds), batch_size):
        gens = seed_generators(seeds[start:start + batch_size])
        model = denoiser if labels is None else denoiser.with_labels(
            labels[start:start + batch_size].to(device))
        record = trajectory if start == 0 else None

        def callback(step: SamplerStep, record: Trajectory | None = record) -> None:
            if on_step is not None:
                on_step()
            if record is not None:
                record(step)

        x = sampler.sample(model, seed_noise(gens, shape, device), generator=gens,
                           callback=callback)
        yield check_finite(x.float().cpu())


def generate(sampler: Sampler, denoiser: Denoiser, shape: tuple[int, ...],
             seeds: Sequence[int], batch_size: int, device: torch.device, *,
             trajectory: Trajectory | None = None,
             on_step: Callable[[], None] | None = None,
             labels: Tensor | None = None) -> Tensor:
    """All of :func:`generate_batches` at once: (len(seeds), *shape) float32 on the CPU."""
    return torch.cat(list(generate_batches(sampler, denoiser, shape, seeds, batch_size, device,
                                           trajectory=trajectory, on_step=on_step,
                                           labels=labels)))


def compact_seeds(seeds: Sequence[int]) -> str:
    """"0-999" for a contiguous range, else a comma list (what ``seeds=`` parses back)."""
    seeds = list(seeds)
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


def to_uint8(x: Tensor) -> Tensor:
    """Images in [-1, 1] (clipped) -> uint8 in [0, 255], rounded to nearest. Same shape."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
