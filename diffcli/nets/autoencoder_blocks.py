"""The encoder and decoder of the latent-diffusion autoencoders and their building blocks.

Layout shared by :class:`~diffcli.nets.autoencoder.KLAutoencoder` and
:class:`~diffcli.nets.autoencoder.VQAutoencoder` (the VQGAN / LDM encoder-decoder, Esser et
al. 2021, App.; Rombach et al. 2022, App. G), with downsampling factor
``f = 2 ** (levels - 1)`` (:func:`downsample_factor`):

* encoder (:class:`Encoder`): ``conv_in`` 3x3 -> per level ``num_res_blocks``
  :class:`ResnetBlock` s and a stride-2 3x3 :class:`~diffcli.nets.layers.Downsample` between
  levels (``downsample_padding`` 1: padded one pixel on every side; 0: on the right and bottom
  only, as in the LDM / Stable Diffusion reference code and diffusers' ``AutoencoderKL``) ->
  middle (ResnetBlock, optional single-head self-attention, ResnetBlock) -> GroupNorm, SiLU,
  3x3 conv to ``2 * z_channels`` (KL: mean and log-variance) or ``z_channels`` (VQ);
  ``(B, C, H, W) -> (B, out_channels, H / f, W / f)``;
* decoder (:class:`Decoder`): ``conv_in`` -> middle -> per level (top to bottom)
  ``num_res_blocks + 1`` ResnetBlocks and a nearest x2
  :class:`~diffcli.nets.layers.Upsample` + conv between levels -> GroupNorm, SiLU, 3x3
  ``conv_out`` to the image channels; ``(B, z, h, w) -> (B, C, h * f, w * f)``.

The 1x1 ``quant_conv`` / ``post_quant_conv`` around them belong to the autoencoders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from diffcli.nets.layers import AttentionBlock, Downsample, Upsample, norm

__all__ = ["Decoder", "Encoder", "NetConfig", "ResnetBlock", "check_divisible",
           "downsample_factor"]


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
class NetConfig:
    """The encoder / decoder hyper-parameters shared by both autoencoders (validated by
    :class:`~diffcli.nets.autoencoder.KLAutoencoder` / ``VQAutoencoder``)."""

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

    def __init__(self, cfg: NetConfig, out_channels: int) -> None:
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

    def __init__(self, cfg: NetConfig, z_channels: int) -> None:
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

