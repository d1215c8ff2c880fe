"""U-ViT: a ViT backbone for diffusion models (Bao et al. 2023, "All are Worth Words: A ViT
Backbone for Diffusion Models", CVPR 2023), with the interface of :class:`~diffcli.nets.dit.DiT`.

Layout (Sec. 3, Fig. 1; the design choices of Sec. 3.1, ablated in Fig. 2):

* "all are words": the noisy image is cut into ``p x p`` patches, each linearly embedded
  (:func:`~diffcli.nets.dit.patchify` then ``Linear(p * p * C, D)``) as one of
  ``T = (H / p) (W / p)`` tokens; the time, and the class label of a class-conditional net,
  enter as extra tokens prepended to them (the paper's "time as a token", which it found
  better than adaptive LayerNorm). The time token is the timestep's 256 sinusoidal features
  through a two-layer MLP (:class:`~diffcli.nets.layers.TimeEmbedding`); the label token comes
  from a table with one extra null label for classifier-free guidance (Ho & Salimans 2022);
* position embedding: fixed 2-D sine-cosine on the patch tokens
  (:func:`~diffcli.nets.dit.sincos_pos_embed_2d`, as the DiT) rather than the paper's learned
  1-D table, so any image size works; the extra tokens get none (they differ in content);
* ``depth`` pre-LN transformer blocks (LayerNorm -> multi-head self-attention, LayerNorm ->
  GELU MLP, each a residual), ``depth`` odd: ``(depth - 1) / 2`` in-blocks, a mid-block and
  ``(depth - 1) / 2`` out-blocks, with long skip connections: out-block ``i`` first maps the
  concatenation of its input and the output of the ``i``-th last in-block through
  ``Linear(2D, D)`` (the paper's best "concatenation + linear" choice);
* final LayerNorm, ``Linear(D, p * p * out_channels)`` on the patch tokens (the extra tokens
  are dropped), :func:`~diffcli.nets.dit.unpatchify`, then the paper's extra 3x3 convolution.

Initialisation: truncated normal (std 0.02) linear weights and zero biases, as the paper's ViT
setup; then the final linear map and the convolution's bias are zero, so the net outputs
exactly 0 at initialisation (as the DiT), while the convolution's weights stay random so the
first step's gradients reach the final linear map.

Text conditioning (``context_dim``): every block gets a pre-LN cross-attention layer between
the self-attention and the MLP, attending to a token context ``(B, L, context_dim)``, as the DiT
(PixArt-alpha, Sec. 2.3); its output projection starts at zero. Samples whose context mask is
all ``False`` get exactly zero from it (the same output as ``context=None``).

Image sizes that are not a multiple of ``patch_size`` are padded at the bottom and right
(:func:`~diffcli.nets.inputs.pad_to_multiple`) and the output cropped back.

Sizes (the paper's configurations table): U-ViT-S (depth 13, hidden 512, 8 heads, MLP 2048;
44M parameters as U-ViT-S/2 on CIFAR-10), U-ViT-M (17, 768, 12), U-ViT-L (21, 1024, 16),
U-ViT-H (29, 1152, 16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffcli.nets.attention import CrossAttention, check_token_context
from diffcli.nets.dit import SelfAttention, patchify, sincos_pos_embed_2d, unpatchify
from diffcli.nets.inputs import (
    add_label_embedding,
    check_token_sizes,
    image_shape,
    output_channels,
    pad_to_multiple,
)
from diffcli.nets.layers import TimeEmbedding

__all__ = ["UViT", "UViTBlock"]

NAME = "U-ViT"


class UViTBlock(nn.Module):
    """A pre-LN transformer block, with a long skip input for the out-blocks (Bao et al. 2023,
    Sec. 3.1) and an optional cross-attention layer::

        x = Linear(concat(x, skip))              # out-blocks only: (B, N, 2D) -> (B, N, D)
        x = x + SelfAttn(LN(x))
        x = x + CrossAttn(LN(x), context, mask)  # only with a context
        x = x + MLP(LN(x))                       # Linear(D, r D) -> GELU -> Linear(r D, D)

    Args:
        dim: token width ``D``.
        num_heads: attention heads; must divide ``dim``.
        mlp_ratio: MLP hidden width over ``dim``.
        context_dim: width of the context tokens; ``None``: no cross-attention layer.
        skip: take a long skip input (an out-block).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 context_dim: int | None = None, skip: bool = False) -> None:
        super().__init__()
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, num_heads)
        self.norm_cross = self.cross_attn = None
        if context_dim is not None:
            self.norm_cross = nn.LayerNorm(dim)
            self.cross_attn = CrossAttention(dim, context_dim, heads=num_heads,
                                             head_dim=dim // num_heads)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor, skip: Tensor | None = None, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        """``x`` ``(B, N, D)`` tokens, ``skip`` ``(B, N, D)`` (out-blocks only), ``context``
        ``(B, L, context_dim)`` (``None``: no cross-attention), ``context_mask`` ``(B, L)``
        bool (True = attend). Returns ``(B, N, D)``."""
        if self.skip_linear is not None:
            if skip is None:
                raise ValueError(f"{NAME} out-block called without its long skip input")
            x = self.skip_linear(torch.cat([x, skip], dim=-1))  # (B, N, D)
        x = x + self.attn(self.norm1(x))
        if context is not None and self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, context_mask)
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    """U-ViT mapping ``(x_t, t[, y])`` to ``(B, out_channels, H, W)`` (Bao et al. 2023), with
    the interface of :class:`~diffcli.nets.dit.DiT` (and so of the U-Net).

    Args:
        data_shape: one sample's shape ``(C, H, W)``: sets ``in_channels`` and ``image_size``.
        in_channels: image channels, when no ``data_shape`` is given.
        image_size: input height (and width), when no ``data_shape`` is given; ``None``: the
            position embeddings are computed per call.
        patch_size: side ``p`` of the square patches (the paper: 2 for 32x32 and 64x64 latents,
            4 for 64x64 pixels); ``T = HW / p^2`` patch tokens.
        hidden_size: token width ``D`` (a multiple of 4 for the 2-D position embedding).
        depth: number of blocks, odd: ``(depth - 1) / 2`` in-blocks, a mid-block,
            ``(depth - 1) / 2`` out-blocks with long skips.
        num_heads: attention heads; must divide ``hidden_size``.
        mlp_ratio: MLP hidden width over ``hidden_size`` (4 in the paper).
        num_classes: class labels (a label token); label ``num_classes`` is the null label of
            classifier-free guidance. ``None``: unconditional (no label token).
        learn_sigma: also output the reverse-process variances (``2 * in_channels`` outputs).
        out_channels: output channels; defaults to ``in_channels`` (twice with
            ``learn_sigma``).
        context_dim: width of a token context for cross-attention in every block; ``None``:
            no cross-attention parameters.
        grad_checkpointing: recompute each block in the backward pass while training with
            gradients enabled (``use_reentrant=False``): less activation memory.
        freq_dim: width of the sinusoidal timestep features before the time token's MLP.

    Raises:
        ValueError: data that are not images ``(C, H, W)``, or sizes that do not fit (one line
            naming the option).
    """

    def __init__(self, *, data_shape: Sequence[int] | None = None, in_channels: int = 4,
                 image_size: int | None = None, patch_size: int = 2, hidden_size: int = 128,
                 depth: int = 7, num_heads: int = 4, mlp_ratio: float = 4.0,
                 num_classes: int | None = None, learn_sigma: bool = False,
                 out_channels: int | None = None, context_dim: int | None = None,
                 grad_checkpointing: bool = False, freq_dim: int = 256) -> None:
        super().__init__()
        image_width = image_size
        if data_shape is not None:
            in_channels, image_size, image_width = image_shape(NAME, data_shape)
        check_token_sizes(NAME, patch_size, hidden_size, depth, num_heads, num_classes,
                          context_dim)
        if depth % 2 == 0:
            raise ValueError(f"{NAME} depth must be odd (in-blocks, a mid-block, as many "
                             f"out-blocks with long skips), got {depth}")
        self.in_channels, self.image_size = int(in_channels), image_size
        self.patch_size, self.hidden_size = int(patch_size), int(hidden_size)
        self.num_classes, self.context_dim = num_classes, context_dim
        self.learn_sigma = bool(learn_sigma)
        self.out_channels = output_channels(NAME, self.in_channels, self.learn_sigma,
                                            out_channels)
        self.grad_checkpointing = bool(grad_checkpointing)
        d, p = self.hidden_size, self.patch_size
        self.patch_embed = nn.Linear(p * p * self.in_channels, d)
        self.time_embed = TimeEmbedding(freq_dim, d)
        # Row ``num_classes`` is the null label (classifier-free guidance).
        self.label_embed = None if num_classes is None else nn.Embedding(num_classes + 1, d)
        self._grid = (0, 0)
        if image_size is not None and image_width is not None:
            self._grid = (-(-image_size // p), -(-image_width // p))
        pos = sincos_pos_embed_2d(d, *self._grid).to(torch.empty(0).device)
        self.register_buffer("pos_embed", pos[None], persistent=False)  # (1, T, D)
        half = (depth - 1) // 2
        self.in_blocks = nn.ModuleList(UViTBlock(d, num_heads, mlp_ratio, context_dim)
                                       for _ in range(half))
        self.mid_block = UViTBlock(d, num_heads, mlp_ratio, context_dim)
        self.out_blocks = nn.ModuleList(UViTBlock(d, num_heads, mlp_ratio, context_dim, True)
                                        for _ in range(half))
        self.norm = nn.LayerNorm(d)
        self.decoder_pred = nn.Linear(d, p * p * self.out_channels)
        self.final_conv = nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1)
        self.initialize_weights()

    @property
    def num_extra_tokens(self) -> int:
        """Tokens before the patches: the time token, and the label token when conditional."""
        return 1 if self.label_embed is None else 2

    def initialize_weights(self) -> None:
        """Truncated-normal (std 0.02) linear weights, zero biases, N(0, 0.02) label table (the
        paper's ViT setup); then zero the final linear map, the final convolution's bias and
        the cross-attention output projections: the output is exactly 0 at init."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.label_embed is not None:
            nn.init.normal_(self.label_embed.weight, std=0.02)
        zero = [self.decoder_pred]
        zero += [b.cross_attn.to_out for b in self.blocks() if b.cross_attn is not None]
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.zeros_(self.final_conv.bias)

    def blocks(self) -> list[UViTBlock]:
        """The blocks in order: in-blocks, mid-block, out-blocks."""
        return [*self.in_blocks, self.mid_block, *self.out_blocks]

    @property
    def size_multiple(self) -> int:
        """Height and width are multiples of this (``patch_size``) without padding."""
        return self.patch_size

    def check_image_size(self, height: int, width: int | None = None) -> None:
        """Raise ``ValueError`` unless a ``height x width`` image needs no padding (for exports
        to tools that do not pad, ONNX)."""
        width = height if width is None else width
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"{NAME} with patch_size={self.patch_size} needs height and width "
                             f"divisible by {self.patch_size}, got {height}x{width}; use a "
                             f"smaller model.patch_size")

    def pad(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` padded at the bottom and right to the next multiple of
        ``patch_size`` (reflected; replicated when too small); as it is when it fits."""
        return pad_to_multiple(x, self.patch_size)

    def extra_tokens(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The time token and, for a class-conditional net, the label token of ``y`` ``(B,)``
        (``None``: the null label ``num_classes``): ``(B, num_extra_tokens, D)``. ``t``
        ``(B,)`` is whatever the objective feeds the network."""
        time = self.time_embed(t)  # (B, D)
        label = add_label_embedding(NAME, torch.zeros_like(time), self.label_embed,
                                    self.num_classes, y)  # (B, D); checks y
        tokens = [time] if self.label_embed is None else [time, label]
        return torch.stack(tokens, dim=1)  # (B, E, D)

    def check_context(self, batch: int, context: Tensor | None,
                      context_mask: Tensor | None) -> None:
        """Raise ``ValueError`` unless ``context`` ``(batch, L, context_dim)`` and
        ``context_mask`` ``(batch, L)`` bool (only with a context) suit this net."""
        check_token_context(NAME, self.context_dim, batch, context, context_mask,
                            "set context_dim")

    def position_embedding(self, grid_h: int, grid_w: int, like: Tensor) -> Tensor:
        """``(1, grid_h * grid_w, D)`` patch position embeddings (the buffer for the built
        grid, else computed), in ``like``'s dtype and device."""
        same = (grid_h, grid_w) == self._grid
        pos = self.pos_embed if same else sincos_pos_embed_2d(self.hidden_size, grid_h, grid_w)
        return pos.reshape(1, grid_h * grid_w, -1).to(device=like.device, dtype=like.dtype)

    def _run(self, block: UViTBlock, h: Tensor, skip: Tensor | None, context: Tensor | None,
             context_mask: Tensor | None) -> Tensor:
        """One block, recomputed in backward when checkpointing while training."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, skip, context, context_mask, use_reentrant=False)
        return block(h, skip, context, context_mask)

    def transformer(self, h: Tensor, context: Tensor | None,
                    context_mask: Tensor | None) -> Tensor:
        """In-blocks, mid-block, out-blocks with the long skips: ``(B, N, D) -> (B, N, D)``."""
        skips = []
        for block in self.in_blocks:
            h = self._run(block, h, None, context, context_mask)
            skips.append(h)
        h = self._run(self.mid_block, h, None, context, context_mask)
        for block in self.out_blocks:
            h = self._run(block, h, skips.pop(), context, context_mask)
        return h

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, *,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """Predict from noisy images ``x`` ``(B, C, H, W)`` at times ``t`` ``(B,)``.

        ``y`` ``(B,)``: class labels (class-conditional nets, see :meth:`extra_tokens`).
        ``context`` ``(B, L, context_dim)`` with ``context_mask`` ``(B, L)`` bool (True =
        attend; ``None`` = all): the tokens every block cross-attends to; ``context=None``
        skips the cross-attention.

        Returns:
            Tensor of shape ``(B, out_channels, H, W)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{NAME} expects input of shape (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        self.check_context(x.shape[0], context, context_mask)
        xp = self.pad(x)  # (B, C, H', W'), multiples of patch_size
        hp, wp = xp.shape[-2], xp.shape[-1]
        p = self.patch_size
        h = self.patch_embed(patchify(xp, p))  # (B, T, D)
        h = h + self.position_embedding(hp // p, wp // p, h)
        extras = self.extra_tokens(t, y).to(h.dtype)  # (B, E, D)
        h = self.transformer(torch.cat([extras, h], dim=1), context, context_mask)
        h = self.norm(h)[:, extras.shape[1]:]  # (B, T, D): the patch tokens
        out = unpatchify(self.decoder_pred(h), p, hp, wp)  # (B, out, H', W')
        out = self.final_conv(out)
        return out[..., : x.shape[-2], : x.shape[-1]]  # (B, out_channels, H, W)
