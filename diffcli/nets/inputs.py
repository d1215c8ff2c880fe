"""What the denoising networks do to their inputs before their blocks: the class embedding
with its null label (classifier-free guidance, Ho & Salimans 2022) and padding an image to the
multiple of the network's size (shared by :class:`~diffcli.nets.unet.UNet` and
:class:`~diffcli.nets.dit.DiT`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["add_label_embedding", "pad_to_multiple"]


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
