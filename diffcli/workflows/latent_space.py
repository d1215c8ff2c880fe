"""`diffcli train latent=<autoencoder>`: the latent space a diffusion model is trained in.

Latent diffusion (Rombach et al. 2022) trains the U-Net on s E(x): E the frozen encoder of an
autoencoder checkpoint (``latent.ckpt``, from ``diffcli train task=autoencoder``) or of a local
diffusers ``AutoencoderKL`` folder (``latent.pretrained``), s the scale factor (``latent.
scale_factor``, else the folder's ``scaling_factor``, else 1 / std of the latents of the first
images, Sec. 4.3.2). With ``latent.cache`` the dataset is encoded once into
``<runs_root>/latent-cache/`` (the posterior's mean and std, so training still samples), named
and stamped with the autoencoder's SHA-256 and reused only when both match.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from rich.console import Console
from torch import Tensor

from diffcli.checkpoint import LatentInfo, LoadedRun, atomic_torch_save, read_autoencoder
from diffcli.components import plain
from diffcli.console import progress
from diffcli.data.captions import CaptionedDataset
from diffcli.data.datamodule import DiffusionDataModule
from diffcli.data.labels import LabelledDataset
from diffcli.data.vision import TensorSamples
from diffcli.errors import CheckpointError, DiffcliError
from diffcli.lit.ranks import rank_name
from diffcli.nets.latent import (
    LatentCodec,
    file_sha256,
    load_pretrained_autoencoder,
    pretrained_sha256,
    scale_factor_of,
)
from diffcli.restore import restore_autoencoder
from diffcli.runs import newest_run, run_roots
from diffcli.tasks import AUTOENCODER

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line
SCALE_IMAGES = 1024  # images whose latents set the scale factor (the "first batches")
CACHE_FORMAT = 1


@dataclass
class LatentSpace:
    """The frozen codec the module encodes with, its description for the checkpoint, and the
    datamodule to train on (the cache's, when ``cached``)."""

    codec: LatentCodec
    info: LatentInfo
    datamodule: Any
    cached: bool


def latent_source(cfg: DictConfig, say: bool = False) -> tuple[str, bool] | None:
    """(path, pretrained) of the ``latent`` keys, None for a pixel-space run; ``latent=auto``
    is the newest ``task=autoencoder`` run's last checkpoint (named on the console when
    ``say``: by the call that opens it)."""
    node = plain(cfg.get("latent")) or {}
    ckpt, pretrained = node.get("ckpt"), node.get("pretrained")
    if ckpt and pretrained:
        raise DiffcliError("give latent.ckpt (an autoencoder checkpoint) or latent.pretrained "
                           "(a diffusers AutoencoderKL folder), not both")
    if not ckpt and not pretrained:
        return None
    if ckpt == "auto":  # the newest autoencoder run
        found = newest_run(run_roots(str(cfg.get("runs_root", "outputs"))), task=AUTOENCODER,
                           key="latent")
        if say:
            found.say("latent", "latent=auto: using the newest autoencoder run")
        return str(found.checkpoint), False
    return (str(ckpt), False) if ckpt else (str(pretrained), True)


def autoencoder_sha256(path: str, pretrained: bool) -> str | None:
    """The SHA-256 a run records for its autoencoder (None when the file or folder is not
    there: the caller that opens it says so)."""
    if pretrained:
        return pretrained_sha256(path)
    p = Path(path).expanduser()
    return file_sha256(p) if p.is_file() else None


def open_autoencoder(path: str, pretrained: bool, data_shape: tuple[int, ...],
                     read: Callable[[str], LoadedRun] = read_autoencoder,
                     ) -> tuple[torch.nn.Module, str, float | None]:
    """(frozen autoencoder on the CPU, its SHA-256, the folder's scaling factor or None);
    ``read`` reads an autoencoder checkpoint (the command's reader: once per process)."""
    if pretrained:
        try:
            ae, sha = load_pretrained_autoencoder(path, tuple(data_shape))  # type: ignore[arg-type]
        except ValueError as e:
            raise DiffcliError(str(e)) from None
        return ae, sha, ae.scaling_factor
    if not Path(path).is_file():
        raise CheckpointError(f"latent={path}: no such autoencoder checkpoint; train one with "
                              "`diffcli train task=autoencoder` and pass its checkpoints/last.ckpt")
    run = read(path)
    shape = tuple(run.data_info().shape)
    if shape != tuple(data_shape):
        raise DiffcliError(f"the autoencoder {path} was trained on images {shape}, this dataset "
                           f"has {tuple(data_shape)}: use the same dataset.image_size and "
                           "channels")
    return restore_autoencoder(run, torch.device("cpu")), file_sha256(path), None


def latent_space(cfg: DictConfig, dm: DiffusionDataModule, resumed: LoadedRun | None,
                 read: Callable[[str], LoadedRun] = read_autoencoder) -> LatentSpace | None:
    """The latent space of this run (None: pixel space), checked against the run it resumes;
    ``read`` reads the autoencoder's checkpoint."""
    # named on the console by rank 0; resuming: checked by train.check_same_latents
    source = latent_source(cfg, say=rank_name() is None)
    if source is None:
        return None
    if dm.kind != "image":
        raise DiffcliError("latent diffusion needs images; this dataset has 2-D points")
    path, pretrained = source
    ae, sha, folder_scale = open_autoencoder(path, pretrained, dm.data_shape, read)
    node = plain(cfg.latent)
    codec = LatentCodec(ae, 1.0, sample=bool(node.get("sample", True)))
    cached = bool(node.get("cache", False))
    if cached:
        dm = cached_datamodule(dm, codec, sha, Path(str(cfg.runs_root)) / "latent-cache",
                               plain(cfg.dataset))
    codec.scale_factor = _scale(node.get("scale_factor"), resumed, folder_scale, dm, codec,
                                cached)
    source_path = str(Path(path).expanduser().resolve())
    info = LatentInfo(tuple(codec.latent_shape), codec.scale_factor, source_path, sha, pretrained)
    console.print(f"latent diffusion: latents {info.shape} of {path}, scale factor "
                  f"{info.scale_factor:.4f}{' (cached)' if cached else ''}")
    return LatentSpace(codec, info, dm, cached)


def _scale(given: Any, resumed: LoadedRun | None, folder_scale: float | None,
           dm: Any, codec: LatentCodec, cached: bool) -> float:
    """latent.scale_factor, else the resumed run's, the folder's, or 1 / std of the latents of
    the first :data:`SCALE_IMAGES` items."""
    if given is not None:
        if not isinstance(given, int | float) or not given > 0:
            raise DiffcliError(f"latent.scale_factor={given!r} must be a positive number or null")
        return float(given)
    if resumed is not None and resumed.latent is not None:
        return resumed.latent.scale_factor
    if folder_scale is not None:
        return folder_scale
    x, _ = dm.head(SCALE_IMAGES)
    codec.scale_factor = 1.0
    z = codec.from_moments(x) if cached else codec.encode_batches(x)
    return scale_factor_of(z)


def cache_key(dataset: dict[str, Any], sha: str) -> str:
    """The cache file's name: what the images are (the dataset keys that change them) and the
    autoencoder's hash."""
    keep = {k: dataset.get(k) for k in ("name", "root", "split", "image_size", "channels",
                                         "attribute", "n_points", "seed")}
    data = hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()
    return f"{dataset.get('name')}-{data[:10]}-ae{sha[:16]}.pt"


def cached_datamodule(dm: DiffusionDataModule, codec: LatentCodec, sha: str, folder: Path,
                      dataset: dict[str, Any]) -> DiffusionDataModule:
    """A datamodule over the encoder's moments (N, 2c, h, w) of every item of ``dm``, with its
    labels or captions: read from ``folder`` when a cache of the same data and autoencoder
    hash is there, else encoded now (with a progress bar) and written atomically."""
    path = folder / cache_key(dataset, sha)
    moments = read_cache(path, sha)
    if moments is None or len(moments) != dm.num_samples:
        moments = encode_all(dm, codec)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_torch_save({"format": CACHE_FORMAT, "autoencoder_sha256": sha,
                               "dataset": dataset, "moments": moments}, path)
        except OSError as e:  # a cache is an aid: training goes on from the encoded moments
            console.print(f"warning: latent cache: encoded {len(moments)} images but could not "
                          f"write {path} ({e.strerror or e}); training goes on without the "
                          "cache (free space there, or set latent.cache=false)")
        else:
            console.print(f"latent cache: encoded {len(moments)} images into {path}")
    else:
        console.print(f"latent cache: reusing {path}")
    return _moments_datamodule(dm, moments)


def read_cache(path: Path, sha: str) -> Tensor | None:
    """The cached moments at ``path`` when the file exists and was made by the autoencoder of
    hash ``sha``; None otherwise (the cache is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache is rebuilt
        return None
    ok = isinstance(blob, dict) and blob.get("autoencoder_sha256") == sha and \
        isinstance(blob.get("moments"), Tensor)
    return blob["moments"] if ok else None


def encode_all(dm: DiffusionDataModule, codec: LatentCodec, batch_size: int = 256) -> Tensor:
    """The moments (N, 2c, h, w) of every item of ``dm`` in order, unflipped."""
    n = dm.num_samples
    out = []
    with progress("encoding latents", n, console, unit="images") as bar:
        for start in range(0, n, batch_size):
            items = [dm.dataset[i] for i in range(start, min(n, start + batch_size))]
            x = torch.stack([it[0] if isinstance(it, tuple) else it for it in items])
            out.append(codec.moments(x).float())
            bar.advance(len(items))
    return torch.cat(out)


def _moments_datamodule(dm: DiffusionDataModule, moments: Tensor) -> DiffusionDataModule:
    """``dm``'s labels or captions over the cached moments (flips then mirror the latents)."""
    samples: Any = TensorSamples(moments.contiguous())
    source = dm.dataset
    if isinstance(getattr(source, "captions", None), list):
        samples = CaptionedDataset(samples, source.captions)
    elif getattr(source, "class_names", None) is not None:
        samples = LabelledDataset(samples, source.labels, source.class_names)
    return DiffusionDataModule(samples, dm.batch_size, dm.num_workers,
                               random_flip=dm.random_flip, kind="image")


__all__ = ["LatentSpace", "cache_key", "cached_datamodule", "encode_all",
           "latent_source", "latent_space", "read_cache"]
