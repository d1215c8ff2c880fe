"""The first-stage autoencoders of latent diffusion (Rombach et al. 2022, Sec. 3.1, App. G).

A convolutional encoder maps an image ``x`` ``(B, C, H, W)`` in ``[-1, 1]`` to a latent
``z`` ``(B, z_channels, H / f, W / f)`` with downsampling factor ``f = 2 ** (levels - 1)``
("f4", "f8"); the decoder maps it back. Two regularisations of the latent space:

* **KL-reg** (:class:`KLAutoencoder`, "KL-f4 / KL-f8"): the encoder predicts a diagonal
  Gaussian posterior ``q(z | x)`` (:class:`DiagonalGaussian`) and a small KL term towards
  ``N(0, I)`` is added to the loss, as in a VAE (Kingma & Welling 2014).
* **VQ-reg** (:class:`VQAutoencoder`, "VQ-f4"): a vector-quantisation layer
  (:class:`VectorQuantizer`; van den Oord et al. 2017) inside the decoder, as in VQGAN
  (Esser et al. 2021). The diffusion model runs on the *pre-quantisation* latents and the
  decoder quantises (Rombach et al. 2022, Sec. 3.1: "the quantization layer is absorbed by
  the decoder").

Layout shared by both (the VQGAN / LDM encoder-decoder, Esser et al. 2021, App.):

* encoder: ``conv_in`` 3x3 -> per level ``num_res_blocks`` :class:`ResnetBlock` s and a
  stride-2 3x3 :class:`~diffcli.nets.layers.Downsample` between levels (``downsample_padding``
  1: padded one pixel on every side; 0: on the right and bottom only, as in the LDM / Stable
  Diffusion reference code and diffusers' ``AutoencoderKL``) -> middle
  (ResnetBlock, optional single-head self-attention, ResnetBlock) -> GroupNorm, SiLU,
  3x3 conv to ``2 * z_channels`` (KL: mean and log-variance) or ``z_channels`` (VQ);
  then a 1x1 ``quant_conv``;
* decoder: 1x1 ``post_quant_conv`` -> ``conv_in`` -> middle -> per level (top to bottom)
  ``num_res_blocks + 1`` ResnetBlocks and a nearest x2
  :class:`~diffcli.nets.layers.Upsample` + conv between levels -> GroupNorm, SiLU, 3x3
  ``conv_out`` to the image channels.

Adversarial training (Esser et al. 2021, Sec. 3.1): :class:`PatchDiscriminator`,
:func:`hinge_d_loss` and the adaptive weight of :func:`adaptive_gan_weight` (their eq. 7).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcli.nets.layers import AttentionBlock, Downsample, Upsample, norm

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


# --------------------------------------------------------------------------- shapes


def downsample_factor(channel_mults: Sequence[int]) -> int:
    """Spatial downsampling factor ``f = 2 ** (len(channel_mults) - 1)`` (one halving per
    level boundary; Rombach et al. 2022, Sec. 3.1)."""
    if len(channel_mults) < 1:
        raise ValueError("autoencoder channel_mults is empty; give at least one level, e.g. [1, 2]")
    return 2 ** (len(channel_mults) - 1)


def check_divisible(height: int, width: int, factor: int) -> None:
    """Raise a one-line ``ValueError`` unless ``height`` and ``width`` are multiples of
    ``factor``; the message suggests the next multiple of ``factor`` as the image size."""
    if factor < 1:
        raise ValueError(f"the downsampling factor must be >= 1, got {factor}")
    if height % factor == 0 and width % factor == 0:
        return
    suggestion = -(-max(height, width) // factor) * factor
    raise ValueError(
        f"image size {height}x{width} is not divisible by the autoencoder's downsampling "
        f"factor {factor} (f{factor}); use dataset.image_size={suggestion} "
        f"(a multiple of {factor})"
    )


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


# --------------------------------------------------------------------------- vector quantisation


def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code ``argmin_k ||z - e_k||^2`` (van den Oord et al. 2017, eq. 1).

    ``z`` is ``(N, D)``, ``codebook`` ``(K, D)``; returns ``(N,)`` long. Distances are
    computed in float32 as ``|z|^2 - 2 z.e + |e|^2``; ties go to the lowest index.
    """
    z = z.detach().float()
    e = codebook.detach().float()
    dist = z.pow(2).sum(1, keepdim=True) - 2.0 * z @ e.t() + e.pow(2).sum(1)[None, :]  # (N, K)
    return dist.argmin(dim=1)


def vq_losses(z: Tensor, z_q: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """``(codebook_loss, commitment_loss)`` of van den Oord et al. 2017, eq. 3.

    ``codebook_loss = mean((sg[z] - e)^2)`` moves the codes, ``commitment_loss = beta *
    mean((z - sg[e])^2)`` keeps the encoder near them; means over all elements of ``z``
    and ``z_q`` (same shape, any layout).
    """
    codebook_loss = F.mse_loss(z_q, z.detach())
    commitment_loss = beta * F.mse_loss(z, z_q.detach())
    return codebook_loss, commitment_loss


def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
    """``z + sg[z_q - z]``: the value of ``z_q`` with the gradient of ``z`` (straight-through
    estimator; van den Oord et al. 2017, Sec. 3.1)."""
    return z + (z_q - z).detach()


def _code_stats(counts: Tensor) -> dict[str, Tensor]:
    """Perplexity ``exp(H(p))`` of the code histogram ``counts`` ``(K,)`` and the fraction of
    codes used at least once."""
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum()
    return {"perplexity": entropy.exp(), "usage": (counts > 0).float().mean()}


class VectorQuantizer(nn.Module):
    """Map each latent vector to its nearest code (van den Oord et al. 2017, Sec. 3.1).

    With ``ema=True`` the codebook is a buffer updated by exponential moving averages
    (van den Oord et al. 2017, App. A.1): per code ``k`` with ``n_k`` assigned vectors of
    sum ``s_k`` in the batch, ``N_k <- decay N_k + (1 - decay) n_k``, ``m_k <- decay m_k +
    (1 - decay) s_k`` and ``e_k = m_k / N~_k`` with the Laplace-smoothed counts
    ``N~_k = (N_k + eps) / (sum N + K eps) * sum N``; the loss is the commitment term only.
    With ``ema=False`` the codebook is an ``nn.Parameter`` trained by the codebook loss.

    Dead-code restart (``restart_dead``): in training, codes whose moving-average count
    ``cluster_size`` fell below ``dead_threshold`` are set to random encoder outputs of the
    current batch (torch's global RNG), and their count reset to 1.

    Buffers: ``cluster_size`` ``(K,)``, ``embed_sum`` ``(K, D)`` (EMA only); the codebook is
    ``embed`` ``(K, D)`` in both modes. Updates happen only in training mode.
    """

    def __init__(self, n_embed: int, embed_dim: int, *, beta: float = 0.25, ema: bool = True,
                 decay: float = 0.99, eps: float = 1e-5, restart_dead: bool = True,
                 dead_threshold: float = 1e-3) -> None:
        super().__init__()
        _check_quantizer_args(n_embed, embed_dim, beta, decay)
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.beta, self.ema, self.decay, self.eps = beta, ema, decay, eps
        self.restart_dead, self.dead_threshold = restart_dead, dead_threshold
        embed = torch.randn(n_embed, embed_dim)
        if ema:
            self.register_buffer("embed", embed)
            self.register_buffer("embed_sum", embed.clone())
        else:
            self.embed = nn.Parameter(embed)
        self.register_buffer("cluster_size", torch.ones(n_embed))

    @property
    def codebook(self) -> Tensor:
        """The codes ``(K, D)``."""
        return self.embed

    def lookup(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Quantise ``z`` ``(B, D, h, w)`` without touching the codebook state.

        Returns ``(z_q, indices)``: the nearest codes ``(B, D, h, w)`` (no straight-through)
        and their indices ``(B, h, w)`` long.
        """
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"the quantizer takes latents (B, {self.embed_dim}, h, w), "
                             f"got shape {tuple(z.shape)}")
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (N, D)
        idx = nearest_codes(flat, self.codebook)  # (N,)
        z_q = self.codebook[idx].to(z.dtype).reshape(b, h, w, d).permute(0, 3, 1, 2)
        return z_q, idx.reshape(b, h, w)

    def quantize(self, z: Tensor) -> Tensor:
        """Straight-through quantisation of ``z`` ``(B, D, h, w)`` with no state update."""
        z_q, _ = self.lookup(z)
        return straight_through(z, z_q)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Quantise ``z`` ``(B, D, h, w)``; in training also update the codebook state.

        Returns ``(z_q, loss, indices, stats)``: straight-through ``z_q`` ``(B, D, h, w)``;
        scalar loss (commitment, plus the codebook term when ``ema=False``); indices
        ``(B, h, w)`` long; stats ``{"perplexity", "usage"}`` of this batch (scalars).
        """
        z_q, idx = self.lookup(z)
        codebook_loss, commitment_loss = vq_losses(z, z_q, self.beta)
        loss = commitment_loss if self.ema else codebook_loss + commitment_loss
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.embed_dim).float()  # (N, D)
        counts = torch.bincount(idx.reshape(-1), minlength=self.n_embed).float()  # (K,)
        if self.training:
            self._update(flat, idx.reshape(-1), counts)
        return straight_through(z, z_q), loss, idx, _code_stats(counts)

    @torch.no_grad()
    def _update(self, flat: Tensor, idx: Tensor, counts: Tensor) -> None:
        """Moving-average counts, EMA codebook (when ``ema``) and dead-code restart."""
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat)  # (K, D)
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
            self.embed.copy_(self.embed_sum / self._smoothed_counts()[:, None])
        if self.restart_dead:
            self._restart(flat)

    def _smoothed_counts(self) -> Tensor:
        """Laplace-smoothed cluster sizes ``(K,)`` (never zero)."""
        n = self.cluster_size.sum()
        k = self.n_embed
        return (self.cluster_size + self.eps) / (n + k * self.eps) * n

    def _restart(self, flat: Tensor) -> None:
        """Re-initialise codes with ``cluster_size < dead_threshold`` to random rows of
        ``flat`` ``(N, D)`` (the current batch's encoder outputs)."""
        dead = (self.cluster_size < self.dead_threshold).nonzero().flatten()  # (n_dead,)
        if dead.numel() == 0:
            return
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        vectors = flat[pick]  # (n_dead, D)
        self.embed.data[dead] = vectors.to(self.embed.dtype)
        self.cluster_size[dead] = 1.0
        if self.ema:
            self.embed_sum[dead] = vectors


def _check_quantizer_args(n_embed: int, embed_dim: int, beta: float, decay: float) -> None:
    """One-line ``ValueError`` s for impossible :class:`VectorQuantizer` settings."""
    if n_embed < 1 or embed_dim < 1:
        raise ValueError(f"the quantizer needs n_embed >= 1 and embed_dim >= 1, got "
                         f"n_embed={n_embed}, embed_dim={embed_dim}")
    if beta < 0:
        raise ValueError(f"the commitment weight beta must be >= 0, got {beta}")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"the codebook EMA decay must be in [0, 1), got {decay}; use e.g. 0.99")


# --------------------------------------------------------------------------- encoder / decoder


class ResnetBlock(nn.Module):
    """``(GroupNorm -> SiLU -> Conv3x3) x 2`` with a residual connection, no time input.

    The VQGAN / LDM autoencoder block (Esser et al. 2021, App.; Rombach et al. 2022,
    App. G); dropout sits before the second conv and the skip is a 1x1 conv when the
    channel count changes. ``(B, in_ch, H, W) -> (B, out_ch, H, W)``.
    """

    def __init__(self, in_ch: int, out_ch: int, *, groups: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.body = nn.Sequential(
            norm(in_ch, groups), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1),
            norm(out_ch, groups), nn.SiLU(), nn.Dropout(dropout),
            nn.Conv2d(out_ch, out_ch, 3, padding=1),
        )
        self.skip: nn.Module = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, in_ch, H, W)`` -> ``(B, out_ch, H, W)``."""
        return self.skip(x) + self.body(x)


def _middle(ch: int, *, attention: bool, groups: int, dropout: float) -> nn.Sequential:
    """ResnetBlock -> single-head spatial self-attention (or identity) -> ResnetBlock."""
    attn: nn.Module = AttentionBlock(ch, num_heads=1, groups=groups) if attention else nn.Identity()
    return nn.Sequential(ResnetBlock(ch, ch, groups=groups, dropout=dropout), attn,
                         ResnetBlock(ch, ch, groups=groups, dropout=dropout))


def _head(in_ch: int, out_ch: int, groups: int) -> nn.Sequential:
    """GroupNorm -> SiLU -> Conv3x3, the last layers of encoder and decoder."""
    return nn.Sequential(norm(in_ch, groups), nn.SiLU(), nn.Conv2d(in_ch, out_ch, 3, padding=1))


def _blocks(in_ch: int, out_ch: int, n: int, groups: int, dropout: float) -> list[nn.Module]:
    """``n`` ResnetBlocks, the first mapping ``in_ch`` to ``out_ch``."""
    return [ResnetBlock(in_ch if i == 0 else out_ch, out_ch, groups=groups, dropout=dropout)
            for i in range(n)]


@dataclass(frozen=True)
class _NetConfig:
    """The encoder / decoder hyper-parameters shared by both autoencoders."""

    image_channels: int
    base_channels: int
    channel_mults: tuple[int, ...]
    num_res_blocks: int
    mid_attention: bool
    groups: int
    dropout: float
    downsample_padding: int = 1

    def channels(self, level: int) -> int:
        """Feature channels at ``level``: ``base_channels * channel_mults[level]``."""
        return self.base_channels * self.channel_mults[level]


class Encoder(nn.Module):
    """Image ``(B, C, H, W)`` -> features ``(B, out_channels, H / f, W / f)`` (module docs)."""

    def __init__(self, cfg: _NetConfig, out_channels: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.image_channels, cfg.base_channels, 3, padding=1)
        layers: list[nn.Module] = []
        ch = cfg.base_channels
        for level in range(len(cfg.channel_mults)):
            layers += _blocks(ch, cfg.channels(level), cfg.num_res_blocks, cfg.groups, cfg.dropout)
            ch = cfg.channels(level)
            if level < len(cfg.channel_mults) - 1:
                layers.append(Downsample(ch, padding=cfg.downsample_padding))
        self.down = nn.Sequential(*layers)
        self.mid = _middle(ch, attention=cfg.mid_attention, groups=cfg.groups, dropout=cfg.dropout)
        self.out = _head(ch, out_channels, cfg.groups)

    def forward(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` -> ``(B, out_channels, H / f, W / f)``."""
        return self.out(self.mid(self.down(self.conv_in(x))))


class Decoder(nn.Module):
    """Latent ``(B, z, h, w)`` -> image ``(B, C, h * f, w * f)`` (module docs)."""

    def __init__(self, cfg: _NetConfig, z_channels: int) -> None:
        super().__init__()
        top = len(cfg.channel_mults) - 1
        ch = cfg.channels(top)
        self.conv_in = nn.Conv2d(z_channels, ch, 3, padding=1)
        self.mid = _middle(ch, attention=cfg.mid_attention, groups=cfg.groups, dropout=cfg.dropout)
        layers: list[nn.Module] = []
        for level in reversed(range(top + 1)):
            out = cfg.channels(level)
            layers += _blocks(ch, out, cfg.num_res_blocks + 1, cfg.groups, cfg.dropout)
            ch = out
            if level > 0:
                layers.append(Upsample(ch))
        self.up = nn.Sequential(*layers)
        self.out = _head(ch, cfg.image_channels, cfg.groups)

    @property
    def conv_out(self) -> nn.Conv2d:
        """The final 3x3 convolution to the image channels."""
        return self.out[-1]

    def forward(self, z: Tensor) -> Tensor:
        """``z`` ``(B, z, h, w)`` -> ``(B, C, h * f, w * f)``."""
        return self.out(self.up(self.mid(self.conv_in(z))))


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
                groups: int, dropout: float, downsample_padding: int = 1) -> _NetConfig:
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
    return _NetConfig(int(data_shape[0]), base_channels, mults, num_res_blocks, mid_attention,
                      groups, dropout, int(downsample_padding))


class _Autoencoder(nn.Module):
    """Encoder, decoder and the 1x1 ``quant_conv`` / ``post_quant_conv`` of both models.

    Args:
        cfg: validated encoder / decoder settings.
        z_channels: latent channels.
        moments: encoder outputs per latent channel (2 for KL: mean and log-variance).
    """

    regularizer: ClassVar[str]

    def __init__(self, cfg: _NetConfig, data_shape: Sequence[int], z_channels: int,
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


# --------------------------------------------------------------------------- adversarial


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017, Sec. 3.2.2) as used by Esser et al. 2021.

    ``num_layers`` 4x4 stride-2 convs (widths ``base * min(2^n, 8)``; BatchNorm after all
    but the first; LeakyReLU 0.2), one 4x4 stride-1 conv, and a 4x4 stride-1 conv to one
    logit per patch. ``(B, C, H, W) -> (B, 1, h, w)``; with 3 layers a 28x28 input gives
    1x1 and 32x32 gives 2x2. Weights ``N(0, 0.02)``, BatchNorm scales ``N(1, 0.02)``
    (Radford et al. 2016).
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"the discriminator needs num_layers >= 1, got {num_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1),
                                   nn.LeakyReLU(0.2)]
        ch = base_channels
        for n in range(1, num_layers + 1):
            out = base_channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_gan_weights)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``(B, 1, h, w)`` of images ``x`` ``(B, C, H, W)``."""
        return self.main(x)


def _init_gan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv ``N(0, 0.02)``; BatchNorm weight ``N(1, 0.02)``, bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge discriminator loss ``0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``
    (Lim & Ye 2017; as in Esser et al. 2021). Logits of any shape; returns a scalar."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_gan_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor,
                        max_weight: float = 1e4) -> Tensor:
    """Adaptive weight of the GAN loss (Esser et al. 2021, eq. 7).

    ``lambda = ||grad_L rec_loss|| / (||grad_L g_loss|| + 1e-4)`` with the gradients taken
    w.r.t. the decoder's last layer ``L``, clamped to ``[0, max_weight]`` and detached. Both
    graphs are kept (``retain_graph=True``) for the backward pass that follows.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()

