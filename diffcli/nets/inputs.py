"""What the denoising networks do to their inputs before their blocks: the class embedding
with its null label (classifier-free guidance, Ho & Salimans 2022) and padding an image to the
multiple of the network's size (shared by :class:`~diffcli.nets.unet.UNet` and
:class:`~diffcli.nets.dit.DiT`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["add_label_embedding", "check_token_sizes", "image_shape", "output_channels",
           "pad_to_multiple"]


def add_label_embedding(net: str, emb: Tensor, table: nn.Embedding | None,
                        num_classes: int | None, y: Tensor | None) -> Tensor:
    """``emb`` ``(B, D)`` plus the class embedding of ``y`` ``(B,)`` from ``table`` (rows
    ``0 .. num_classes``, row ``num_classes`` the null label of classifier-free guidance, Ho &
    Salimans 2022; ``y=None``: the null label for every sample). ``table=None`` (an
    unconditional net): ``emb`` as it is. ValueError (naming ``net``) for labels given to an
    unconditional net or labels that are not integer ``(B,)``."""
    if table is None:
        if y is not None:
            raise ValueError(f"{net} got class labels y but was built with num_classes=None")
        return emb
    if y is None:
        y = torch.full((emb.shape[0],), num_classes, dtype=torch.long, device=emb.device)
    elif y.ndim != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(
            f"{net} expects integer class labels of shape (B,), got {y.dtype} {tuple(y.shape)}"
        )
    return emb + table(y).to(emb.dtype)  # (B, D)


def pad_to_multiple(x: Tensor, m: int) -> Tensor:
    """``x`` ``(B, C, H, W)`` padded at the bottom and right to the next multiple of ``m``
    (reflected; replicated when too small to reflect); returned as it is when it fits."""
    below, right = -x.shape[-2] % m, -x.shape[-1] % m
    if not below and not right:
        return x
    reflect = below < x.shape[-2] and right < x.shape[-1]
    return F.pad(x, (0, right, 0, below), mode="reflect" if reflect else "replicate")


def image_shape(net: str, data_shape: Sequence[int]) -> tuple[int, int, int]:
    """(C, H, W) of an image sample shape; other data (points) are refused in one line naming
    ``net``."""
    if len(data_shape) != 3:
        raise ValueError(f"the {net} takes images (C, H, W), but the data are of shape "
                         f"{tuple(data_shape)}; use the MLP (model=mlp) for points")
    return int(data_shape[0]), int(data_shape[1]), int(data_shape[2])


def output_channels(net: str, in_channels: int, learn_sigma: bool,
                    out_channels: int | None) -> int:
    """A net's output channels: ``in_channels`` (twice with ``learn_sigma``: prediction and
    variance halves, Nichol & Dhariwal 2021) unless given; ValueError for an odd count with
    ``learn_sigma``."""
    if out_channels is None:
        return 2 * in_channels if learn_sigma else in_channels
    if learn_sigma and out_channels % 2:
        raise ValueError(f"{net} with learn_sigma=true needs an even out_channels (prediction "
                         f"and variance halves), got {out_channels}")
    return int(out_channels)


def check_token_sizes(net: str, patch_size: int, hidden_size: int, depth: int, num_heads: int,
                      num_classes: int | None, context_dim: int | None) -> None:
    """One-line ``ValueError`` naming ``net`` and the option, for sizes a patch transformer
    (DiT, U-ViT) cannot be built with."""
    problems = [
        (patch_size < 1, f"patch_size must be >= 1, got {patch_size}"),
        (depth < 1, f"depth must be >= 1, got {depth}"),
        (hidden_size < 4 or hidden_size % 4, f"hidden_size must be a positive multiple of 4 "
                                             f"(2-D sin-cos position embedding), got "
                                             f"{hidden_size}"),
        (num_heads < 1 or hidden_size % num_heads, f"num_heads={num_heads} must be a positive "
                                                   f"divisor of hidden_size={hidden_size}"),
        (num_classes is not None and num_classes < 1,
         f"num_classes must be >= 1 or None, got {num_classes}"),
        (context_dim is not None and context_dim < 1,
         f"context_dim must be >= 1 or None, got {context_dim}"),
    ]
    for bad, message in problems:
        if bad:
            raise ValueError(f"{net} {message}")
