"""diffcli's :class:`~diffcli.nets.unet.UNet` keyword arguments -> diffusers' ``UNet2DModel``
config (export), and the checks of what ``UNet2DModel`` can express.

:func:`diffusers_unet_config` turns a diffcli ``model`` config node (minus ``_target_``) and
the data shape into ``UNet2DModel(**config)``; :func:`check_exportable` refuses, in one line
naming the option, the nets it cannot express. The weights follow through
:mod:`diffcli.interop.diffusers_layout`, which re-exports :func:`diffusers_unet_config`; the
other direction is :mod:`diffcli.interop.config_from_diffusers`. diffusers itself is never
imported here (the net is laid out on the ``meta`` device).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from diffcli.nets.attention import SpatialTransformer
from diffcli.nets.layers import AttentionBlock, Downsample, ResBlock
from diffcli.nets.unet import UNet

__all__ = [
    "check_exportable",
    "diffusers_unet_config",
    "meta_unet",
    "plain_number",
]

# Block types per (has attention, resamples with ResNet blocks).
_DOWN_TYPES = {
    (False, False): "DownBlock2D",
    (False, True): "ResnetDownsampleBlock2D",
    (True, False): "AttnDownBlock2D",
    (True, True): "AttnDownBlock2D",
}
_UP_TYPES = {
    (False, False): "UpBlock2D",
    (False, True): "ResnetUpsampleBlock2D",
    (True, False): "AttnUpBlock2D",
    (True, True): "AttnUpBlock2D",
}


def meta_unet(unet_kwargs: Mapping[str, Any], data_shape: Sequence[int]) -> UNet:
    """The diffcli net for ``unet_kwargs`` on the meta device (layout only, no memory)."""
    kwargs = {k: v for k, v in dict(unet_kwargs).items() if k not in ("_target_", "data_shape")}
    with torch.device("meta"):
        return UNet(**kwargs, data_shape=tuple(int(d) for d in data_shape))


def plain_number(value: float) -> float | int:
    """``value`` as an int when it is integral (diffusers types freq_shift as int)."""
    return int(value) if float(value).is_integer() else float(value)


def _option(unet_kwargs: Mapping[str, Any], name: str) -> Any:
    """The value of UNet option ``name``: from ``unet_kwargs``, else UNet's default."""
    if name in unet_kwargs:
        return unet_kwargs[name]
    return inspect.signature(UNet.__init__).parameters[name].default


def check_exportable(net: UNet, unet_kwargs: Mapping[str, Any]) -> None:
    """Raise a one-line ``ValueError`` for diffcli options UNet2DModel cannot express."""
    if net.context_dim is not None or any(isinstance(m, SpatialTransformer)
                                          for m in net.modules()):
        raise ValueError(f"model.context_dim={net.context_dim}: diffusers' UNet2DModel has no "
                         "cross-attention (spatial transformers); text-conditional U-Nets need "
                         "UNet2DConditionModel, which diffcli does not export")
    if net.out is None:
        raise ValueError("model.decoder=false: diffusers' UNet2DModel needs the decoder half")
    groups = sorted({m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm)})
    if len(groups) > 1:
        raise ValueError(f"model.groups={_option(unet_kwargs, 'groups')}: this net's GroupNorms "
                         f"use {groups} groups (the largest "
                         "divisor of each width up to model.groups), but diffusers' UNet2DModel "
                         "has one norm_num_groups; choose groups dividing every channel count")
    _attention_head_dim(net, unet_kwargs)  # raises for mixed head widths


def _attention_head_dim(net: UNet, unet_kwargs: Mapping[str, Any]) -> int | None:
    """UNet2DModel's ``attention_head_dim``: ``None`` when every attention has one head."""
    blocks = [m for m in net.modules() if isinstance(m, AttentionBlock)]
    if all(m.num_heads == 1 for m in blocks):
        return None  # diffusers then uses each block's width: one head everywhere
    dims = sorted({m.channels // m.num_heads for m in blocks})
    if len(dims) > 1:
        widths = sorted({m.channels for m in blocks})
        raise ValueError(f"model.num_heads={_option(unet_kwargs, 'num_heads')}, "
                         f"model.num_head_channels={_option(unet_kwargs, 'num_head_channels')}: "
                         f"attention at widths "
                         f"{widths} has head widths {dims}, but diffusers' UNet2DModel has one "
                         "attention_head_dim; set num_head_channels")
    return dims[0]


def _resamples_with_resnets(net: UNet) -> bool:
    """Whether ``net`` resamples with ResNet blocks (``resblock_updown``)."""
    return any(isinstance(m, ResBlock) and (m.down or m.up) for m in net.modules())


def _uses_scale_shift(net: UNet) -> bool:
    """Whether ``net``'s ResBlocks apply the timestep as scale and shift of the norm."""
    return any(isinstance(m, ResBlock) and m.use_scale_shift_norm for m in net.modules())


def _block_config(net: UNet) -> dict[str, Any]:
    """UNet2DModel's block keys, ``down_block_types`` to ``upsample_type``, for ``net``."""
    levels = len(net.channel_mults)
    updown = _resamples_with_resnets(net)
    attn_levels = net.attention_levels
    paddings = {m.padding for m in net.modules() if isinstance(m, Downsample)}
    return {
        "down_block_types": [_DOWN_TYPES[(lv in attn_levels, updown)] for lv in range(levels)],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": [_UP_TYPES[(lv in attn_levels, updown)]
                           for lv in reversed(range(levels))],
        "block_out_channels": [net.conv_in.out_channels * m for m in net.channel_mults],
        "layers_per_block": net.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": paddings.pop() if paddings else 1,
        "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv",
    }


def _norm_config(net: UNet) -> dict[str, Any]:
    """UNet2DModel's normalisation keys, ``norm_num_groups`` to ``resnet_time_scale_shift``."""
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    scale_shift = _uses_scale_shift(net)
    return {
        "norm_num_groups": norms[0].num_groups,
        # diffusers drops the mid attention's GroupNorm under scale-shift unless told.
        "attn_norm_num_groups": norms[0].num_groups if scale_shift else None,
        "norm_eps": norms[0].eps,
        "resnet_time_scale_shift": "scale_shift" if scale_shift else "default",
    }


def diffusers_unet_config(unet_kwargs: Mapping[str, Any],
                          data_shape: Sequence[int]) -> dict[str, Any]:
    """The ``UNet2DModel(**config)`` keyword arguments for a diffcli U-Net.

    Args:
        unet_kwargs: the run's ``model`` config node minus ``_target_`` (any
            :class:`~diffcli.nets.unet.UNet` keyword arguments; ``data_shape`` in it is
            ignored).
        data_shape: one sample's shape ``(C, H, W)``.

    Returns:
        A JSON-serialisable dict with every ``UNet2DModel`` argument (diffusers 0.42):
        with weights from :func:`~diffcli.interop.diffusers_layout.to_diffusers_state_dict`
        the model computes the same function as the diffcli net
        (``model(x, t).sample == net(x, t)``; class-conditional nets take
        ``class_labels=y``, and diffcli's null label is ``num_classes``).

    Raises:
        ValueError: (one line, naming the option) for nets UNet2DModel cannot express:
            text conditioning (``context_dim`` / spatial transformers), ``decoder=false``,
            GroupNorms with differing group counts, attention with differing head widths;
            also anything :class:`~diffcli.nets.unet.UNet` itself refuses.
    """
    net = meta_unet(unet_kwargs, data_shape)
    check_exportable(net, unet_kwargs)
    channels, height, width = (int(d) for d in data_shape)
    base = net.conv_in.out_channels
    dropouts = {m.p for m in net.modules() if isinstance(m, nn.Dropout)}
    return {
        "sample_size": height if height == width else [height, width],
        "in_channels": channels,
        "out_channels": net.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": None if net.emb_dim == 4 * base else net.emb_dim,
        "freq_shift": plain_number(net.time_embed.freq_shift),
        "flip_sin_to_cos": not net.time_embed.sin_first,
        **_block_config(net),
        "dropout": dropouts.pop() if dropouts else 0.0,
        "act_fn": "silu",
        "attention_head_dim": _attention_head_dim(net, unet_kwargs),
        **_norm_config(net),
        "add_attention": any(isinstance(m, AttentionBlock) for m in net.mid_block),
        "class_embed_type": None,
        "num_class_embeds": None if net.num_classes is None else net.num_classes + 1,
        "num_train_timesteps": None,
    }
