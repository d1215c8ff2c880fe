"""The DDPM / ADM U-Net noise-prediction network (Ho et al. 2020; Nichol & Dhariwal 2021).

Layout (Ho et al. 2020, Appendix B; block lists as in Nichol & Dhariwal 2021):

* ``conv_in``: 3x3 conv to ``base_channels``;
* encoder: per level ``num_res_blocks`` :class:`ResBlock` s, each followed by an
  :class:`AttentionBlock` at attention levels, then a :class:`Downsample` between levels
  (not after the last); every block's output is kept as a skip;
* middle: ResBlock -> AttentionBlock -> ResBlock at the lowest resolution (DDPM), or
  ResBlock -> ResBlock without attention;
* decoder: per level ``num_res_blocks + 1`` ResBlocks (each followed by an
  AttentionBlock at attention levels), each consuming one skip by channel
  concatenation, then an :class:`Upsample` between levels;
* ``out``: GroupNorm -> SiLU -> 3x3 conv (zero-initialised, so the net outputs 0 at init).

ADM options (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021): multi-head attention,
residual blocks that resample (``resblock_updown``, BigGAN-style) instead of the
Downsample / Upsample convolutions, scale-shift norm, and a class embedding added to the
timestep embedding (:meth:`UNet.embed`) with one extra "null" label for classifier-free
guidance (Ho & Salimans 2022).

Text conditioning (Latent / Stable Diffusion, Rombach et al. 2022, Sec. 3.3): with
``context_dim`` set, chosen levels follow every ResBlock (and its AttentionBlock) with a
:class:`~diffcli.nets.attention.SpatialTransformer` that cross-attends to a token context
``(B, L, context_dim)`` passed as ``forward(..., context=, context_mask=)``.

With the defaults the network is the small attention-free U-Net of ``model=unet``; the
DDPM CIFAR-10 model (35.7M parameters) is::

    UNet(in_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
         attention_resolutions=(16,), image_size=32, dropout=0.1, groups=32)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffcli.nets.attention import check_token_context
from diffcli.nets.inputs import add_label_embedding, pad_to_multiple
from diffcli.nets.layers import TimeEmbedding
from diffcli.nets.unet_blocks import UNetBlocks
from diffcli.nets.unet_options import (
    attention_level_set,
    image_channels_and_size,
    resolve_context,
    resolve_out_channels,
)
from diffcli.nets.unet_options import level_resolutions as level_resolutions  # importable here

__all__ = ["UNet"]


class UNet(nn.Module):
    """DDPM / ADM U-Net mapping ``(x_t, t[, y])`` to a tensor shaped like the output image.

    Args:
        in_channels: image channels.
        out_channels: output channels; defaults to ``in_channels`` (epsilon / x0 / v
            prediction), or ``2 * in_channels`` with ``learn_sigma``.
        base_channels: channels at the first level; also the sinusoidal feature width.
        channel_mults: channel multiplier per level; ``len(channel_mults) - 1``
            downsamplings; inputs whose height or width is not a multiple of
            ``2 ** (len(channel_mults) - 1)`` are padded and the output cropped (:meth:`pad`).
        num_res_blocks: residual blocks per encoder level (the decoder has one more).
        dropout: dropout inside the residual blocks (DDPM: 0.1 on CIFAR-10).
        groups: maximum GroupNorm group count (DDPM: 32; 8 suits narrow nets).
        emb_dim: width of the timestep embedding; defaults to ``4 * base_channels``.
        attention_resolutions: feature-map sizes (pixels) at which every ResBlock is
            followed by an :class:`AttentionBlock`, in the encoder and the decoder
            (DDPM CIFAR-10: ``(16,)``). Needs ``image_size``.
        image_size: input height in pixels; only used to turn ``attention_resolutions``
            into levels.
        attention_levels: alternative to ``attention_resolutions`` that does not depend
            on the data: level indices (0 = full resolution) that get attention.
        num_heads: attention heads (DDPM: 1).
        num_head_channels: channels per head; overrides ``num_heads`` when given (ADM: 64).
        resblock_updown: resample with ``ResBlock(down=True)`` / ``ResBlock(up=True)``
            instead of :class:`Downsample` / :class:`Upsample` (BigGAN-style, ADM).
        use_scale_shift_norm: condition ResBlocks by scale and shift of the second
            GroupNorm (Nichol & Dhariwal 2021) instead of adding a bias.
        mid_attention: put an AttentionBlock between the two middle ResBlocks; ``None``
            means "when any level has attention" (DDPM).
        num_classes: number of class labels for class conditioning; label
            ``num_classes`` is the null (unconditional) label for classifier-free
            guidance. ``None``: unconditional net.
        data_shape: one sample's shape ``(C, H, W)``, the keyword every diffcli network
            takes from the data: sets ``in_channels`` and ``image_size`` and checks that
            ``H x W`` fits the levels.
        decoder: False builds the encoder half only (:meth:`encode`; the noise-aware
            classifier of :mod:`diffcli.nets.classifier`).
        learn_sigma: also predict the reverse-process variances (Nichol & Dhariwal 2021,
            Sec. 3.1, eq. 15): the output has ``2 * in_channels`` channels, the prediction
            (eps / x0 / v) then a raw r per pixel, read as the interpolation fraction
            v = (r + 1) / 2 between log beta_t and log beta-tilde_t (see
            :class:`~diffcli.diffusion.denoiser.Denoiser`). Only the last conv widens.
        context_dim: width of the token context for cross-attention (Rombach et al. 2022,
            Sec. 3.3), e.g. a text encoder's width. ``None``: no spatial transformers and
            no new parameters (every existing config and checkpoint is unchanged).
        transformer_resolutions: feature-map sizes (pixels) at which every ResBlock, in
            the encoder and the decoder, is followed by a
            :class:`~diffcli.nets.attention.SpatialTransformer` (after any AttentionBlock
            there). Needs ``image_size``.
        transformer_levels: alternative to ``transformer_resolutions``: level indices
            (0 = full resolution) that get spatial transformers.
        transformer_depth: transformer blocks per spatial transformer (SD: 1).
        transformer_heads: attention heads per spatial transformer; must divide the
            channels of every level that has one.
        mid_transformer: put a spatial transformer between the two middle ResBlocks
            (after the middle AttentionBlock, if any); ``None`` means "when any level has
            a transformer" (SD).
        downsample_padding: padding of the stride-2 :class:`Downsample` convolutions: 1
            pads every side (default), 0 pads only the right and bottom by one pixel, as
            the DDPM reference code and diffusers' ``downsample_padding=0`` (e.g.
            ``google/ddpm-cifar10-32``). Unused with ``resblock_updown``.
        norm_eps: epsilon of the U-Net's GroupNorms (ResBlocks, AttentionBlocks, output
            norm; not the spatial transformers'). PyTorch's 1e-5 by default; the DDPM
            reference code (and diffusers' DDPM checkpoints) use 1e-6.
        time_freq_shift: ``freq_shift`` of the sinusoidal timestep features (see
            :func:`~diffcli.nets.layers.timestep_embedding`): 0 (default, ADM) or 1 (DDPM
            reference code; diffusers' ``freq_shift=1``).
        time_sin_first: order the timestep features ``[sin, cos]`` (DDPM reference code;
            diffusers' ``flip_sin_to_cos=False``) instead of ``[cos, sin]`` (default, ADM).
        grad_checkpointing: activation checkpointing: recompute each block of the down path,
            the middle block and each block of the up path (every ``EmbedSequential``: a
            ResBlock with its attention / spatial transformer, or a resampler) in the backward
            pass (:func:`torch.utils.checkpoint.checkpoint`, ``use_reentrant=False``, which
            replays dropout with the same random state) while training with gradients on:
            only the blocks' inputs are kept, for about a third more compute. Same outputs
            and gradients, no new parameters (state_dict keys unchanged).

    Raises:
        ValueError: transformer levels (or ``mid_transformer``) without ``context_dim``,
            or ``context_dim`` with no transformer anywhere.
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
        attention_resolutions: Sequence[int] = (),
        image_size: int | None = None,
        attention_levels: Sequence[int] | None = None,
        num_heads: int = 1,
        num_head_channels: int | None = None,
        resblock_updown: bool = False,
        use_scale_shift_norm: bool = False,
        mid_attention: bool | None = None,
        num_classes: int | None = None,
        data_shape: Sequence[int] | None = None,
        decoder: bool = True,
        learn_sigma: bool = False,
        context_dim: int | None = None,
        transformer_resolutions: Sequence[int] = (),
        transformer_levels: Sequence[int] | None = None,
        transformer_depth: int = 1,
        transformer_heads: int = 4,
        mid_transformer: bool | None = None,
        downsample_padding: int = 1,
        norm_eps: float = 1e-5,
        time_freq_shift: float = 0.0,
        time_sin_first: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = bool(grad_checkpointing)
        if data_shape is not None:  # the interface every diffcli network takes
            in_channels, image_size = image_channels_and_size(data_shape, image_size)
        self._set_sizes(in_channels, out_channels, learn_sigma, channel_mults, num_res_blocks,
                        image_size, num_classes, downsample_padding, base_channels, emb_dim)
        mid_transformer = self._set_levels(attention_resolutions, attention_levels,
                                           transformer_resolutions, transformer_levels,
                                           context_dim, mid_transformer)
        blocks = UNetBlocks(
            emb_dim=self.emb_dim, dropout=dropout, groups=groups,
            use_scale_shift_norm=use_scale_shift_norm, norm_eps=norm_eps, num_heads=num_heads,
            num_head_channels=num_head_channels, resblock_updown=resblock_updown,
            downsample_padding=downsample_padding, attention_levels=self.attention_levels,
            transformer_levels=self.transformer_levels, context_dim=context_dim,
            transformer_depth=transformer_depth, transformer_heads=transformer_heads,
        )
        ch, skip_chs = self._build_encoder(blocks, base_channels, mid_attention, mid_transformer,
                                           time_freq_shift, time_sin_first)
        self.up_blocks = nn.ModuleList()
        self.out = None
        if decoder:
            self._build_decoder(blocks, ch, skip_chs, base_channels)

    def _set_sizes(self, in_channels: int, out_channels: int | None, learn_sigma: bool,
                   channel_mults: Sequence[int], num_res_blocks: int, image_size: int | None,
                   num_classes: int | None, downsample_padding: int, base_channels: int,
                   emb_dim: int | None) -> None:
        """Check the channel, level and class counts and record them as attributes, with the
        embedding width ``emb_dim`` (default ``4 * base_channels``)."""
        if not channel_mults:
            raise ValueError("UNet needs at least one entry in channel_mults")
        if num_res_blocks < 1:
            raise ValueError(f"UNet num_res_blocks must be >= 1, got {num_res_blocks}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"UNet num_classes must be >= 1 or None, got {num_classes}")
        if downsample_padding not in (0, 1):
            raise ValueError(f"UNet downsample_padding must be 0 or 1, got {downsample_padding}")
        self.in_channels = in_channels
        self.learn_sigma = bool(learn_sigma)
        self.out_channels = resolve_out_channels(in_channels, out_channels, self.learn_sigma)
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.num_res_blocks = num_res_blocks
        self.image_size = image_size
        self.num_classes = num_classes
        self.emb_dim = 4 * base_channels if emb_dim is None else emb_dim

    def _set_levels(self, attention_resolutions: Sequence[int],
                    attention_levels: Sequence[int] | None,
                    transformer_resolutions: Sequence[int],
                    transformer_levels: Sequence[int] | None, context_dim: int | None,
                    mid_transformer: bool | None) -> bool:
        """Record the levels with self-attention and with spatial transformers
        (:func:`~diffcli.nets.unet_options.attention_level_set`) and ``context_dim``; return
        ``mid_transformer`` resolved against them
        (:func:`~diffcli.nets.unet_options.resolve_context`)."""
        self.attention_levels = attention_level_set(
            len(self.channel_mults), attention_resolutions, attention_levels, self.image_size
        )
        self.transformer_levels = attention_level_set(
            len(self.channel_mults), transformer_resolutions, transformer_levels, self.image_size,
            name="transformer",
        )
        mid_transformer = resolve_context(context_dim, self.transformer_levels, mid_transformer)
        self.context_dim = context_dim
        return mid_transformer

    def _build_encoder(self, blocks: UNetBlocks, base_channels: int, mid_attention: bool | None,
                       mid_transformer: bool, time_freq_shift: float,
                       time_sin_first: bool) -> tuple[int, list[int]]:
        """Everything :meth:`encode` runs: the timestep (and class) embedding, ``conv_in``, the
        down path and the middle block. Returns the channels of the middle block's output and
        those of every skip, for :meth:`_build_decoder`.

        The layers are made in the order their parameters are drawn from the random generator
        (and the state_dict keys follow it): this, then :meth:`_build_decoder`."""
        self.time_embed = TimeEmbedding(base_channels, self.emb_dim, freq_shift=time_freq_shift,
                                        sin_first=time_sin_first)
        # Row ``num_classes`` is the null label (classifier-free guidance).
        self.label_embed = (None if self.num_classes is None
                            else nn.Embedding(self.num_classes + 1, self.emb_dim))
        self.conv_in = nn.Conv2d(self.in_channels, base_channels, 3, padding=1)
        self.down_blocks, skip_chs, ch = blocks.down_path(base_channels, self.channel_mults,
                                                          self.num_res_blocks)
        if mid_attention is None:  # DDPM: attention in the middle when any level has it
            mid_attention = bool(self.attention_levels)
        self.mid_block = blocks.middle(ch, attention=mid_attention, transformer=mid_transformer)
        self.encoder_channels = ch  # channels of :meth:`encode`'s output
        return ch, skip_chs

    def _build_decoder(self, blocks: UNetBlocks, ch: int, skip_chs: list[int],
                       base_channels: int) -> None:
        """Decoder: each EmbedSequential consumes one skip; levels end with an upsampler."""
        self.up_blocks, ch = blocks.up_path(ch, skip_chs, base_channels, self.channel_mults,
                                            self.num_res_blocks)
        self.out = blocks.head(ch, self.out_channels)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this (``2 ** (levels - 1)``)."""
        return 2 ** (len(self.channel_mults) - 1)

    def check_image_size(self, height: int, width: int | None = None) -> None:
        """Raise ``ValueError`` unless a ``height x width`` image fits the level count without
        padding (:meth:`pad`): for exports to tools that do not pad (diffusers, ONNX)."""
        width = height if width is None else width
        m = self.size_multiple
        if height % m or width % m:
            raise ValueError(
                f"UNet with {len(self.channel_mults)} levels needs height and width "
                f"divisible by {m}, got {height}x{width}; use fewer channel_mults"
            )

    def embed(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Per-sample conditioning vector ``(B, emb_dim)`` given to every ResBlock.

        The timestep embedding, plus a learned class embedding for class-conditional nets
        (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021). For those, ``y`` ``(B,)`` holds
        integer labels in ``0 .. num_classes``, ``num_classes`` being the null label;
        ``y=None`` means the null label for every sample (classifier-free guidance's
        unconditional branch, Ho & Salimans 2022).

        Raises:
            ValueError: ``y`` given to an unconditional net, or ``y`` not integer ``(B,)``.
        """
        emb = self.time_embed(t)  # (B, emb_dim)
        return add_label_embedding("UNet", emb, self.label_embed, self.num_classes, y)

    def encode(self, x: Tensor, t: Tensor, y: Tensor | None = None, *,
               context: Tensor | None = None,
               context_mask: Tensor | None = None) -> tuple[Tensor, list[Tensor], Tensor]:
        """The encoder half: ``(h, skips, emb)`` with h ``(B, encoder_channels, H / m, W / m)``
        after the middle block, the skip activations and the conditioning ``(B, emb_dim)``.

        ``context`` ``(B, L, context_dim)`` and ``context_mask`` ``(B, L)`` bool feed the
        spatial transformers (see :meth:`forward`)."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"UNet expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        self.check_context(x.shape[0], context, context_mask)
        emb = self.embed(t, y)  # (B, emb_dim)
        h = self.conv_in(self.pad(x))  # (B, base, H', W'), H' and W' multiples of size_multiple
        skips = [h]
        for block in self.down_blocks:
            h = self._run_block(block, h, emb, context, context_mask)
            skips.append(h)
        return self._run_block(self.mid_block, h, emb, context, context_mask), skips, emb

    def _run_block(self, block: nn.Module, h: Tensor, emb: Tensor, context: Tensor | None,
                   context_mask: Tensor | None) -> Tensor:
        """One EmbedSequential, recomputed in backward when checkpointing while training."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, context_mask, use_reentrant=False)
        return block(h, emb, context, context_mask)

    def check_context(self, batch: int, context: Tensor | None,
                      context_mask: Tensor | None) -> None:
        """Raise ``ValueError`` unless ``context`` / ``context_mask`` suit this net.

        ``context`` must be ``(batch, L, context_dim)`` (only for nets built with
        ``context_dim``); ``context_mask``, only with a context, ``(batch, L)`` bool.
        """
        check_token_context("UNet", self.context_dim, batch, context, context_mask,
                            "set context_dim and transformer_levels")

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, *,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """Predict from noisy images ``x`` ``(B, C, H, W)`` at timesteps ``t`` ``(B,)``.

        ``y`` ``(B,)``: optional class labels (class-conditional nets only, see :meth:`embed`).
        ``context`` ``(B, L, context_dim)``: token context for the spatial transformers'
        cross-attention (Rombach et al. 2022, Sec. 3.3), with ``context_mask`` ``(B, L)``
        bool (True = attend; ``None`` = all tokens). ``context=None`` skips the
        cross-attention (the unconditional path).

        Returns:
            Tensor of shape ``(B, out_channels, H, W)``.
        """
        if self.out is None:
            raise ValueError("this UNet was built without a decoder (decoder=false): use encode")
        h, skips, emb = self.encode(x, t, y, context=context, context_mask=context_mask)
        for block in self.up_blocks:
            h = self._run_block(block, torch.cat([h, skips.pop()], dim=1), emb, context,
                                context_mask)
        return self.out(h)[..., : x.shape[-2], : x.shape[-1]]  # (B, out_channels, H, W)

    def pad(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` padded at the bottom and right (reflected) to the next
        multiple of :attr:`size_multiple`, as latent diffusion pads 7x7 latents to 8x8; an
        input that already fits is returned as it is, so its outputs do not change.
        :meth:`forward` crops its output back to ``H x W``."""
        return pad_to_multiple(x, self.size_multiple)
