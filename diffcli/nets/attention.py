"""Cross-attention conditioning: Stable Diffusion's spatial transformer.

Latent Diffusion (Rombach et al. 2022, Sec. 3.3 and App.) conditions the U-Net on a
token sequence ``tau(y)`` (e.g. a text encoder's output) by cross-attention at chosen
resolutions. With the flattened feature map ``phi(z_t)`` as queries (Sec. 3.3)::

    Q = W_Q phi(z_t),  K = W_K tau(y),  V = W_V tau(y)
    Attention(Q, K, V) = softmax(Q K^T / sqrt(d)) V                           (eq. 3)

Each :class:`SpatialTransformer` applies ``GroupNorm -> Conv1x1 -> (B, HW, C)`` then
transformer blocks (self-attention, cross-attention, GEGLU feed-forward, each a pre-norm
residual; Vaswani et al. 2017; Shazeer 2020) and a zero-initialised ``Conv1x1`` back to
``(B, C, H, W)``, added to the input: the block is the identity at initialisation.

Masks are ``(B, L)`` booleans over the context tokens, ``True`` = attend. A sample whose
mask is all ``False`` attends to nothing: its attention output is exactly zero, so its
cross-attention step contributes nothing and the result equals the unconditional path
(``context=None``, where the cross-attention step is skipped).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcli.nets.layers import ContextBlock, norm, zero_module

__all__ = ["CrossAttention", "FeedForward", "SpatialTransformer", "TransformerBlock",
           "check_token_context"]


def _check_mask(mask: Tensor, batch: int, length: int) -> None:
    """Raise ``ValueError`` unless ``mask`` is a ``(batch, length)`` boolean tensor."""
    if mask.dtype != torch.bool or tuple(mask.shape) != (batch, length):
        raise ValueError(
            f"attention mask must be a bool tensor of shape (B, L) = ({batch}, {length}) "
            f"(True = attend), got {mask.dtype} {tuple(mask.shape)}"
        )


def check_token_context(net: str, context_dim: int | None, batch: int, context: Tensor | None,
                        context_mask: Tensor | None, hint: str = "set context_dim") -> None:
    """Raise ``ValueError`` (one line naming ``net``) unless ``context`` ``(batch, L,
    context_dim)`` and ``context_mask`` ``(batch, L)`` bool (only with a context) suit a network
    built with ``context_dim`` (None: no token conditioning; ``hint`` says how to add it)."""
    if context is None:
        if context_mask is not None:
            raise ValueError(f"{net} got context_mask without context; pass both or neither")
        return
    if context_dim is None:
        raise ValueError(f"{net} got a context but was built with context_dim=None; "
                         f"{hint} to condition on tokens")
    if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != context_dim:
        raise ValueError(f"{net} expects context of shape ({batch}, L, {context_dim}), "
                         f"got {tuple(context.shape)}")
    if context_mask is not None and (context_mask.dtype != torch.bool
                                     or context_mask.shape != context.shape[:2]):
        raise ValueError(f"{net} expects context_mask as bool ({batch}, {context.shape[1]}) "
                         f"(True = attend), got {context_mask.dtype} "
                         f"{tuple(context_mask.shape)}")


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention (Rombach et al. 2022, Sec. 3.3, eq. 3).

    Queries come from ``x`` ``(B, N, query_dim)``; keys and values from ``context``
    ``(B, L, context_dim)``, or from ``x`` itself when ``context`` is ``None``
    (self-attention). Projections to ``heads * head_dim`` have no bias, as in SD; the
    output projection back to ``query_dim`` has one.

    Args:
        query_dim: width of ``x``.
        context_dim: width of ``context``; ``None`` means ``query_dim`` (self-attention).
        heads: number of attention heads.
        head_dim: width of each head.
    """

    def __init__(
        self, query_dim: int, context_dim: int | None = None, heads: int = 4, head_dim: int = 32
    ) -> None:
        super().__init__()
        if heads < 1 or head_dim < 1:
            raise ValueError(
                f"CrossAttention needs heads >= 1 and head_dim >= 1, got {heads} and {head_dim}"
            )
        inner = heads * head_dim
        self.heads = heads
        self.context_dim = query_dim if context_dim is None else context_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(self.context_dim, inner, bias=False)
        self.to_v = nn.Linear(self.context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def _split_heads(self, t: Tensor) -> Tensor:
        """``(B, N, heads * d) -> (B, heads, N, d)``."""
        b, n, _ = t.shape
        return t.reshape(b, n, self.heads, -1).transpose(1, 2)

    def forward(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """Attend from ``x`` ``(B, N, query_dim)`` to ``context`` ``(B, L, context_dim)``.

        ``mask`` ``(B, L)`` bool, ``True`` = attend. Samples whose mask is all ``False``
        get exactly zero output (no NaN). Returns ``(B, N, query_dim)``.
        """
        context = x if context is None else context
        if context.shape[-1] != self.context_dim:
            raise ValueError(
                f"CrossAttention expects context of width {self.context_dim}, got "
                f"{tuple(context.shape)}; build the net with context_dim={context.shape[-1]}"
            )
        q = self._split_heads(self.to_q(x))  # (B, heads, N, d)
        k = self._split_heads(self.to_k(context))  # (B, heads, L, d)
        v = self._split_heads(self.to_v(context))  # (B, heads, L, d)
        if mask is None:
            a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, d)
            return self.to_out(a.transpose(1, 2).flatten(2))  # (B, N, query_dim)
        _check_mask(mask, context.shape[0], context.shape[1])
        any_key = mask.any(dim=1)  # (B,)
        safe = mask | ~any_key[:, None]  # empty rows attend everywhere, then are zeroed
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=safe[:, None, None, :])
        out = self.to_out(a.transpose(1, 2).flatten(2))  # (B, N, query_dim)
        return torch.where(any_key[:, None, None], out, torch.zeros_like(out))


class FeedForward(nn.Module):
    """GEGLU feed-forward (Shazeer 2020) as in SD's transformer blocks.

    ``Linear(d, 2 * mult * d) -> (a, g) -> a * gelu(g) -> Dropout -> Linear(mult * d, d)``
    on ``(B, N, d)``.
    """

    def __init__(self, dim: int, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = mult * dim
        self.proj_in = nn.Linear(dim, 2 * inner)
        self.dropout = nn.Dropout(dropout)
        self.proj_out = nn.Linear(inner, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, N, dim) -> (B, N, dim)``."""
        a, g = self.proj_in(x).chunk(2, dim=-1)  # (B, N, inner) each
        return self.proj_out(self.dropout(a * F.gelu(g)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block with self- and cross-attention (Rombach et al. 2022, App.).

    ``x += SelfAttn(LN1 x); x += CrossAttn(LN2 x, context, mask); x += FF(LN3 x)`` on
    ``(B, N, dim)``. With ``context=None`` the cross-attention step is skipped (the
    unconditional path). ``cross_attention=False`` builds an encoder-style block with
    self-attention and feed-forward only (no cross-attention weights).

    Args:
        dim: token width.
        context_dim: width of the context tokens (``None``: ``dim``).
        heads: attention heads.
        head_dim: width of each head.
        cross_attention: build the cross-attention step.
        dropout: dropout inside the feed-forward.
    """

    def __init__(
        self,
        dim: int,
        context_dim: int | None = None,
        *,
        heads: int = 4,
        head_dim: int = 32,
        cross_attention: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = CrossAttention(dim, None, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim) if cross_attention else None
        self.attn2 = CrossAttention(dim, context_dim, heads, head_dim) if cross_attention else None
        self.norm3 = nn.LayerNorm(dim)
        self.ff = FeedForward(dim, dropout=dropout)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        mask: Tensor | None = None,
        *,
        self_mask: Tensor | None = None,
    ) -> Tensor:
        """``x`` ``(B, N, dim)``, ``context`` ``(B, L, context_dim)``, ``mask`` ``(B, L)``.

        ``self_mask`` ``(B, N)`` bool masks the self-attention keys (e.g. padding).
        Returns ``(B, N, dim)``.
        """
        x = x + self.attn1(self.norm1(x), mask=self_mask)
        if context is not None:
            if self.attn2 is None or self.norm2 is None:
                raise ValueError("this TransformerBlock has no cross-attention; pass context=None")
            x = x + self.attn2(self.norm2(x), context, mask)
        elif mask is not None:
            raise ValueError("TransformerBlock got a context mask without a context; pass both")
        return x + self.ff(self.norm3(x))


class SpatialTransformer(ContextBlock):
    """Transformer over the ``H * W`` positions of a feature map (Rombach et al. 2022, App.).

    ``GroupNorm -> Conv1x1 (proj_in) -> (B, HW, C) -> depth x TransformerBlock ->
    (B, C, H, W) -> Conv1x1 (proj_out, zero-initialised) -> + x``. Cross-attention lets
    every position attend to the context tokens (Sec. 3.3, eq. 3); the zero-initialised
    output makes the block the identity at initialisation.

    Args:
        channels: feature channels ``C`` (also the token width inside).
        context_dim: width of the context tokens.
        depth: number of transformer blocks.
        num_heads: attention heads; must divide ``channels``.
        head_channels: channels per head; overrides ``num_heads`` when given.
        groups: maximum GroupNorm group count (see :func:`~diffcli.nets.layers.norm`).
    """

    def __init__(
        self,
        channels: int,
        context_dim: int,
        *,
        depth: int = 1,
        num_heads: int = 4,
        head_channels: int | None = None,
        groups: int = 32,
    ) -> None:
        super().__init__()
        heads = _head_count(channels, num_heads, head_channels)
        if depth < 1:
            raise ValueError(f"SpatialTransformer depth must be >= 1, got {depth}")
        self.channels = channels
        self.context_dim = context_dim
        self.norm = norm(channels, groups)
        self.proj_in = nn.Conv2d(channels, channels, 1)
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, context_dim, heads=heads, head_dim=channels // heads)
            for _ in range(depth)
        )
        self.proj_out = zero_module(nn.Conv2d(channels, channels, 1))

    def forward(
        self, x: Tensor, context: Tensor | None = None, mask: Tensor | None = None
    ) -> Tensor:
        """``x`` ``(B, C, H, W)``, ``context`` ``(B, L, context_dim)``, ``mask`` ``(B, L)``.

        Returns ``(B, C, H, W)``; ``context=None`` skips the cross-attention steps.
        """
        b, c, height, width = x.shape
        h = self.proj_in(self.norm(x))  # (B, C, H, W)
        h = h.flatten(2).transpose(1, 2)  # (B, HW, C)
        for block in self.blocks:
            h = block(h, context, mask)  # (B, HW, C)
        h = h.transpose(1, 2).reshape(b, c, height, width)  # (B, C, H, W)
        return x + self.proj_out(h)


def _head_count(channels: int, num_heads: int, head_channels: int | None) -> int:
    """Number of heads for ``channels``, from ``num_heads`` or ``head_channels``."""
    if head_channels is not None:
        if head_channels < 1 or channels % head_channels:
            raise ValueError(
                f"SpatialTransformer: head_channels={head_channels} must be a positive "
                f"divisor of channels={channels}"
            )
        return channels // head_channels
    if num_heads < 1 or channels % num_heads:
        raise ValueError(
            f"SpatialTransformer: num_heads={num_heads} must be a positive divisor of "
            f"channels={channels}; change transformer_heads"
        )
    return num_heads
