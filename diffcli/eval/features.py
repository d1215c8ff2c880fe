"""Batched feature extraction: uint8 image batches -> streaming Gaussian statistics (+ features).

The extractor runs in eval mode under ``torch.inference_mode`` on every image of a source, in
batches, with a rich progress bar; the pool features (Inception: (N, 2048)) are folded into
float64 :class:`~diffcli.eval.fid.StreamingStats`, and only the features a metric needs in
full (KID, precision/recall: pool; IS: logits) are kept.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import torch
from rich.console import Console
from torch import Tensor

from diffcli.console import progress
from diffcli.eval.extractors import Extractor
from diffcli.eval.fid import GaussianStats, StreamingStats


@dataclass
class FeatureResult:
    """Statistics of the pool features of N images and any features kept in full (N, D)."""

    stats: GaussianStats
    kept: dict[str, Tensor] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.stats.n


def extract_features(batches: Iterable[Tensor], total: int, extractor: Extractor,
                     device: torch.device, keep: Collection[str] = (), label: str = "features",
                     console: Console | None = None, show: bool = True) -> FeatureResult:
    """Run ``extractor`` over uint8 (B, 3, H, W) ``batches`` (``total`` images in all).

    Returns the float64 mean/covariance of the pool layer over *all* images and the layers
    named in ``keep`` as float32 (N, D) CPU tensors.
    """
    module = extractor.module.to(device)
    module.eval()  # batch norm with running statistics, no dropout
    pool = extractor.pool_layer
    stats = StreamingStats()
    kept: dict[str, list[Tensor]] = {k: [] for k in keep}
    with progress(label, total, console, show, unit="images") as bar, torch.inference_mode():
        for batch in batches:
            feats = module.convert_features_tuple_to_dict(module(batch.to(device)))
            stats.update(feats[pool])
            for name in kept:
                kept[name].append(feats[name].float().cpu())
            bar.advance(batch.shape[0])
    return FeatureResult(stats.result(), {k: torch.cat(v) for k, v in kept.items()})
