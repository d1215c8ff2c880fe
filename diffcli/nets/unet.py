"""The DDPM U-Net noise-prediction network (Ho et al. 2020, Appendix B).

Layout (Ho et al. 2020, Appendix B; block lists as in Nichol & Dhariwal 2021):

* ``conv_in``: 3x3 conv to ``base_channels``;
* encoder: per level ``num_res_blocks`` :class:`ResBlock` s, then a :class:`Downsample`
  between levels (not after the last); every block's output is kept as a skip;
* middle: ResBlock -> ResBlock at the lowest resolution;
* decoder: per level ``num_res_blocks + 1`` ResBlocks, each consuming one skip by
  channel concatenation, then an :class:`Upsample` between levels;
* ``out``: GroupNorm -> SiLU -> 3x3 conv (zero-initialised, so the net outputs 0 at init).

Every stage is an :class:`EmbedSequential`, so a level's block list can later hold
self-attention blocks, residual up/down-sampling blocks (BigGAN-style) or anything else;
class conditioning belongs in :meth:`UNet.embed`, which builds the per-sample vector that
every ResBlock receives.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffcli.nets.layers import (
    Downsample,
    EmbedSequential,
    ResBlock,
    TimeEmbedding,
    Upsample,
    norm,
    zero_module,
)

__all__ = ["UNet"]


class UNet(nn.Module):
    """DDPM U-Net mapping ``(x_t, t)`` to a tensor shaped like the output image.

    Args:
        in_channels: image channels.
        out_channels: output channels; defaults to ``in_channels`` (epsilon / x0 / v
            prediction). Use ``2 * in_channels`` to also predict variances (Nichol &
            Dhariwal 2021).
        base_channels: channels at the first level; also the sinusoidal feature width.
        channel_mults: channel multiplier per level; ``len(channel_mults) - 1``
            downsamplings, so height and width must be divisible by
            ``2 ** (len(channel_mults) - 1)`` (see :meth:`check_image_size`).
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        dropout: dropout inside the residual blocks (DDPM: 0.1 on CIFAR-10).
        groups: maximum GroupNorm group count (DDPM: 32; 8 suits narrow nets).
        emb_dim: width of the timestep embedding; defaults to ``4 * base_channels``.
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        out_channels: int | None = None,
        base_channels: int = 32,
        channel_mults: Sequence[int] = (1, 2),
        num_res_blocks: int = 1,
        dropout: float = 0.0,
        groups: int = 8,
        emb_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not channel_mults:
            raise ValueError("UNet needs at least one entry in channel_mults")
        if num_res_blocks < 1:
            raise ValueError(f"UNet num_res_blocks must be >= 1, got {num_res_blocks}")
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.channel_mults = tuple(channel_mults)
        self.num_res_blocks = num_res_blocks
        emb_dim = 4 * base_channels if emb_dim is None else emb_dim
        self.emb_dim = emb_dim

        self.time_embed = TimeEmbedding(base_channels, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def res(cin: int, cout: int) -> ResBlock:
            return ResBlock(cin, cout, emb_dim, dropout=dropout, groups=groups)

        # Encoder: one EmbedSequential per stored skip (ResBlock or Downsample).
        self.down_blocks = nn.ModuleList()
        skip_chs = [base_channels]  # conv_in output is the first skip
        ch = base_channels
        for level, mult in enumerate(self.channel_mults):
            for _ in range(num_res_blocks):
                self.down_blocks.append(EmbedSequential(res(ch, base_channels * mult)))
                ch = base_channels * mult
                skip_chs.append(ch)
            if level < len(self.channel_mults) - 1:
                self.down_blocks.append(EmbedSequential(Downsample(ch)))
                skip_chs.append(ch)

        self.mid_block = EmbedSequential(res(ch, ch), res(ch, ch))

        # Decoder: each EmbedSequential consumes one skip; levels end with an Upsample.
        self.up_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for i in range(num_res_blocks + 1):
                layers: list[nn.Module] = [res(ch + skip_chs.pop(), base_channels * mult)]
                ch = base_channels * mult
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                self.up_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            norm(ch, groups),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, self.out_channels, 3, padding=1)),
        )

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (``2 ** (levels - 1)``)."""
        return 2 ** (len(self.channel_mults) - 1)

    def check_image_size(self, height: int, width: int | None = None) -> None:
        """Raise ``ValueError`` unless a ``height x width`` image fits the level count.

        Callers that know the image size (e.g. from the data config) should call this
        right after construction; :meth:`forward` calls it on every input as well.
        """
        width = height if width is None else width
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(
                f"UNet with {len(self.channel_mults)} levels needs height and width "
                f"divisible by {m}, got {height}x{width}; use fewer channel_mults"
            )

    def embed(self, t: Tensor) -> Tensor:
        """Per-sample conditioning vector ``(B, emb_dim)`` given to every ResBlock.

        Extension point: class conditioning (Nichol & Dhariwal 2021) adds a label
        embedding to this vector.
        """
        return self.time_embed(t)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Predict from noisy images ``x`` ``(B, C, H, W)`` at timesteps ``t`` ``(B,)``.

        Returns:
            Tensor of shape ``(B, out_channels, H, W)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        self.check_image_size(x.shape[-2], x.shape[-1])
        emb = self.embed(t)  # (B, emb_dim)
        h = self.conv_in(x)  # (B, base, H, W)
        skips = [h]
        for block in self.down_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.mid_block(h, emb)  # (B, C_last, H / m, W / m)
        for block in self.up_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)  # (B, out_channels, H, W)
