"""DiT: the Diffusion Transformer (Peebles & Xie 2023, "Scalable Diffusion Models with
Transformers"), with optional PixArt-style text cross-attention (Chen et al. 2024, PixArt-alpha,
Sec. 2.3).

Layout (Peebles & Xie 2023, Sec. 3.2, Fig. 3):

* patchify: a ``p x p`` convolution with stride ``p`` turns ``(B, C, H, W)`` into
  ``T = (H / p) (W / p)`` tokens of width ``hidden_size`` (a linear embedding of each
  ``p x p x C`` patch), plus fixed 2-D sine-cosine position embeddings (a buffer, not learned;
  the first half of the channels encodes the column, the second the row, as the paper's code
  and diffusers' ``PatchEmbed``);
* conditioning ``c = TimeEmbedding(t) + LabelEmbedding(y)`` ``(B, hidden_size)``: 256
  sinusoidal features of ``t`` through a two-layer MLP (as the repo's U-Net), plus a class
  embedding with one extra null label for classifier-free guidance (Ho & Salimans 2022). The
  features are ``[cos(t f_i), sin(t f_i)]`` with ``f_i = 10000 ** (-i / (128 - 1))`` by default
  (``time_freq_shift=1``): diffusers' ``DiTTransformer2DModel`` basis (``Timesteps(256,
  flip_sin_to_cos=True, downscale_freq_shift=1)``), so the net exports to it exactly
  (:mod:`diffcli.interop.dit_diffusers`); the paper's own code uses ``time_freq_shift=0``
  (``f_i = 10000 ** (-i / 128)``), a slightly different frequency basis of the same kind;
* ``depth`` adaLN-Zero blocks: LayerNorm without affine parameters, modulated by a shift,
  scale and gate regressed from ``c`` (SiLU -> Linear, zero-initialised so each block is the
  identity at init), around multi-head self-attention and a GELU (tanh) MLP;
* final layer: adaLN (shift, scale; zero-init) and a zero-initialised linear map to
  ``p * p * out_channels`` per token, unpatchified back to ``(B, out_channels, H, W)``: the
  net outputs exactly 0 at initialisation.

Text conditioning (``context_dim``): every block gets a cross-attention layer between the
self-attention and the MLP, attending to a token context ``(B, L, context_dim)`` (PixArt-alpha,
Sec. 2.3); its output projection is zero-initialised, so it starts as the identity. Samples
whose context mask is all ``False`` get exactly zero from it (the same output as
``context=None``).

Image sizes that are not a multiple of ``patch_size`` are padded at the bottom and right
(reflected, as :meth:`diffcli.nets.unet.UNet.pad`) and the output cropped back; the position
embeddings are computed for the padded token grid.

Sizes of Table 1 (patch size 2 by default, ``model.patch_size`` 4 or 8 for fewer tokens):
DiT-S (depth 12, hidden 384, 6 heads), DiT-B (12, 768, 12), DiT-L (24, 1024, 16),
DiT-XL (28, 1152, 16).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from diffcli.nets.attention import CrossAttention, check_token_context
from diffcli.nets.inputs import (
    add_label_embedding,
    check_token_sizes,
    image_shape,
    output_channels,
    pad_to_multiple,
)
from diffcli.nets.layers import TimeEmbedding

__all__ = ["DiT", "DiTBlock", "patchify", "sincos_pos_embed_2d", "unpatchify"]


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """Cut ``x`` ``(B, C, H, W)`` into non-overlapping ``p x p`` patches, row-major:
    ``(B, (H / p) (W / p), p * p * C)``, each patch flattened as ``(p_row, p_col, C)``."""
    b, c, h, w = x.shape
    p = patch_size
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """The inverse of :func:`patchify`: ``(B, (H / p) (W / p), p * p * C)`` ->
    ``(B, C, H, W)``."""
    b, _, d = tokens.shape
    p = patch_size
    c = d // (p * p)
    x = tokens.reshape(b, height // p, width // p, p, p, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, height, width)


def _sincos_1d(dim: int, positions: Tensor) -> Tensor:
    """``(N,)`` positions -> ``(N, dim)``: ``[sin(pos w_i), cos(pos w_i)]`` with
    ``w_i = 10000 ** (-i / (dim / 2))`` (Vaswani et al. 2017, Sec. 3.5)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device="cpu") / (dim / 2)
    omega = 10000.0 ** -omega  # (dim / 2,)
    args = positions.to(torch.float64)[:, None] * omega[None, :]  # (N, dim / 2)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding (Peebles & Xie 2023, Sec. 3.2, after ViT /
    MAE): ``(grid_h * grid_w, dim)`` float32, row-major over the token grid; the first half of
    the channels encodes the column, the second half the row (the layout of the paper's code and
    of diffusers' ``PatchEmbed`` at its trained size). ``dim`` must be a multiple of 4. Computed
    on the CPU."""
    rows = torch.arange(grid_h, device="cpu").repeat_interleave(grid_w)  # (T,)
    cols = torch.arange(grid_w, device="cpu").repeat(grid_h)  # (T,)
    emb = torch.cat([_sincos_1d(dim // 2, cols), _sincos_1d(dim // 2, rows)], dim=1)
    return emb.to(torch.float32)  # (T, dim)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN: ``x * (1 + scale) + shift`` with ``x`` ``(B, T, D)``, shift / scale ``(B, D)``."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


class SelfAttention(nn.Module):
    """Multi-head self-attention over ``(B, T, D)`` tokens (fused qkv projection with bias,
    :func:`torch.nn.functional.scaled_dot_product_attention`, output projection)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, D) -> (B, T, D)``."""
        b, t, d = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, d // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, T, d / heads)
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, T, d / heads)
        return self.proj(a.transpose(1, 2).reshape(b, t, d))


class Mlp(nn.Module):
    """``Linear(D, r D) -> GELU (tanh approximation) -> Linear(r D, D)`` on ``(B, T, D)``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, T, D) -> (B, T, D)``."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    """The adaLN-Zero DiT block (Peebles & Xie 2023, Sec. 3.2, Fig. 3), with an optional
    PixArt-alpha cross-attention layer (Chen et al. 2024, Sec. 2.3)::

        shift1, scale1, gate1, shift2, scale2, gate2 = Linear(SiLU(c))   # zero-init
        x = x + gate1 * SelfAttn(LN(x) * (1 + scale1) + shift1)
        x = x + CrossAttn(x, context, mask)                   # only with a context
        x = x + gate2 * MLP(LN(x) * (1 + scale2) + shift2)

    The LayerNorms have no affine parameters (adaLN supplies them); the zero-initialised
    modulation makes every gate 0, so the block is the identity at init. The cross-attention's
    output projection is zero-initialised too.

    Args:
        dim: token width ``D``.
        num_heads: attention heads; must divide ``dim``.
        mlp_ratio: MLP hidden width over ``dim``.
        context_dim: width of the context tokens; ``None``: no cross-attention layer.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0,
                 context_dim: int | None = None) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.cross_attn = None
        if context_dim is not None:
            self.cross_attn = CrossAttention(dim, context_dim, heads=num_heads,
                                             head_dim=dim // num_heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))

    def forward(self, x: Tensor, c: Tensor, context: Tensor | None = None,
                context_mask: Tensor | None = None) -> Tensor:
        """``x`` ``(B, T, D)`` tokens, ``c`` ``(B, D)`` conditioning, ``context``
        ``(B, L, context_dim)`` (``None``: no cross-attention), ``context_mask`` ``(B, L)``
        bool (True = attend). Returns ``(B, T, D)``."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate1[:, None, :] * self.attn(modulate(self.norm1(x), shift1, scale1))
        if context is not None and self.cross_attn is not None:
            x = x + self.cross_attn(x, context, context_mask)  # all-masked rows: exactly 0
        return x + gate2[:, None, :] * self.mlp(modulate(self.norm2(x), shift2, scale2))


class FinalLayer(nn.Module):
    """adaLN (shift, scale from ``c``; zero-init) then a zero-initialised linear map of each
    token to its ``p * p * out_channels`` patch values (Peebles & Xie 2023, Sec. 3.2)."""

    def __init__(self, dim: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: Tensor, c: Tensor) -> Tensor:
        """``(B, T, D)``, ``(B, D)`` -> ``(B, T, p * p * out_channels)``."""
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm(x), shift, scale))


class DiT(nn.Module):
    """Diffusion Transformer mapping ``(x_t, t[, y])`` to ``(B, out_channels, H, W)``
    (Peebles & Xie 2023), with the same interface as :class:`~diffcli.nets.unet.UNet`.

    Args:
        data_shape: one sample's shape ``(C, H, W)``, the keyword every diffcli network takes
            from the data: sets ``in_channels`` and ``image_size`` (and the position grid).
        in_channels: image channels, when no ``data_shape`` is given.
        image_size: input height (and width) in pixels, when no ``data_shape`` is given;
            ``None``: the position embeddings are computed per call.
        patch_size: side ``p`` of the square patches (the paper's 2, 4 or 8); ``T = HW / p^2``
            tokens.
        hidden_size: token width ``D``.
        depth: number of DiT blocks.
        num_heads: attention heads; must divide ``hidden_size``.
        mlp_ratio: MLP hidden width over ``hidden_size`` (4 in the paper).
        num_classes: class labels for class conditioning; label ``num_classes`` is the null
            label of classifier-free guidance. ``None``: unconditional.
        learn_sigma: also output the reverse-process variances (Nichol & Dhariwal 2021,
            eq. 15): ``2 * in_channels`` output channels, as the U-Net.
        out_channels: output channels; defaults to ``in_channels`` (or twice with
            ``learn_sigma``).
        context_dim: width of a token context for cross-attention in every block
            (PixArt-alpha); ``None``: no cross-attention parameters.
        grad_checkpointing: recompute each block in the backward pass
            (:func:`torch.utils.checkpoint.checkpoint`, ``use_reentrant=False``) while training
            with gradients enabled: less activation memory, about one more forward of compute.
        freq_dim: width of the sinusoidal timestep features (256 in the paper and diffusers).
        time_freq_shift: the timestep frequencies are ``10000 ** (-i / (freq_dim / 2 -
            time_freq_shift))``: 1 (default) is diffusers' ``DiTTransformer2DModel``
            (``downscale_freq_shift=1``), needed for ``format=diffusers``; 0 is the paper's
            code.

    Raises:
        ValueError: data that are not images ``(C, H, W)``, or sizes that do not fit (one line
            naming the option).
    """

    def __init__(self, *, data_shape: Sequence[int] | None = None, in_channels: int = 4,
                 image_size: int | None = None, patch_size: int = 2, hidden_size: int = 128,
                 depth: int = 4, num_heads: int = 4, mlp_ratio: float = 4.0,
                 num_classes: int | None = None, learn_sigma: bool = False,
                 out_channels: int | None = None, context_dim: int | None = None,
                 grad_checkpointing: bool = False, freq_dim: int = 256,
                 time_freq_shift: float = 1.0) -> None:
        super().__init__()
        image_width = image_size
        if data_shape is not None:
            in_channels, image_size, image_width = image_shape("DiT", data_shape)
        check_token_sizes("DiT", patch_size, hidden_size, depth, num_heads, num_classes,
                          context_dim)
        self._set_sizes(in_channels, image_size, patch_size, hidden_size, num_classes,
                        learn_sigma, out_channels, context_dim)
        self.grad_checkpointing = bool(grad_checkpointing)
        self.x_embedder = nn.Conv2d(in_channels, hidden_size, patch_size, stride=patch_size)
        self.t_embedder = TimeEmbedding(freq_dim, hidden_size, freq_shift=time_freq_shift)
        # Row ``num_classes`` is the null label (classifier-free guidance).
        self.y_embedder = (None if num_classes is None
                           else nn.Embedding(num_classes + 1, hidden_size))
        self._grid = (0, 0)
        if image_size is not None and image_width is not None:
            self._grid = (-(-image_size // patch_size), -(-image_width // patch_size))
        pos = sincos_pos_embed_2d(hidden_size, *self._grid).to(torch.empty(0).device)
        self.register_buffer("pos_embed", pos[None], persistent=False)  # (1, T, D)
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads, mlp_ratio, context_dim)
                                    for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def _set_sizes(self, in_channels: int, image_size: int | None, patch_size: int,
                   hidden_size: int, num_classes: int | None, learn_sigma: bool,
                   out_channels: int | None, context_dim: int | None) -> None:
        """Record the sizes as the attributes other code reads (as the U-Net's)."""
        self.in_channels = int(in_channels)
        self.image_size = image_size
        self.patch_size = int(patch_size)
        self.hidden_size = int(hidden_size)
        self.num_classes = num_classes
        self.learn_sigma = bool(learn_sigma)
        self.context_dim = context_dim
        self.out_channels = output_channels("DiT", self.in_channels, self.learn_sigma,
                                            out_channels)

    def initialize_weights(self) -> None:
        """Peebles & Xie 2023, Sec. 3.2 and their released setup: Xavier-uniform linear layers
        (and the patch embedding, seen as a linear map), N(0, 0.02) label and timestep-MLP
        weights, then adaLN-Zero: every modulation, the final linear layer and the
        cross-attention output projections start at zero."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.x_embedder.weight.view(self.hidden_size, -1))
        nn.init.zeros_(self.x_embedder.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        zero = [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for block in self.blocks:
            zero.append(block.adaLN_modulation[-1])
            if block.cross_attn is not None:
                zero.append(block.cross_attn.to_out)
        for layer in zero:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @property
    def size_multiple(self) -> int:
        """Height and width are multiples of this (``patch_size``) without padding."""
        return self.patch_size

    def check_image_size(self, height: int, width: int | None = None) -> None:
        """Raise ``ValueError`` unless a ``height x width`` image is cut into patches without
        padding (:meth:`pad`): for exports to tools that do not pad (ONNX)."""
        width = height if width is None else width
        p = self.patch_size
        if height % p or width % p:
            raise ValueError(f"DiT with patch_size={p} needs height and width divisible by {p}, "
                             f"got {height}x{width}; use a smaller model.patch_size")

    def pad(self, x: Tensor) -> Tensor:
        """``x`` ``(B, C, H, W)`` padded at the bottom and right (reflected; replicated when
        too small to reflect) to the next multiple of ``patch_size``; returned as it is when
        it fits. :meth:`forward` crops its output back to ``H x W``."""
        return pad_to_multiple(x, self.patch_size)

    def embed(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Conditioning ``c`` ``(B, hidden_size)``: the timestep embedding plus, for a
        class-conditional net, the label embedding of ``y`` ``(B,)`` (integers in
        ``0 .. num_classes``; ``None``: the null label ``num_classes`` for every sample).

        ``t`` ``(B,)`` is whatever the objective feeds the network: DDPM steps as floats,
        EDM's scaled ``c_noise``, flow matching's scaled time.
        """
        c = self.t_embedder(t)  # (B, D)
        return add_label_embedding("DiT", c, self.y_embedder, self.num_classes, y)

    def check_context(self, batch: int, context: Tensor | None,
                      context_mask: Tensor | None) -> None:
        """Raise ``ValueError`` unless ``context`` ``(batch, L, context_dim)`` and
        ``context_mask`` ``(batch, L)`` bool (only with a context) suit this net."""
        check_token_context("DiT", self.context_dim, batch, context, context_mask,
                            "set context_dim")

    def position_embedding(self, grid_h: int, grid_w: int, like: Tensor) -> Tensor:
        """``(1, grid_h * grid_w, D)`` position embeddings: the buffer for the built grid,
        else computed for this one; in ``like``'s dtype and device."""
        if (grid_h, grid_w) == self._grid:
            pos = self.pos_embed
        else:
            pos = sincos_pos_embed_2d(self.hidden_size, grid_h, grid_w)[None]
        return pos.to(device=like.device, dtype=like.dtype)

    def _run_block(self, block: DiTBlock, h: Tensor, c: Tensor, context: Tensor | None,
                   context_mask: Tensor | None) -> Tensor:
        """One block, recomputed in backward when checkpointing while training."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, c, context, context_mask, use_reentrant=False)
        return block(h, c, context, context_mask)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, *,
                context: Tensor | None = None, context_mask: Tensor | None = None) -> Tensor:
        """Predict from noisy images ``x`` ``(B, C, H, W)`` at times ``t`` ``(B,)``.

        ``y`` ``(B,)``: class labels (class-conditional nets, see :meth:`embed`).
        ``context`` ``(B, L, context_dim)`` with ``context_mask`` ``(B, L)`` bool (True =
        attend; ``None`` = all): the tokens every block cross-attends to; ``context=None``
        skips the cross-attention.

        Returns:
            Tensor of shape ``(B, out_channels, H, W)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"DiT expects input of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        self.check_context(x.shape[0], context, context_mask)
        c = self.embed(t, y)  # (B, D)
        xp = self.pad(x)  # (B, C, H', W'), multiples of patch_size
        hp, wp = xp.shape[-2], xp.shape[-1]
        h = self.x_embedder(xp).flatten(2).transpose(1, 2)  # (B, T, D)
        h = h + self.position_embedding(hp // self.patch_size, wp // self.patch_size, h)
        for block in self.blocks:
            h = self._run_block(block, h, c, context, context_mask)
        out = unpatchify(self.final_layer(h, c), self.patch_size, hp, wp)  # (B, out, H', W')
        return out[..., : x.shape[-2], : x.shape[-1]]  # (B, out_channels, H, W)
