"""The latent space of latent diffusion (Rombach et al. 2022): a frozen autoencoder and a scale.

Latent diffusion trains the denoiser on z = s * E(x) instead of x: E a frozen encoder (the
autoencoder stage, :mod:`diffcli.nets.autoencoder`, or Stable Diffusion's VAE loaded with
diffusers), s the ``scale_factor`` that gives the latents unit variance, computed "from the first
batch of data" as 1 / std (Sec. 4.3.2 and App. G); samples are decoded as x = D(z / s).

:class:`LatentCodec` holds both and is the one object the training step, the samplers' callers
and the pictures go through. Shapes: images (B, C, H, W) in [-1, 1], latents (B, c, H/f, W/f).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["LatentCodec", "PretrainedAutoencoder", "file_sha256", "folder_sha256",
           "load_pretrained_autoencoder", "pretrained_folder", "pretrained_sha256",
           "scale_factor_of"]

# safetensors only: a .bin file is a pickle, which could run code when loaded
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors",)


def scale_factor_of(latents: Tensor) -> float:
    """s = 1 / std of the latents (B, c, h, w) over every element (Rombach et al. 2022,
    Sec. 4.3.2: "we rescale the latents ... estimated from the first batch of data")."""
    std = float(latents.detach().double().std())
    if not std > 0 or not torch.isfinite(torch.tensor(std)):
        raise ValueError(f"cannot scale latents whose std is {std}: the autoencoder's encoder "
                         "outputs a constant; train it longer or check its checkpoint")
    return 1.0 / std


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def folder_sha256(files: Iterable[Path]) -> str:
    """One SHA-256 over several files (names and contents), e.g. a diffusers model folder."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.name.encode())
        digest.update(file_sha256(path).encode())
    return digest.hexdigest()


def pretrained_folder(folder: str | Path) -> tuple[Path, Path, list[Path]]:
    """(the model folder - a pipeline's ``vae/`` when there is one -, its config.json, its
    weight files present)."""
    path = Path(folder).expanduser()
    if (path / "vae" / "config.json").is_file():
        path = path / "vae"
    return path, path / "config.json", [path / n for n in WEIGHT_NAMES if (path / n).is_file()]


def pretrained_sha256(folder: str | Path) -> str | None:
    """The SHA-256 of a diffusers model folder's config and weights (None: not such a folder)."""
    _, config, weights = pretrained_folder(folder)
    return folder_sha256([config, *weights]) if config.is_file() and weights else None


class LatentCodec(nn.Module):
    """A frozen autoencoder and its scale factor s: :meth:`encode` x -> s E(x),
    :meth:`decode` z -> D(z / s).

    ``autoencoder`` has ``encode_latent(x, sample=...)`` (B, c, h, w), ``decode_latent(z)``
    (B, C, H, W), ``latent_shape`` and ``downsample_factor`` (both diffcli autoencoders and
    :class:`PretrainedAutoencoder`). ``sample``: draw z from a KL posterior (training, as the
    LDM paper does) rather than take its mean. Moments (:meth:`moments`) are what the latent
    cache stores: the posterior mean and std, so that cached training still samples.
    """

    def __init__(self, autoencoder: nn.Module, scale_factor: float, *, sample: bool = True
                 ) -> None:
        super().__init__()
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.scale_factor = float(scale_factor)
        self.sample = sample

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(c, H/f, W/f) of the images it was built for."""
        return tuple(int(d) for d in self.autoencoder.latent_shape)  # type: ignore[return-value]

    def train(self, mode: bool = True) -> LatentCodec:
        """Always in eval mode: the autoencoder is frozen."""
        return super().train(False)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """s E(x): images (B, C, H, W) -> scaled latents (B, c, h, w)."""
        return self.autoencoder.encode_latent(x, sample=self.sample) * self.scale_factor

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """D(z / s): scaled latents (B, c, h, w) -> images (B, C, H, W)."""
        return self.autoencoder.decode_latent(z / self.scale_factor)

    def encode_batches(self, x: Tensor, batch_size: int = 256) -> Tensor:
        """:meth:`encode` of x (N, C, H, W), ``batch_size`` images at a time on the codec's
        device; (N, c, h, w) float32 on the CPU."""
        return self._batched(self.encode, x, batch_size)

    def decode_batches(self, z: Tensor, batch_size: int = 64) -> Tensor:
        """:meth:`decode` of z (N, c, h, w) in batches on the codec's device; (N, C, H, W)
        float32 on the CPU."""
        return self._batched(self.decode, z, batch_size)

    def _batched(self, fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
        device = next(self.parameters()).device
        return torch.cat([fn(x[i:i + batch_size].to(device)).float().cpu()
                          for i in range(0, len(x), batch_size)])

    @torch.no_grad()
    def moments(self, x: Tensor) -> Tensor:
        """Unscaled posterior (mean, std) concatenated on dim 1: (B, 2c, h, w); a deterministic
        encoder (VQ) has std 0."""
        enc = self.autoencoder.encode(x)
        if isinstance(enc, Tensor):  # a deterministic latent (VQ: before quantization)
            return torch.cat([enc, torch.zeros_like(enc)], dim=1)
        return torch.cat([enc.mean, enc.std], dim=1)

    def from_moments(self, moments: Tensor) -> Tensor:
        """Scaled latents (B, c, h, w) of cached moments (B, 2c, h, w): mean + std * noise
        (``sample``) or the mean, times s."""
        mean, std = moments.chunk(2, dim=1)
        z = mean + std * torch.randn_like(std) if self.sample else mean
        return z * self.scale_factor


class PretrainedAutoencoder(nn.Module):
    """A diffusers ``AutoencoderKL`` folder (e.g. Stable Diffusion's VAE) behind the interface of
    diffcli's autoencoders. ``scaling_factor`` is the folder's config value (0.18215 for SD)."""

    regularizer = "kl"

    def __init__(self, vae: nn.Module, data_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.vae = vae
        config = vae.config
        self.downsample_factor = 2 ** (len(config.block_out_channels) - 1)
        self.z_channels = int(config.latent_channels)
        self.scaling_factor = float(getattr(config, "scaling_factor", 0.18215) or 0.18215)
        c, h, w = data_shape
        f = self.downsample_factor
        if c != int(config.in_channels):
            raise ValueError(f"the pretrained autoencoder takes {config.in_channels}-channel "
                             f"images, the dataset has {c}")
        if h % f or w % f:
            raise ValueError(f"image size {h}x{w} is not divisible by the pretrained "
                             f"autoencoder's downsampling factor {f}; use dataset.image_size="
                             f"{-(-h // f) * f}")
        self.latent_shape = (self.z_channels, h // f, w // f)

    def encode(self, x: Tensor) -> object:
        """The posterior (mean, std) of x (B, C, H, W)."""
        return self.vae.encode(x).latent_dist

    def encode_latent(self, x: Tensor, *, sample: bool = True) -> Tensor:
        dist = self.encode(x)
        return dist.sample() if sample else dist.mean

    def decode_latent(self, z: Tensor) -> Tensor:
        return self.vae.decode(z).sample


def load_pretrained_autoencoder(folder: str | Path,
                                data_shape: tuple[int, int, int]) -> tuple[PretrainedAutoencoder,
                                                                           str]:
    """A diffusers ``AutoencoderKL`` from a local ``folder`` (its ``config.json`` and weights;
    a pipeline folder's ``vae/`` sub-folder is used when present), with no network access;
    returns (the autoencoder, the SHA-256 of its weights)."""
    path, config, weights = pretrained_folder(folder)
    if not path.is_dir():
        raise ValueError(f"latent.pretrained={folder}: no such folder; give the local folder of a "
                         "diffusers AutoencoderKL (config.json + diffusion_pytorch_model."
                         "safetensors), e.g. Stable Diffusion's vae/")
    if not config.is_file() or not weights:
        pickled = (path / "diffusion_pytorch_model.bin").is_file()
        raise ValueError(f"latent.pretrained={folder} is not a diffusers AutoencoderKL folder "
                         "(needs config.json and diffusion_pytorch_model.safetensors)"
                         + ("; its .bin weights are a pickle, which diffcli does not load: "
                            "convert them to safetensors" if pickled else ""))
    try:
        kind = json.loads(config.read_text()).get("_class_name")
    except (OSError, json.JSONDecodeError):
        kind = None
    if kind not in (None, "AutoencoderKL"):
        raise ValueError(f"latent.pretrained={folder} holds a {kind}, not an AutoencoderKL")
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ValueError("latent.pretrained needs the diffusers package: pip install "
                         "'diffcli[latent]'") from None
    vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    return PretrainedAutoencoder(vae.eval().requires_grad_(False), data_shape), \
        folder_sha256([config, *weights])
