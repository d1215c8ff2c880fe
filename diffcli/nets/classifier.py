"""Noise-aware classifiers p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021, Sec. 4).

Dhariwal & Nichol train "the downsampling trunk of the UNet model with an attention pool at the
8x8 layer" on noised images x_t ~ q(x_t | x_0) with the same timestep input as the diffusion
model; here the trunk is the U-Net's encoder half (:meth:`diffcli.nets.unet.UNet.encode`, down
path and middle block) with a mean-pooled linear head. For 2-D points the classifier is the
time-conditioned MLP with one output per class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from diffcli.nets.layers import norm
from diffcli.nets.mlp import MLP
from diffcli.nets.unet import UNet

__all__ = ["EncoderClassifier", "MLPClassifier"]


class EncoderClassifier(nn.Module):
    """logits ``(B, K)`` of images x_t ``(B, C, H, W)`` at timesteps t ``(B,)``.

    Args:
        num_classes: K, the number of classes.
        data_shape: one sample's shape ``(C, H, W)``.
        **unet: the encoder's keywords, as :class:`~diffcli.nets.unet.UNet` takes them
            (base_channels, channel_mults, num_res_blocks, attention_levels, ...).
    """

    def __init__(self, *, num_classes: int, data_shape: Sequence[int], groups: int = 8,
                 **unet: Any) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        if len(data_shape) != 3:
            raise ValueError(f"the image classifier takes images (C, H, W), but the data are of "
                             f"shape {tuple(data_shape)}; use model=mlp_classifier for points")
        self.num_classes = num_classes
        self.encoder = UNet(data_shape=data_shape, groups=groups, decoder=False, **unet)
        ch = self.encoder.encoder_channels
        self.head = nn.Sequential(norm(ch, groups), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(ch, num_classes))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h, _, _ = self.encoder.encode(x, t)  # (B, C_last, H / m, W / m)
        return self.head(h)  # (B, K)


class MLPClassifier(MLP):
    """logits ``(B, K)`` of points x_t ``(B, D)`` at timesteps t ``(B,)``: the time-conditioned
    :class:`~diffcli.nets.mlp.MLP` with K outputs."""

    def __init__(self, *, num_classes: int, data_shape: Sequence[int], hidden: int = 128,
                 depth: int = 3, emb_dim: int = 64) -> None:
        if num_classes < 2:
            raise ValueError(f"a classifier needs num_classes >= 2, got {num_classes}")
        super().__init__(hidden=hidden, depth=depth, emb_dim=emb_dim, data_shape=data_shape,
                         out_dim=num_classes)
        self.num_classes_out = num_classes

    def forward(self, x: Tensor, t: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x, t)
