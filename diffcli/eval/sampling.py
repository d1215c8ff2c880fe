"""Generated images for FID, streamed in batches so that 50,000 samples never sit in memory.

Seeds follow EDM (Karras et al. 2022): seed set k of n images uses seeds k*n .. k*n + n - 1,
one generator per seed (:func:`diffcli.diffusion.generate.generate`), so an image depends on
its seed only - not on the batch size, the device count or which other seeds were drawn.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import torch
from torch import Tensor

from diffcli.diffusion.generate import generate, to_uint8
from diffcli.diffusion.samplers import Denoiser, Sampler
from diffcli.eval.images import to_rgb


def seed_set(k: int, n: int) -> list[int]:
    """The seeds of set k (0-based) of n images: k*n .. k*n + n - 1."""
    return list(range(k * n, k * n + n))


def generated_batches(sampler: Sampler, denoiser: Denoiser, shape: tuple[int, ...],
                      seeds: list[int], batch_size: int, device: torch.device,
                      precision: Callable[[], AbstractContextManager] | None = None,
                      labels: Tensor | None = None,
                      decode: Callable[[Tensor], Tensor] | None = None) -> Iterator[Tensor]:
    """Sample one image per seed (of class ``labels[i]`` when given, (N,) or (N, L) prompt
    tokens), ``batch_size`` at a time: uint8 (B, 3, H, W) batches (quantized as `diffcli
    sample` saves them; grayscale repeated to 3 channels). ``decode``: latents -> images
    (latent diffusion)."""
    context = precision or contextlib.nullcontext
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start:start + batch_size]
        part = None if labels is None else labels[start:start + batch_size]
        with context():
            x = generate(sampler, denoiser, shape, chunk, batch_size, device, labels=part)
            if decode is not None:
                x = decode(x)
        yield to_rgb(to_uint8(x))

