"""The first-stage autoencoders of latent diffusion (Rombach et al. 2022, Sec. 3.1, App. G).

A convolutional encoder maps an image ``x`` ``(B, C, H, W)`` in ``[-1, 1]`` to a latent
``z`` ``(B, z_channels, H / f, W / f)`` with downsampling factor ``f = 2 ** (levels - 1)``
("f4", "f8"); the decoder maps it back. Two regularisations of the latent space:

* **KL-reg** (:class:`KLAutoencoder`, "KL-f4 / KL-f8"): the encoder predicts a diagonal
  Gaussian posterior ``q(z | x)`` (:class:`DiagonalGaussian`) and a small KL term towards
  ``N(0, I)`` is added to the loss, as in a VAE (Kingma & Welling 2014).
* **VQ-reg** (:class:`VQAutoencoder`, "VQ-f4"): a vector-quantisation layer
  (:class:`~diffcli.nets.vq.VectorQuantizer`; van den Oord et al. 2017) inside the decoder,
  as in VQGAN (Esser et al. 2021). The diffusion model runs on the *pre-quantisation* latents
  and the decoder quantises (Rombach et al. 2022, Sec. 3.1: "the quantization layer is
  absorbed by the decoder").

Both wrap the same encoder / decoder (VQGAN / LDM layout, Esser et al. 2021, App.; see
:mod:`diffcli.nets.autoencoder_blocks`) with a 1x1 ``quant_conv`` after the encoder and a 1x1
``post_quant_conv`` before the decoder.

Adversarial training (Esser et al. 2021, Sec. 3.1): :class:`PatchDiscriminator`,
:func:`hinge_d_loss` and the adaptive weight of :func:`adaptive_gan_weight` (their eq. 7), in
:mod:`diffcli.nets.adversarial`.

The public names of those three modules listed in ``__all__`` are importable from here too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from diffcli.nets.adversarial import PatchDiscriminator, adaptive_gan_weight, hinge_d_loss
from diffcli.nets.autoencoder_blocks import (
    Decoder,
    Encoder,
    NetConfig,
    ResnetBlock,
    check_divisible,
    downsample_factor,
)
from diffcli.nets.vq import VectorQuantizer, nearest_codes, straight_through, vq_losses

__all__ = [
    "AutoencoderOutput",
    "Decoder",
    "DiagonalGaussian",
    "Encoder",
    "KLAutoencoder",
    "PatchDiscriminator",
    "ResnetBlock",
    "VQAutoencoder",
    "VectorQuantizer",
    "adaptive_gan_weight",
    "check_divisible",
    "downsample_factor",
    "hinge_d_loss",
    "kl_divergence",
    "nearest_codes",
    "straight_through",
    "vq_losses",
]

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


# --------------------------------------------------------------------------- KL posterior


def kl_divergence(mean: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mean, exp(logvar)) || N(0, I))`` per sample (Kingma & Welling 2014, App. B).

    Closed form ``0.5 * sum(mean^2 + exp(logvar) - 1 - logvar)`` over all non-batch
    dimensions. ``mean`` and ``logvar`` are ``(B, ...)``; returns ``(B,)``.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)
    return kl.flatten(1).sum(dim=1)


class DiagonalGaussian:
    """The KL encoder's posterior ``q(z | x) = N(mean, diag(exp(logvar)))``.

    Args:
        mean: ``(B, z, h, w)``.
        logvar: ``(B, z, h, w)``; clamped to ``[-30, 20]`` for numerical safety.
    """

    def __init__(self, mean: Tensor, logvar: Tensor) -> None:
        if mean.shape != logvar.shape:
            raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ; "
                             "give both of one shape")
        self.mean = mean
        self.logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)

    @classmethod
    def from_moments(cls, moments: Tensor) -> DiagonalGaussian:
        """Split ``(B, 2z, h, w)`` encoder moments into mean and log-variance along channels."""
        mean, logvar = moments.chunk(2, dim=1)
        return cls(mean, logvar)

    @property
    def std(self) -> Tensor:
        """Standard deviation ``exp(logvar / 2)``, ``(B, z, h, w)``."""
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample ``mean + std * eps`` (Kingma & Welling 2014, eq. 10)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device,
                          dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        """The posterior mode (its mean), ``(B, z, h, w)``."""
        return self.mean

    def kl(self) -> Tensor:
        """``KL(q(z | x) || N(0, I))`` per sample, ``(B,)``."""
        return kl_divergence(self.mean, self.logvar)


# --------------------------------------------------------------------------- autoencoders


@dataclass(frozen=True)
class AutoencoderOutput:
    """What :meth:`KLAutoencoder.forward` / :meth:`VQAutoencoder.forward` return.

    Attributes:
        recon: the reconstruction ``(B, C, H, W)``.
        reg_loss: scalar regulariser, unweighted: the batch-mean KL (KL model) or the VQ
            loss (VQ model).
        stats: scalars to log (KL: ``kl``, ``logvar_mean``; VQ: ``perplexity``, ``usage``).
    """

    recon: Tensor
    reg_loss: Tensor
    stats: dict[str, Tensor]


def _net_config(data_shape: Sequence[int], z_channels: int, base_channels: int,
                channel_mults: Sequence[int], num_res_blocks: int, mid_attention: bool,
                groups: int, dropout: float, downsample_padding: int = 1) -> NetConfig:
    """Validate the shared constructor arguments (one-line ``ValueError`` s)."""
    if len(data_shape) != 3:
        raise ValueError(f"the autoencoder takes images (C, H, W), got data shape "
                         f"{tuple(data_shape)}; use an image dataset")
    mults = tuple(int(m) for m in channel_mults)
    if not mults or min(mults) < 1:
        raise ValueError(f"autoencoder channel_mults must be positive integers, got {mults}")
    if min(z_channels, base_channels, num_res_blocks, groups, *data_shape) < 1:
        raise ValueError("autoencoder z_channels, base_channels, num_res_blocks, groups and "
                         f"data_shape must all be >= 1, got data_shape={tuple(data_shape)}, "
                         f"z_channels={z_channels}, base_channels={base_channels}, "
                         f"num_res_blocks={num_res_blocks}, groups={groups}")
    if downsample_padding not in (0, 1):
        raise ValueError(f"autoencoder downsample_padding must be 0 (right / bottom, as diffusers' "
                         f"AutoencoderKL) or 1 (every side), got {downsample_padding!r}")
    check_divisible(int(data_shape[1]), int(data_shape[2]), downsample_factor(mults))
    return NetConfig(int(data_shape[0]), base_channels, mults, num_res_blocks, mid_attention,
                      groups, dropout, int(downsample_padding))


class _Autoencoder(nn.Module):
    """Encoder, decoder and the 1x1 ``quant_conv`` / ``post_quant_conv`` of both models.

    Args:
        cfg: validated encoder / decoder settings.
        z_channels: latent channels.
        moments: encoder outputs per latent channel (2 for KL: mean and log-variance).
    """

    regularizer: ClassVar[str]

    def __init__(self, cfg: NetConfig, data_shape: Sequence[int], z_channels: int,
                 moments: int) -> None:
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.image_channels = cfg.image_channels
        self.z_channels = z_channels
        self.downsample_factor = downsample_factor(cfg.channel_mults)
        self.encoder = Encoder(cfg, moments * z_channels)
        self.quant_conv = nn.Conv2d(moments * z_channels, moments * z_channels, 1)
        self.post_quant_conv = nn.Conv2d(z_channels, z_channels, 1)
        self.decoder = Decoder(cfg, z_channels)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(z_channels, H // f, W // f)`` for this model's ``data_shape``."""
        _, height, width = self.data_shape
        f = self.downsample_factor
        return (self.z_channels, height // f, width // f)

    @property
    def last_layer(self) -> Tensor:
        """The decoder's final conv weight (for :func:`adaptive_gan_weight`)."""
        return self.decoder.conv_out.weight

    def _encode_features(self, x: Tensor) -> Tensor:
        """Check ``x`` ``(B, C, H, W)`` and return ``quant_conv(encoder(x))``."""
        if x.ndim != 4 or x.shape[1] != self.image_channels:
            raise ValueError(f"the autoencoder takes images (B, {self.image_channels}, H, W), "
                             f"got shape {tuple(x.shape)}")
        check_divisible(x.shape[2], x.shape[3], self.downsample_factor)
        return self.quant_conv(self.encoder(x))

    def _check_latent(self, z: Tensor) -> None:
        """One-line ``ValueError`` unless ``z`` is ``(B, z_channels, h, w)``."""
        if z.ndim != 4 or z.shape[1] != self.z_channels:
            raise ValueError(f"the autoencoder decodes latents (B, {self.z_channels}, h, w), "
                             f"got shape {tuple(z.shape)}")

    def _decode(self, z: Tensor) -> Tensor:
        """``decoder(post_quant_conv(z))``: ``(B, z, h, w)`` -> ``(B, C, h * f, w * f)``."""
        return self.decoder(self.post_quant_conv(z))


class KLAutoencoder(_Autoencoder):
    """The KL-regularised autoencoder "KL-f4 / KL-f8" (Rombach et al. 2022, Sec. 3.1).

    Args:
        data_shape: image shape ``(C, H, W)``; ``H`` and ``W`` must be multiples of ``f``.
        z_channels: latent channels (LDM: 3 for f4, 4 for f8).
        base_channels: width of the first level.
        channel_mults: width multiplier per level; ``f = 2 ** (len - 1)``.
        num_res_blocks: ResnetBlocks per encoder level (decoder: one more).
        mid_attention: single-head self-attention in the middle blocks.
        groups: maximum GroupNorm group count (see :func:`~diffcli.nets.layers.norm`).
        dropout: dropout probability inside the ResnetBlocks.
        downsample_padding: padding of the encoder's stride-2 convs: 1 (default) pads every
            side; 0 pads only the right and bottom edge (the LDM reference code's layout, which
            diffusers' ``AutoencoderKL`` hard-codes; needed to export to it, see
            :mod:`diffcli.interop.diffusers_vae`). Both halve even sizes; weights do not carry
            over between the two.
    """

    regularizer: ClassVar[str] = "kl"

    def __init__(self, *, data_shape: Sequence[int], z_channels: int = 4, base_channels: int = 64,
                 channel_mults: Sequence[int] = (1, 2, 3), num_res_blocks: int = 1,
                 mid_attention: bool = True, groups: int = 32, dropout: float = 0.0,
                 downsample_padding: int = 1) -> None:
        cfg = _net_config(data_shape, z_channels, base_channels, channel_mults, num_res_blocks,
                          mid_attention, groups, dropout, downsample_padding)
        super().__init__(cfg, data_shape, z_channels, moments=2)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """The posterior ``q(z | x)`` of images ``x`` ``(B, C, H, W)`` in ``[-1, 1]``."""
        return DiagonalGaussian.from_moments(self._encode_features(x))

    def encode_latent(self, x: Tensor, *, sample: bool = True,
                      generator: torch.Generator | None = None) -> Tensor:
        """Diffusion latent ``(B, z, H / f, W / f)``: a posterior sample (mode if not
        ``sample``)."""
        posterior = self.encode(x)
        return posterior.sample(generator) if sample else posterior.mode()

    def decode_latent(self, z: Tensor) -> Tensor:
        """Image ``(B, C, h * f, w * f)`` from a latent ``z`` ``(B, z, h, w)`` of any size."""
        self._check_latent(z)
        return self._decode(z)

    def forward(self, x: Tensor, *, sample: bool = True) -> AutoencoderOutput:
        """Reconstruct ``x`` ``(B, C, H, W)``; ``reg_loss`` is the batch-mean KL (unweighted)."""
        posterior = self.encode(x)
        z = posterior.sample() if sample else posterior.mode()
        kl = posterior.kl().mean()
        stats = {"kl": kl.detach(), "logvar_mean": posterior.logvar.mean().detach()}
        return AutoencoderOutput(self._decode(z), kl, stats)


class VQAutoencoder(_Autoencoder):
    """The VQ-regularised autoencoder "VQ-f4" (Esser et al. 2021; Rombach et al. 2022, Sec. 3.1).

    Arguments as :class:`KLAutoencoder`, plus the :class:`VectorQuantizer` settings
    ``n_embed`` (codebook size), ``beta`` (commitment weight), ``ema``, ``decay`` and
    ``restart_dead``. The codes have ``z_channels`` dimensions.
    """

    regularizer: ClassVar[str] = "vq"

    def __init__(self, *, data_shape: Sequence[int], z_channels: int = 3, base_channels: int = 64,
                 channel_mults: Sequence[int] = (1, 2, 3), num_res_blocks: int = 1,
                 mid_attention: bool = True, groups: int = 32, dropout: float = 0.0,
                 n_embed: int = 512, beta: float = 0.25, ema: bool = True, decay: float = 0.99,
                 restart_dead: bool = True, downsample_padding: int = 1) -> None:
        cfg = _net_config(data_shape, z_channels, base_channels, channel_mults, num_res_blocks,
                          mid_attention, groups, dropout, downsample_padding)
        super().__init__(cfg, data_shape, z_channels, moments=1)
        self.quantizer = VectorQuantizer(n_embed, z_channels, beta=beta, ema=ema, decay=decay,
                                         restart_dead=restart_dead)

    def encode(self, x: Tensor) -> Tensor:
        """Pre-quantisation latent ``(B, z, H / f, W / f)`` of images ``x`` ``(B, C, H, W)``."""
        return self._encode_features(x)

    def encode_latent(self, x: Tensor, *, sample: bool = True,
                      generator: torch.Generator | None = None) -> Tensor:
        """Diffusion latent: the pre-quantisation latent (``sample``, ``generator`` unused;
        Rombach et al. 2022, Sec. 3.1)."""
        return self.encode(x)

    def decode_latent(self, z: Tensor) -> Tensor:
        """Quantise ``z`` ``(B, z, h, w)`` (straight-through, no codebook update) and decode
        to ``(B, C, h * f, w * f)``."""
        self._check_latent(z)
        return self._decode(self.quantizer.quantize(z))

    def forward(self, x: Tensor, *, sample: bool = True) -> AutoencoderOutput:
        """Reconstruct ``x`` ``(B, C, H, W)``; ``reg_loss`` is the quantizer's loss
        (``sample`` is unused: the VQ encoder is deterministic)."""
        z_q, loss, _, stats = self.quantizer(self.encode(x))
        return AutoencoderOutput(self._decode(z_q), loss, stats)

