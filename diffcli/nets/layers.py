"""Building blocks shared by the denoising networks.

The layout follows the DDPM U-Net (Ho et al. 2020, Appendix B, itself based on the
PixelCNN++ / Wide-ResNet U-Net) with the conventions later used by Improved DDPM / ADM
(Nichol & Dhariwal 2021; Dhariwal & Nichol 2021): a sinusoidal timestep embedding fed
through a small MLP, pre-activation residual blocks that add a projection of that
embedding, and zero-initialised output convolutions so every residual block starts as
the identity.

Blocks whose ``forward`` needs the embedding derive from :class:`TimestepBlock`;
:class:`EmbedSequential` chains such blocks with plain modules (:class:`AttentionBlock`,
up/down-sampling) and hands the embedding only to the blocks that take it.

Options from Improved DDPM / ADM: multi-head self-attention (:class:`AttentionBlock`),
BigGAN-style resampling inside the residual block (``ResBlock(up=True)`` /
``ResBlock(down=True)``) and scale-shift ("adaptive group") normalisation
(``ResBlock(use_scale_shift_norm=True)``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "AttentionBlock",
    "ContextBlock",
    "Downsample",
    "EmbedSequential",
    "ResBlock",
    "TimeEmbedding",
    "TimestepBlock",
    "Upsample",
    "count_parameters",
    "norm",
    "timestep_embedding",
    "zero_module",
]


def timestep_embedding(
    t: Tensor,
    dim: int,
    max_period: float = 10000.0,
    *,
    freq_shift: float = 0.0,
    sin_first: bool = False,
) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps.

    The Transformer position encoding (Vaswani et al. 2017, Sec. 3.5) as used for the
    diffusion step in DDPM (Ho et al. 2020, Appendix B): ``half = dim // 2``
    frequencies ``f_i = max_period ** (-i / (half - freq_shift))``, ``i = 0 .. half - 1``,
    so with the default ``freq_shift=0`` they are spaced geometrically from 1 down to
    (just above) ``1 / max_period``; the output is ``[cos(t * f), sin(t * f)]``
    (``[sin(t * f), cos(t * f)]`` with ``sin_first``), with one zero column appended when
    ``dim`` is odd. It is meant for raw step indices (0..T-1); continuous times in [0, 1]
    should be scaled up (e.g. by 1000) first, or the low frequencies barely change.

    The DDPM reference (TensorFlow) code and the diffusers checkpoints converted from it
    (e.g. ``google/ddpm-cifar10-32``) use ``freq_shift=1, sin_first=True``; the defaults
    are the ADM convention (diffusers' ``flip_sin_to_cos=True, freq_shift=0``).

    Args:
        t: timesteps, shape ``(B,)`` (a 0-d tensor counts as ``B = 1``); any real
            values, integer or float dtype.
        dim: embedding width, at least 1.
        max_period: the longest period, which sets the lowest frequency.
        freq_shift: subtracted from ``half`` in the frequency exponent's denominator;
            must leave it positive.
        sin_first: put the sines before the cosines.

    Returns:
        Float32 tensor of shape ``(B, dim)``.
    """
    if dim < 1:
        raise ValueError(f"timestep embedding dim must be >= 1, got {dim}")
    t = t.reshape(-1).to(torch.float32)  # (B,)
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=t.device)  # (half,)
    if freq_shift == 0:
        freqs = torch.exp(-math.log(max_period) * (steps / max(half, 1)))  # (half,)
    else:
        denom = half - freq_shift
        if half and denom <= 0:
            raise ValueError(f"timestep embedding freq_shift={freq_shift} must be below "
                             f"dim // 2 = {half}")
        # (-log(P) * i) / denom, in this order, so that shifted embeddings equal those of
        # checkpoints converted from the DDPM reference code bit for bit.
        freqs = torch.exp(-math.log(max_period) * steps / denom)  # (half,)
    args = t[:, None] * freqs[None, :]  # (B, half)
    parts = [torch.sin(args), torch.cos(args)] if sin_first else [torch.cos(args), torch.sin(args)]
    emb = torch.cat(parts, dim=1)  # (B, 2 * half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))  # (B, dim)
    return emb


def norm(ch: int, groups: int = 32, eps: float = 1e-5) -> nn.GroupNorm:
    """GroupNorm over ``ch`` channels (Wu & He 2018), as in DDPM (Ho et al. 2020, App. B).

    Uses the largest group count ``<= groups`` that divides ``ch``, so narrow layers
    (e.g. 8 or 12 channels) still work with the default of 32 groups. ``eps`` is added
    to the variance (PyTorch's default 1e-5; the DDPM reference code uses 1e-6).
    """
    g = max(d for d in range(1, min(groups, ch) + 1) if ch % d == 0)
    return nn.GroupNorm(g, ch, eps=eps)


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero and return it.

    Zero-initialising the last layer of each residual branch and the output layer
    makes the network start as (residual) identity maps with a zero output
    (DDPM reference code; Nichol & Dhariwal 2021).
    """
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters in ``module`` (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


class TimeEmbedding(nn.Module):
    """Sinusoidal timestep features -> Linear -> SiLU -> Linear (Ho et al. 2020, App. B).

    Args:
        freq_dim: width of the sinusoidal features (DDPM uses the base channel count).
        emb_dim: output width (DDPM uses ``4 * base_channels``).
        max_period: passed to :func:`timestep_embedding`.
        freq_shift: passed to :func:`timestep_embedding`.
        sin_first: passed to :func:`timestep_embedding`.
    """

    def __init__(self, freq_dim: int, emb_dim: int, max_period: float = 10000.0, *,
                 freq_shift: float = 0.0, sin_first: bool = False) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.max_period = max_period
        self.freq_shift = freq_shift
        self.sin_first = sin_first
        self.mlp = nn.Sequential(
            nn.Linear(freq_dim, emb_dim),
            nn.SiLU(),
            nn.Linear(emb_dim, emb_dim),
        )

    def forward(self, t: Tensor) -> Tensor:
        """Map timesteps ``(B,)`` to embeddings ``(B, emb_dim)``."""
        feats = timestep_embedding(t, self.freq_dim, self.max_period, freq_shift=self.freq_shift,
                                   sin_first=self.sin_first)  # (B, freq_dim)
        weight = self.mlp[0].weight
        return self.mlp(feats.to(weight.dtype))  # (B, emb_dim)


class TimestepBlock(nn.Module, ABC):
    """A module whose forward takes the conditioning embedding as a second argument.

    :class:`EmbedSequential` passes ``emb`` to instances of this class and calls every
    other module with ``x`` alone (the ``TimestepBlock`` pattern of Nichol & Dhariwal
    2021's U-Net).
    """

    @abstractmethod
    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """Transform ``x`` ``(B, C, H, W)`` conditioned on ``emb`` ``(B, E)``."""


class ContextBlock(nn.Module, ABC):
    """A module whose forward takes a token context and its mask (cross-attention).

    :class:`EmbedSequential` calls instances as ``layer(x, context, mask)``; the
    spatial transformer of :mod:`diffcli.nets.attention` (Rombach et al. 2022, Sec. 3.3)
    derives from it. Defined here so this module need not import the attention module.
    """

    @abstractmethod
    def forward(self, x: Tensor, context: Tensor | None = None,
                mask: Tensor | None = None) -> Tensor:
        """Transform ``x`` ``(B, C, H, W)`` given ``context`` ``(B, L, D)``, ``mask`` ``(B, L)``."""


class EmbedSequential(nn.Sequential):
    """``nn.Sequential`` that gives the embedding to each :class:`TimestepBlock` and the
    token context (with its mask) to each :class:`ContextBlock`."""

    def forward(self, x: Tensor, emb: Tensor, context: Tensor | None = None,  # type: ignore[override]
                mask: Tensor | None = None) -> Tensor:
        """Run the children in order; ``x`` is ``(B, C, H, W)``, ``emb`` is ``(B, E)``,
        ``context`` ``(B, L, D)`` or ``None`` and ``mask`` ``(B, L)`` bool or ``None``."""
        for layer in self:
            if isinstance(layer, TimestepBlock):
                x = layer(x, emb)
            elif isinstance(layer, ContextBlock):
                x = layer(x, context, mask)
            else:
                x = layer(x)
        return x


class ResBlock(TimestepBlock):
    """Pre-activation residual block conditioned on the timestep embedding.

    ``GroupNorm -> SiLU -> Conv3x3 -> (+ Linear(SiLU(emb)) per channel) -> GroupNorm ->
    SiLU -> Dropout -> Conv3x3 (zero-init)``, plus a skip path that is the identity, or
    a 1x1 conv when the channel count changes (Ho et al. 2020, Appendix B; Wide ResNet).

    Options (Nichol & Dhariwal 2021; Dhariwal & Nichol 2021, Sec. 3):

    * ``down`` / ``up``: BigGAN-style resampling inside the block (Brock et al. 2019).
      Both the residual branch (after its first norm + SiLU, before the first conv) and
      the skip input are resampled, with a 2x2 average pool (``down``) or nearest x2
      (``up``) and no convolution in the resampler.
    * ``use_scale_shift_norm``: the embedding is projected to ``2 * out_ch`` values
      ``(scale, shift)`` and applied as ``GroupNorm(h) * (1 + scale) + shift`` in place
      of the second norm's plain output ("AdaGN").

    The embedding is applied in :meth:`apply_embedding`.

    Args:
        in_ch: input channels.
        out_ch: output channels.
        emb_dim: width of the conditioning embedding.
        dropout: dropout probability before the second convolution.
        groups: maximum GroupNorm group count (see :func:`norm`).
        up: double height and width, ``(B, in_ch, H, W) -> (B, out_ch, 2H, 2W)``.
        down: halve height and width, ``(B, in_ch, H, W) -> (B, out_ch, H // 2, W // 2)``.
        use_scale_shift_norm: condition through scale and shift of the second norm.
        norm_eps: epsilon of both GroupNorms (see :func:`norm`).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        emb_dim: int,
        dropout: float = 0.0,
        groups: int = 32,
        *,
        up: bool = False,
        down: bool = False,
        use_scale_shift_norm: bool = False,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if up and down:
            raise ValueError("ResBlock cannot both upsample and downsample")
        self.in_ch = in_ch
        self.out_ch = out_ch
        self.up = up
        self.down = down
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            norm(in_ch, groups, norm_eps),
            nn.SiLU(),
            nn.Conv2d(in_ch, out_ch, 3, padding=1),
        )
        self.resample = _resampler(up=up, down=down)
        emb_out = 2 * out_ch if use_scale_shift_norm else out_ch
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, emb_out))
        self.out_layers = nn.Sequential(
            norm(out_ch, groups, norm_eps),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv2d(out_ch, out_ch, 3, padding=1)),
        )
        self.skip: nn.Module = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def apply_embedding(self, h: Tensor, emb: Tensor) -> Tensor:
        """Condition ``h`` ``(B, out_ch, H, W)`` on ``emb`` ``(B, E)`` and apply the second norm.

        Additive (DDPM): ``GroupNorm(h + Linear(SiLU(emb)))``. Scale-shift (Nichol &
        Dhariwal 2021): ``GroupNorm(h) * (1 + scale) + shift``. The result goes on to the
        rest of ``out_layers`` (SiLU -> Dropout -> Conv).
        """
        proj = self.emb_proj(emb)[:, :, None, None]  # (B, out_ch or 2 * out_ch, 1, 1)
        out_norm = self.out_layers[0]
        if not self.use_scale_shift_norm:
            return out_norm(h + proj.to(h.dtype))  # (B, out_ch, H, W)
        h = out_norm(h)
        scale, shift = proj.to(h.dtype).chunk(2, dim=1)  # (B, out_ch, 1, 1) each
        return h * (1 + scale) + shift  # (B, out_ch, H, W)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """``x``: ``(B, in_ch, H, W)``, ``emb``: ``(B, emb_dim)`` -> ``(B, out_ch, H', W')``.

        ``H' = 2H`` with ``up``, ``H // 2`` with ``down``, else ``H`` (likewise ``W'``).
        """
        h = self.in_layers[:-1](x)  # GroupNorm -> SiLU, (B, in_ch, H, W)
        h = self.resample(h)  # (B, in_ch, H', W')
        x = self.resample(x)  # (B, in_ch, H', W')
        h = self.in_layers[-1](h)  # (B, out_ch, H', W')
        h = self.apply_embedding(h, emb)
        h = self.out_layers[1:](h)  # SiLU -> Dropout -> Conv, (B, out_ch, H', W')
        return self.skip(x) + h


def _resampler(*, up: bool, down: bool) -> nn.Module:
    """Parameter-free resampling for :class:`ResBlock` (Dhariwal & Nichol 2021, Sec. 3)."""
    if down:
        return nn.AvgPool2d(kernel_size=2, stride=2)
    if up:
        return nn.Upsample(scale_factor=2.0, mode="nearest")
    return nn.Identity()


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the spatial positions, with a residual connection.

    DDPM puts a single-head self-attention block at the 16x16 resolution of its U-Net
    (Ho et al. 2020, Appendix B, after PixelSNAIL / the Transformer); Improved DDPM and
    ADM use several heads and more resolutions (Nichol & Dhariwal 2021; Dhariwal &
    Nichol 2021, Sec. 3). With ``L = H * W`` positions and ``d = channels // heads``::

        h = GroupNorm(x)                         # (B, C, H, W)
        q, k, v = Conv1x1(h).split(C)            # (B, C, H, W) each -> (B, heads, L, d)
        a = softmax(q k^T / sqrt(d)) v           # (B, heads, L, d)
        out = x + Conv1x1(a -> (B, C, H, W))     # projection zero-initialised

    The ``3 * C`` output channels of the ``qkv`` conv are laid out as ``[q | k | v]``,
    each split into ``heads`` groups of ``d`` consecutive channels. The projection starts
    at zero, so the block is the identity at initialisation. Attention runs through
    :func:`torch.nn.functional.scaled_dot_product_attention`; ``q``, ``k`` and ``v``
    are slices of one tensor, so they share a dtype under autocast as SDPA requires.

    Args:
        channels: input and output channels ``C``.
        num_heads: number of attention heads; must divide ``channels``.
        num_head_channels: channels per head; when given it overrides ``num_heads``
            (``heads = channels // num_head_channels``) and must divide ``channels``.
        groups: maximum GroupNorm group count (see :func:`norm`).
        norm_eps: epsilon of the GroupNorm (see :func:`norm`).
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int | None = None,
        groups: int = 32,
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if num_head_channels is not None:
            if num_head_channels < 1 or channels % num_head_channels:
                raise ValueError(
                    f"AttentionBlock: num_head_channels={num_head_channels} must be a "
                    f"positive divisor of channels={channels}"
                )
            num_heads = channels // num_head_channels
        if num_heads < 1 or channels % num_heads:
            raise ValueError(
                f"AttentionBlock: num_heads={num_heads} must be a positive divisor of "
                f"channels={channels}"
            )
        self.channels = channels
        self.num_heads = num_heads
        self.norm = norm(channels, groups, norm_eps)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Attend over the ``H * W`` positions of ``x`` ``(B, C, H, W)``; same shape out."""
        b, c, height, width = x.shape
        heads = self.num_heads
        qkv = self.qkv(self.norm(x))  # (B, 3C, H, W)
        qkv = qkv.reshape(b, 3 * heads, c // heads, height * width)  # (B, 3 heads, d, L)
        q, k, v = qkv.transpose(-1, -2).chunk(3, dim=1)  # (B, heads, L, d) each
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, L, d)
        a = a.transpose(-1, -2).reshape(b, c, height, width)  # (B, C, H, W)
        return x + self.proj(a)


class Downsample(nn.Module):
    """Halve the spatial size with a 3x3 convolution of stride 2 (Ho et al. 2020, App. B).

    ``padding=1`` (default): the conv pads one pixel on every side,
    ``(B, C, H, W) -> (B, C, ceil(H / 2), ceil(W / 2))``. ``padding=0``: the input is
    zero-padded by one pixel on the right and bottom only, then convolved without
    padding, as in the DDPM reference (TensorFlow "SAME" stride-2) code and the diffusers
    checkpoints converted from it (``downsample_padding=0``);
    ``(B, C, H, W) -> (B, C, floor(H / 2), floor(W / 2))``. Both give ``H / 2`` for even
    ``H`` but weigh the border pixels differently.

    Args:
        ch: input and output channels.
        padding: 1 (symmetric) or 0 (right / bottom only), as above.
    """

    def __init__(self, ch: int, padding: int = 1) -> None:
        super().__init__()
        if padding not in (0, 1):
            raise ValueError(f"Downsample padding must be 0 or 1, got {padding}")
        self.padding = padding
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=padding)

    def forward(self, x: Tensor) -> Tensor:
        """Downsample ``x`` ``(B, C, H, W)``."""
        if self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # (B, C, H + 1, W + 1)
        return self.conv(x)


class Upsample(nn.Module):
    """Double the spatial size: nearest-neighbour x2 then a 3x3 conv (Ho et al. 2020, App. B).

    ``(B, C, H, W) -> (B, C, 2H, 2W)``.
    """

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """Upsample ``x`` ``(B, C, H, W)``."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
