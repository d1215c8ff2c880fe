"""A cheap FID during training: ``val/fid_proxy`` of the EMA network every N steps (rank 0)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from rich.console import Console

from diffcli.data.labels import batch_data
from diffcli.diffusion.samplers import Sampler
from diffcli.errors import DiffcliError
from diffcli.eval.cache import DatasetReferenceStats, RefStats
from diffcli.eval.extractors import INCEPTION, STANDIN_WARNING, Extractor, open_extractor
from diffcli.eval.features import extract_features
from diffcli.eval.fid import frechet_distance
from diffcli.eval.images import DatasetRef
from diffcli.eval.sampling import generated_batches, seed_set

ReferenceProvider = Callable[[Extractor, torch.device], RefStats]
METRIC = "val/fid_proxy"


class FIDProxy(L.Callback):
    """Every ``every_n_steps`` optimizer steps, FID (Heusel et al. 2017) of ``num_samples``
    images from the EMA network against the reference statistics, logged as ``val/fid_proxy``.

    The same seeds 0 .. num_samples - 1 every time, so the curve follows the model, not the
    noise. A *proxy*: FID is biased upward at small N (a few thousand instead of 50,000), so
    compare it only with itself; `diffcli eval-fid` gives the number to report. Runs on rank 0
    only (the other ranks wait at their next synchronisation).

    Args:
        every_n_steps: optimizer steps between evaluations.
        num_samples: generated images per evaluation (>= 2; a few thousand is typical).
        sampler: draws the images (e.g. DDIM with 50 steps).
        reference: ``(extractor, device) -> RefStats`` (e.g. :class:`DatasetReferenceStats`,
            computed once and cached on disk).
        extractor: the feature extractor (Inception-v3 for FID).
        batch_size: images per sampling / feature batch.
        console: where to print the values (the training progress bar's console).
    """

    def __init__(self, every_n_steps: int, num_samples: int, sampler: Sampler,
                 reference: ReferenceProvider, extractor: Extractor, batch_size: int = 256,
                 console: Console | None = None) -> None:
        if every_n_steps < 1:
            raise DiffcliError(f"fid_every must be >= 1 (or null: off), got {every_n_steps}")
        if num_samples < 2:
            raise DiffcliError(f"fid_samples must be >= 2 (FID needs a covariance), "
                               f"got {num_samples}")
        self.every = every_n_steps
        self.seeds = seed_set(0, num_samples)
        self.sampler = sampler
        self.reference = reference
        self.extractor = extractor
        self.batch_size = batch_size
        self.console = console or Console(stderr=True)
        self.history: list[tuple[int, float]] = []

    @classmethod
    def from_settings(cls, every_n_steps: int, num_samples: int, sampler: Sampler,
                      dataset: Mapping[str, Any], extractor: str = INCEPTION,
                      weights: str | Path | None = None, cache_dir: Path | None = None,
                      batch_size: int = 256, console: Console | None = None) -> FIDProxy:
        """Build it for the training ``dataset`` (its config values as a plain mapping): the
        extractor now (missing Inception weights fail here, before training, in one line) and
        the reference statistics lazily (cached on disk, shared with `diffcli eval-fid`)."""
        ref = DatasetRef.from_mapping(dataset)
        ext = open_extractor(extractor, ["fid"], weights, key="fid_weights")
        console = console or Console(stderr=True)
        if not ext.comparable:
            console.print(f"[yellow]warning[/]: {STANDIN_WARNING}")
        provider = DatasetReferenceStats(ref, cache_dir, batch_size, console)
        return cls(every_n_steps, num_samples, sampler, provider, ext, batch_size, console)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every or not trainer.is_global_zero:
            return
        if self.history and self.history[-1][0] == step:
            return  # same optimizer step (gradient accumulation)
        x = batch_data(batch)
        if x.ndim != 4:
            return
        value = self.compute(pl_module, tuple(x.shape[1:]), x.device)
        self.history.append((step, value))
        pl_module.log(METRIC, value, rank_zero_only=True, logger=False)  # for monitors
        for logger in trainer.loggers:  # at this exact step, whatever log_every_n_steps is
            logger.log_metrics({METRIC: value}, step=step)
        self.console.print(f"step {step}: {METRIC} = {value:.4f} ({len(self.seeds)} samples)")

    @torch.no_grad()
    def compute(self, pl_module: Any, shape: tuple[int, ...], device: torch.device) -> float:
        """FID of ``len(seeds)`` images of shape (C, H, W) from the EMA net (or the net)."""
        net = pl_module.sampling_net
        was_training = net.training
        net.eval()
        try:
            den = pl_module.denoiser(net)
            batches = generated_batches(self.sampler, den, shape, self.seeds, self.batch_size,
                                        device)
            fake = extract_features(batches, len(self.seeds), self.extractor, device,
                                    show=False)
            ref = self.reference(self.extractor, device)
        finally:
            net.train(was_training)
        return frechet_distance(fake.stats.mu, fake.stats.sigma, ref.stats.mu, ref.stats.sigma)


def fid_proxy(sampler: Sampler, dataset: Mapping[str, Any], every_n_steps: int | None = None,
              num_samples: int = 2000, extractor: str = INCEPTION, weights: str | None = None,
              batch_size: int = 256, console: Console | None = None) -> FIDProxy | None:
    """The ``callbacks.fid_proxy`` entry: a :class:`FIDProxy` for the training ``dataset``
    every ``every_n_steps`` steps, or None (off) when that is None."""
    if every_n_steps is None:
        return None
    return FIDProxy.from_settings(every_n_steps, num_samples, sampler, dataset, extractor,
                                  weights=weights, batch_size=batch_size, console=console)
