"""Reference statistics cached on disk, so a second evaluation never touches the real images.

One ``.npz`` per reference set under ``~/.cache/diffcli/fid/`` (``$XDG_CACHE_HOME/diffcli/fid``
when set; or any ``cache_dir``), named by what identifies it - dataset name, split,
resolution, extractor and its layer/weights, number of images (and, for folders, a hash of the
path with the file count and newest mtime) - with a hash of all of it. It holds the float64
mean ``mu`` (D,) and covariance ``sigma`` (D, D), and the float32 pool features (N, D) once
KID or precision/recall asked for them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import Tensor

from diffcli.eval.extractors import Extractor
from diffcli.eval.features import extract_features
from diffcli.eval.fid import GaussianStats
from diffcli.eval.images import DatasetRef, ImageSource
from diffcli.files import atomic_write

CACHE_FORMAT = 1


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/diffcli/fid``, else ``~/.cache/diffcli/fid``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "diffcli" / "fid"


@dataclass
class RefStats:
    """Reference statistics: the Gaussian of the pool features, and the features themselves
    (float32 (N, D)) when they were needed. ``path``: the cache file, ``cached``: read from it."""

    stats: GaussianStats
    features: Tensor | None = None
    path: Path | None = None
    cached: bool = False


def reference_key(source_key: dict[str, Any], extractor: Extractor, n: int | None) -> dict:
    """Everything the reference statistics depend on."""
    return {"format": CACHE_FORMAT, **source_key, "n": "all" if n is None else int(n),
            "extractor": extractor.name, "layer": extractor.pool_layer,
            "weights": extractor.weights}


def cache_path(cache_dir: Path, key: dict[str, Any]) -> Path:
    """``<cache_dir>/<readable parts>-<hash of the key>.npz``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    res = key.get("resolution") or ["?", "?"]
    parts = [key.get("dataset") or key.get("kind") or "ref", key.get("split"),
             f"{res[0]}x{res[1]}", key.get("extractor"), f"n{key.get('n')}"]
    name = "-".join(re.sub(r"[^A-Za-z0-9_.]+", "_", str(p)) for p in parts if p is not None)
    return cache_dir / f"{name}-{digest[:12]}.npz"


def load_stats(path: Path, need_features: bool) -> RefStats | None:
    """The cached statistics at ``path`` (None if absent, unreadable, or lacking features
    that are needed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            mu, sigma, n = data["mu"], data["sigma"], int(data["n"])
            feats = torch.from_numpy(data["features"]) if "features" in data.files else None
    except (OSError, ValueError, KeyError):
        return None
    if need_features and feats is None:
        return None
    if mu.dtype != np.float64 or sigma.shape != (mu.shape[0],) * 2:
        return None
    return RefStats(GaussianStats(mu, sigma, n), feats, path, cached=True)


def save_stats(path: Path, ref: RefStats, key: dict[str, Any]) -> None:
    """Write atomically (a temporary file renamed into place)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "mu": ref.stats.mu.astype(np.float64), "sigma": ref.stats.sigma.astype(np.float64),
        "n": np.array(ref.stats.n), "key": np.array(json.dumps(key, sort_keys=True))}
    if ref.features is not None:
        arrays["features"] = ref.features.numpy().astype(np.float32)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def reference_statistics(open_source: Callable[[], ImageSource], key: dict[str, Any],
                         extractor: Extractor, device: torch.device, batch_size: int,
                         cache_dir: Path | None, need_features: bool = False,
                         console: Console | None = None) -> RefStats:
    """The reference statistics for ``key``: from the cache when there, else computed over all
    images of ``open_source()`` (called only then) and cached. ``cache_dir`` None: no cache."""
    console = console or Console(stderr=True)
    path = cache_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and (hit := load_stats(path, need_features)) is not None:
        console.print(f"using cached reference statistics: {path}")
        return hit
    source = open_source()
    pool = extractor.pool_layer
    result = extract_features(source.batches(batch_size), len(source), extractor, device,
                              keep=[pool] if need_features else [], label="reference features",
                              console=console)
    ref = RefStats(result.stats, result.kept.get(pool), path, cached=False)
    if path is not None:
        try:
            save_stats(path, ref, key)
        except OSError as e:  # a cache is an aid: the evaluation goes on without it
            console.print(f"warning: computed reference statistics ({source.description}) but "
                          f"could not cache them at {path} ({e.strerror or e}); set "
                          "cache_dir=<a writable folder> or cache=false")
            ref.path = None
        else:
            console.print(f"computed reference statistics ({source.description}) cached at "
                          f"{path}")
    else:
        console.print(f"computed reference statistics ({source.description}); cache off")
    return ref


@dataclass
class DatasetReferenceStats:
    """Reference statistics of a named dataset, computed on first call and cached on disk
    (the same cache file `diffcli eval-fid` uses for that dataset, split, size and extractor).

    Call with (extractor, device) -> :class:`RefStats`; the result is kept in memory.
    """

    dataset: DatasetRef
    cache_dir: Path | None = None
    batch_size: int = 256
    console: Console | None = None
    _stats: RefStats | None = None

    def __call__(self, extractor: Extractor, device: torch.device) -> RefStats:
        if self._stats is None:
            key = reference_key({"kind": "dataset", **self.dataset.cache_key()}, extractor, None)
            self._stats = reference_statistics(
                self.dataset.open, key, extractor, device, self.batch_size,
                self.cache_dir or default_cache_dir(), console=self.console)
        return self._stats
