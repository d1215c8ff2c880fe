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

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcli.nets.attention import SpatialTransformer
from diffcli.nets.layers import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    ResBlock,
    TimeEmbedding,
    Upsample,
    norm,
    zero_module,
)

__all__ = ["UNet"]


def level_resolutions(image_size: int, num_levels: int) -> list[int]:
    """Feature-map side length at each level: ``image_size`` padded to a multiple of
    ``2 ** (num_levels - 1)`` (:meth:`UNet.pad`), then halved per level."""
    m = 2 ** (num_levels - 1)
    sizes = [-(-image_size // m) * m]
    for _ in range(num_levels - 1):
        sizes.append(-(-sizes[-1] // 2))
    return sizes


def attention_level_set(
    num_levels: int,
    attention_resolutions: Sequence[int],
    attention_levels: Sequence[int] | None,
    image_size: int | None,
    name: str = "attention",
) -> frozenset[int]:
    """Translate ``attention_resolutions`` (pixels) or ``attention_levels`` to level indices.

    ``name`` is the option prefix used in error messages (``"transformer"`` for the
    spatial transformers' ``transformer_resolutions`` / ``transformer_levels``).

    Raises:
        ValueError: both are given; resolutions without ``image_size``; a resolution the
            net does not have; a level outside ``0 .. num_levels - 1``.
    """
    resolutions = [int(r) for r in attention_resolutions]
    levels = [int(lv) for lv in attention_levels or ()]
    if resolutions and levels:
        raise ValueError(
            f"UNet: give {name}_resolutions or {name}_levels, not both "
            f"(got {resolutions} and {levels}); set the other to null / []"
        )
    if resolutions:
        if image_size is None:
            raise ValueError(
                f"UNet: {name}_resolutions={resolutions} needs image_size (the input "
                "height in pixels) to find the levels; pass image_size or use "
                f"{name}_levels (0 = full resolution)"
            )
        sizes = level_resolutions(image_size, num_levels)
        missing = [r for r in resolutions if r not in sizes]
        if missing:
            raise ValueError(
                f"UNet: {name} resolution(s) {missing} not among this net's resolutions "
                f"{sizes} (image_size={image_size}, {num_levels} levels)"
            )
        return frozenset(sizes.index(r) for r in resolutions)
    bad = [lv for lv in levels if not 0 <= lv < num_levels]
    if bad:
        raise ValueError(
            f"UNet: {name} level(s) {bad} out of range for {num_levels} levels "
            f"(valid: 0..{num_levels - 1}, 0 = full resolution)"
        )
    return frozenset(levels)


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
    ) -> None:
        super().__init__()
        if data_shape is not None:  # the interface every diffcli network takes
            in_channels, image_size = _image_shape(data_shape, image_size)
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
        self.out_channels = _out_channels(in_channels, out_channels, self.learn_sigma)
        self.channel_mults = tuple(int(m) for m in channel_mults)
        self.num_res_blocks = num_res_blocks
        self.image_size = image_size
        self.num_classes = num_classes
        self.attention_levels = attention_level_set(
            len(self.channel_mults), attention_resolutions, attention_levels, image_size
        )
        if mid_attention is None:
            mid_attention = bool(self.attention_levels)
        self.transformer_levels = attention_level_set(
            len(self.channel_mults), transformer_resolutions, transformer_levels, image_size,
            name="transformer",
        )
        mid_transformer = _check_context(context_dim, self.transformer_levels, mid_transformer)
        self.context_dim = context_dim
        emb_dim = 4 * base_channels if emb_dim is None else emb_dim
        self.emb_dim = emb_dim

        self.time_embed = TimeEmbedding(base_channels, emb_dim, freq_shift=time_freq_shift,
                                        sin_first=time_sin_first)
        # Row ``num_classes`` is the null label (classifier-free guidance).
        self.label_embed = None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim)
        self.conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)

        def res(cin: int, cout: int, *, up: bool = False, down: bool = False) -> ResBlock:
            return ResBlock(
                cin,
                cout,
                emb_dim,
                dropout=dropout,
                groups=groups,
                up=up,
                down=down,
                use_scale_shift_norm=use_scale_shift_norm,
                norm_eps=norm_eps,
            )

        def attn(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_heads, num_head_channels, groups, norm_eps)

        def xformer(ch: int) -> SpatialTransformer:
            return SpatialTransformer(ch, int(context_dim or 0), depth=transformer_depth,
                                      num_heads=transformer_heads, groups=groups)

        def after_res(level: int, ch: int) -> list[nn.Module]:
            """The blocks that follow each ResBlock at ``level``: [Attention][Transformer]."""
            layers: list[nn.Module] = []
            if level in self.attention_levels:
                layers.append(attn(ch))
            if level in self.transformer_levels:
                layers.append(xformer(ch))
            return layers

        def down(ch: int) -> nn.Module:
            return res(ch, ch, down=True) if resblock_updown else Downsample(ch, downsample_padding)

        def up(ch: int) -> nn.Module:
            return res(ch, ch, up=True) if resblock_updown else Upsample(ch)

        # Encoder: one EmbedSequential per stored skip (ResBlock [+ Attn] or downsampler).
        self.down_blocks = nn.ModuleList()
        skip_chs = [base_channels]  # conv_in output is the first skip
        ch = base_channels
        last = len(self.channel_mults) - 1
        for level, mult in enumerate(self.channel_mults):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, base_channels * mult)]
                ch = base_channels * mult
                layers += after_res(level, ch)
                self.down_blocks.append(EmbedSequential(*layers))
                skip_chs.append(ch)
            if level < last:
                self.down_blocks.append(EmbedSequential(down(ch)))
                skip_chs.append(ch)

        mid: list[nn.Module] = [res(ch, ch), attn(ch), res(ch, ch)]
        mid = mid if mid_attention else mid[::2]
        if mid_transformer:
            mid.insert(-1, xformer(ch))
        self.mid_block = EmbedSequential(*mid)
        self.encoder_channels = ch  # channels of :meth:`encode`'s output
        self.up_blocks = nn.ModuleList()
        self.out = None
        if decoder:
            self._build_decoder(ch, skip_chs, base_channels, groups, res, after_res, up,
                                norm_eps)

    def _build_decoder(self, ch: int, skip_chs: list[int], base_channels: int, groups: int,
                       res: Callable[..., nn.Module],
                       after_res: Callable[[int, int], list[nn.Module]],
                       up: Callable[[int], nn.Module], norm_eps: float = 1e-5) -> None:
        """Decoder: each EmbedSequential consumes one skip; levels end with an upsampler."""
        num_res_blocks = self.num_res_blocks
        for level, mult in reversed(list(enumerate(self.channel_mults))):
            for i in range(num_res_blocks + 1):
                layers = [res(ch + skip_chs.pop(), base_channels * mult)]
                ch = base_channels * mult
                layers += after_res(level, ch)
                if level > 0 and i == num_res_blocks:
                    layers.append(up(ch))
                self.up_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(
            norm(ch, groups, norm_eps),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, self.out_channels, 3, padding=1)),
        )

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
        if self.label_embed is None:
            if y is not None:
                raise ValueError("UNet got class labels y but was built with num_classes=None")
            return emb
        if y is None:
            y = torch.full((emb.shape[0],), self.num_classes, dtype=torch.long, device=emb.device)
        elif y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
            raise ValueError(
                f"UNet expects integer class labels of shape (B,), got {y.dtype} {tuple(y.shape)}"
            )
        return emb + self.label_embed(y).to(emb.dtype)  # (B, emb_dim)

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
            h = block(h, emb, context, context_mask)
            skips.append(h)
        return self.mid_block(h, emb, context, context_mask), skips, emb

    def check_context(self, batch: int, context: Tensor | None,
                      context_mask: Tensor | None) -> None:
        """Raise ``ValueError`` unless ``context`` / ``context_mask`` suit this net.

        ``context`` must be ``(batch, L, context_dim)`` (only for nets built with
        ``context_dim``); ``context_mask``, only with a context, ``(batch, L)`` bool.
        """
        if context is None:
            if context_mask is not None:
                raise ValueError("UNet got context_mask without context; pass both or neither")
            return
        if self.context_dim is None:
            raise ValueError("UNet got a context but was built with context_dim=None; "
                             "set context_dim and transformer_levels to condition on tokens")
        if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != self.context_dim:
            raise ValueError(f"UNet expects context of shape ({batch}, L, {self.context_dim}), "
                             f"got {tuple(context.shape)}")
        if context_mask is not None and (context_mask.dtype != torch.bool
                                         or context_mask.shape != context.shape[:2]):
            raise ValueError(f"UNet expects context_mask as bool ({batch}, {context.shape[1]}) "
                             f"(True = attend), got {context_mask.dtype} "
                             f"{tuple(context_mask.shape)}")

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
            h = block(torch.cat([h, skips.pop()], dim=1), emb, context, context_mask)
        return self.out(h)[..., : x.shape[-2], : x.shape[-1]]  # (B, out_channels, H, W)

    def pad(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` padded at the bottom and right (reflected) to the next
        multiple of :attr:`size_multiple`, as latent diffusion pads 7x7 latents to 8x8; an
        input that already fits is returned as it is, so its outputs do not change.
        :meth:`forward` crops its output back to ``H x W``."""
        m = self.size_multiple
        below, right = -x.shape[-2] % m, -x.shape[-1] % m
        if not below and not right:
            return x
        reflect = below < x.shape[-2] and right < x.shape[-1]
        return F.pad(x, (0, right, 0, below), mode="reflect" if reflect else "replicate")


def _check_context(context_dim: int | None, levels: frozenset[int],
                   mid_transformer: bool | None) -> bool:
    """Resolve ``mid_transformer`` and check it and ``levels`` against ``context_dim``."""
    if mid_transformer is None:
        mid_transformer = bool(levels)
    wanted = bool(levels) or bool(mid_transformer)
    if wanted and context_dim is None:
        raise ValueError("UNet: spatial transformers (transformer_levels / transformer_resolutions "
                         "/ mid_transformer) need context_dim; set context_dim to the text "
                         "encoder's width")
    if context_dim is not None and not wanted:
        raise ValueError(f"UNet: context_dim={context_dim} but no spatial transformer; set "
                         "transformer_levels or transformer_resolutions (or mid_transformer=true)")
    if context_dim is not None and context_dim < 1:
        raise ValueError(f"UNet context_dim must be >= 1 or None, got {context_dim}")
    return bool(mid_transformer)


def _out_channels(in_channels: int, out_channels: int | None, learn_sigma: bool) -> int:
    """``out_channels``, defaulting to C (or 2C with ``learn_sigma``: prediction + variance)."""
    if out_channels is None:
        return 2 * in_channels if learn_sigma else in_channels
    if learn_sigma and out_channels % 2:
        raise ValueError(f"UNet with learn_sigma=true needs an even out_channels (prediction "
                         f"and variance halves), got {out_channels}")
    return out_channels


def _image_shape(data_shape: Sequence[int], image_size: int | None) -> tuple[int, int]:
    """(in_channels, image_size) of a (C, H, W) sample shape; points are refused."""
    if len(data_shape) != 3:
        raise ValueError(f"the U-Net takes images (C, H, W), but the data are "
                         f"{'points of shape' if len(data_shape) == 1 else 'of shape'} "
                         f"{tuple(data_shape)}; use the MLP (model=mlp) for points")
    return int(data_shape[0]), int(data_shape[1]) if image_size is None else image_size
