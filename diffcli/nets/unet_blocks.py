"""The blocks of :class:`~diffcli.nets.unet.UNet` and its down path, middle, up path and head.

A :class:`UNetBlocks` holds the settings every block of one U-Net shares and builds them
(Ho et al. 2020, App. B; Nichol & Dhariwal 2021; Rombach et al. 2022, Sec. 3.3):

* :meth:`~UNetBlocks.down_path`: per level ``num_res_blocks`` ResBlocks (each followed by an
  AttentionBlock and / or a SpatialTransformer at the chosen levels), then a downsampler
  between levels; one ``EmbedSequential`` per stored skip;
* :meth:`~UNetBlocks.middle`: ResBlock -> [AttentionBlock] -> [SpatialTransformer] -> ResBlock;
* :meth:`~UNetBlocks.up_path`: per level (bottom to top) ``num_res_blocks + 1`` ResBlocks, each
  consuming one skip by channel concatenation, and an upsampler between levels;
* :meth:`~UNetBlocks.head`: GroupNorm -> SiLU -> zero-initialised 3x3 conv.

The builders create the blocks in the same order as the U-Net always has, so that parameter
names (state_dict keys) and seeded initialisations stay as they are in existing checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from diffcli.nets.attention import SpatialTransformer
from diffcli.nets.layers import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    ResBlock,
    Upsample,
    norm,
    zero_module,
)

__all__ = ["UNetBlocks"]


@dataclass(frozen=True)
class UNetBlocks:
    """The settings every block of one U-Net shares (see :class:`~diffcli.nets.unet.UNet` for
    each option), and the builders of its parts.

    Attributes:
        emb_dim: width of the conditioning vector every ResBlock takes.
        dropout, groups, use_scale_shift_norm, norm_eps: the ResBlocks' settings (``groups``
            and ``norm_eps`` also of the AttentionBlocks and the output norm).
        num_heads, num_head_channels: the AttentionBlocks' heads.
        resblock_updown: resample with ResBlocks (BigGAN / ADM) instead of the
            Downsample / Upsample convolutions; ``downsample_padding`` is the latter's padding.
        attention_levels, transformer_levels: levels whose ResBlocks are followed by an
            AttentionBlock / a SpatialTransformer.
        context_dim, transformer_depth, transformer_heads: the SpatialTransformers' settings.
    """

    emb_dim: int
    dropout: float
    groups: int
    use_scale_shift_norm: bool
    norm_eps: float
    num_heads: int
    num_head_channels: int | None
    resblock_updown: bool
    downsample_padding: int
    attention_levels: frozenset[int]
    transformer_levels: frozenset[int]
    context_dim: int | None
    transformer_depth: int
    transformer_heads: int

    def res(self, cin: int, cout: int, *, up: bool = False, down: bool = False) -> ResBlock:
        """A ResBlock ``(B, cin, H, W) -> (B, cout, H', W')`` conditioned on ``(B, emb_dim)``."""
        return ResBlock(
            cin,
            cout,
            self.emb_dim,
            dropout=self.dropout,
            groups=self.groups,
            up=up,
            down=down,
            use_scale_shift_norm=self.use_scale_shift_norm,
            norm_eps=self.norm_eps,
        )

    def attn(self, ch: int) -> AttentionBlock:
        """Spatial self-attention over ``(B, ch, H, W)``."""
        return AttentionBlock(ch, self.num_heads, self.num_head_channels, self.groups,
                              self.norm_eps)

    def xformer(self, ch: int) -> SpatialTransformer:
        """A spatial transformer over ``(B, ch, H, W)`` cross-attending to the context."""
        return SpatialTransformer(ch, int(self.context_dim or 0), depth=self.transformer_depth,
                                  num_heads=self.transformer_heads, groups=self.groups)

    def after_res(self, level: int, ch: int) -> list[nn.Module]:
        """The blocks that follow each ResBlock at ``level``: [Attention][Transformer]."""
        layers: list[nn.Module] = []
        if level in self.attention_levels:
            layers.append(self.attn(ch))
        if level in self.transformer_levels:
            layers.append(self.xformer(ch))
        return layers

    def down(self, ch: int) -> nn.Module:
        """Halve the height and width of ``(B, ch, H, W)``."""
        if self.resblock_updown:
            return self.res(ch, ch, down=True)
        return Downsample(ch, self.downsample_padding)

    def up(self, ch: int) -> nn.Module:
        """Double the height and width of ``(B, ch, H, W)``."""
        return self.res(ch, ch, up=True) if self.resblock_updown else Upsample(ch)

    def down_path(self, base_channels: int, channel_mults: tuple[int, ...],
                  num_res_blocks: int) -> tuple[nn.ModuleList, list[int], int]:
        """The encoder: one EmbedSequential per stored skip (ResBlock [+ Attn] or downsampler).

        Returns ``(blocks, skip_chs, ch)``: the blocks, the channels of every skip (the
        ``conv_in`` output's first) and the channels of the last block's output.
        """
        blocks = nn.ModuleList()
        skip_chs = [base_channels]  # conv_in output is the first skip
        ch = base_channels
        last = len(channel_mults) - 1
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [self.res(ch, base_channels * mult)]
                ch = base_channels * mult
                layers += self.after_res(level, ch)
                blocks.append(EmbedSequential(*layers))
                skip_chs.append(ch)
            if level < last:
                blocks.append(EmbedSequential(self.down(ch)))
                skip_chs.append(ch)
        return blocks, skip_chs, ch

    def middle(self, ch: int, *, attention: bool, transformer: bool) -> EmbedSequential:
        """ResBlock -> [AttentionBlock] -> [SpatialTransformer] -> ResBlock at ``ch`` channels.

        The AttentionBlock is built even without ``attention`` (then dropped): its draws from
        the random generator are part of every seeded initialisation made so far.
        """
        mid: list[nn.Module] = [self.res(ch, ch), self.attn(ch), self.res(ch, ch)]
        mid = mid if attention else mid[::2]
        if transformer:
            mid.insert(-1, self.xformer(ch))
        return EmbedSequential(*mid)

    def up_path(self, ch: int, skip_chs: list[int], base_channels: int,
                channel_mults: tuple[int, ...], num_res_blocks: int) -> tuple[nn.ModuleList, int]:
        """The decoder: each EmbedSequential consumes one skip (popped from ``skip_chs``, whose
        channels it adds to its input's ``ch``); levels end with an upsampler.

        Returns the blocks and the channels of the last block's output.
        """
        blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                layers = [self.res(ch + skip_chs.pop(), base_channels * mult)]
                ch = base_channels * mult
                layers += self.after_res(level, ch)
                if level > 0 and i == num_res_blocks:
                    layers.append(self.up(ch))
                blocks.append(EmbedSequential(*layers))
        return blocks, ch

    def head(self, ch: int, out_channels: int) -> nn.Sequential:
        """GroupNorm -> SiLU -> 3x3 conv ``(B, ch, H, W) -> (B, out_channels, H, W)``, the conv
        zero-initialised so that the net outputs 0 at initialisation."""
        return nn.Sequential(
            norm(ch, self.groups, self.norm_eps),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)),
        )
