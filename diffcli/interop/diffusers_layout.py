"""diffcli's :class:`~diffcli.nets.unet.UNet` in diffusers' ``UNet2DModel`` layout, and back.

Both are the DDPM / ADM U-Net (Ho et al. 2020; Nichol & Dhariwal 2021), so a diffcli net
and a ``UNet2DModel`` of matching config compute the same function; only the parameter
names (and the fused ``qkv`` convolution of diffcli's attention) differ. This module
translates the weights both ways; the configs translate in
:mod:`diffcli.interop.config_to_diffusers` and :mod:`diffcli.interop.config_from_diffusers`,
whose public names are re-exported here:

* :func:`diffusers_unet_config` / :func:`to_diffusers_state_dict`: a diffcli ``model``
  config node (minus ``_target_``) and the data shape -> ``UNet2DModel(**config)`` and
  its state dict (export).
* :func:`from_diffusers_config` / :func:`from_diffusers_state_dict`: a ``UNet2DModel``
  ``config.json`` and state dict -> diffcli ``UNet`` keyword arguments, data shape and
  state dict (import, e.g. ``google/ddpm-cifar10-32``).

Correspondence (diffcli -> diffusers):

================================  ===========================================================
``time_embed.mlp.0`` / ``.2``     ``time_embedding.linear_1`` / ``linear_2``
``label_embed``                   ``class_embedding`` (``num_class_embeds = num_classes + 1``)
``conv_in``                       ``conv_in``
encoder level ``l``               ``down_blocks.l``: ``resnets.j`` [+ ``attentions.j``],
                                  then ``downsamplers.0`` (``.conv`` or a ResNet block)
``mid_block``                     ``mid_block.resnets.0``, [``attentions.0``], ``resnets.1``
decoder level ``l`` (from the     ``up_blocks.i`` (``i = levels - 1 - l``): ``resnets.j``
bottom)                           [+ ``attentions.j``], then ``upsamplers.0``
ResBlock ``in_layers.0/.2``,      ``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``,
``emb_proj.1``, ``out_layers.0``, ``conv2``, ``conv_shortcut``
``out_layers.3``, ``skip``
AttentionBlock ``norm``, ``qkv``  ``group_norm``, ``to_q`` / ``to_k`` / ``to_v`` (the
``proj``                          ``[q | k | v]`` thirds of ``qkv``, as Linear), ``to_out.0``
``out.0`` / ``out.2``             ``conv_norm_out`` / ``conv_out``
================================  ===========================================================

Both nets lay the heads out as consecutive ``d``-channel groups of q, k and v and scale
by ``1 / sqrt(d)``, so only the 1x1-conv <-> Linear reshape is needed. Timestep
features: diffcli's default ``[cos, sin]`` with ``f_i = 10000 ** (-i / half)`` is
diffusers' ``flip_sin_to_cos=True, freq_shift=0``; the DDPM reference convention
(``flip_sin_to_cos=False, freq_shift=1``) is diffcli's ``time_sin_first=True,
time_freq_shift=1``.

The key mapping is plain Python / torch (the diffcli net is laid out on the ``meta``
device); diffusers itself is never imported here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffcli.interop.config_from_diffusers import DIFFUSERS_UNET_DEFAULTS, from_diffusers_config
from diffcli.interop.config_to_diffusers import check_exportable, diffusers_unet_config, meta_unet
from diffcli.interop.weight_maps import Entry, map_in, map_out
from diffcli.nets.layers import AttentionBlock, Downsample, ResBlock, Upsample
from diffcli.nets.unet import UNet

__all__ = [
    "DIFFUSERS_UNET_DEFAULTS",
    "diffusers_unet_config",
    "from_diffusers_config",
    "from_diffusers_state_dict",
    "to_diffusers_state_dict",
]

# Deprecated attention parameter names of old diffusers checkpoints (``AttentionBlock``
# before diffusers 0.14), renamed on load exactly as diffusers' own loader does.
_DEPRECATED_ATTENTION_NAMES = {
    "query": "to_q",
    "key": "to_k",
    "value": "to_v",
    "proj_attn": "to_out.0",
}

# One weight correspondence: diffcli key, diffusers key(s), how the tensor changes.
# ops: "copy" (same tensor), "squeeze" (1x1 conv (O, I, 1, 1) <-> Linear (O, I)),
# "qkv" (fused 1x1 conv weight (3C, C, 1, 1) or bias (3C,) <-> to_q / to_k / to_v).
_Entry = tuple[str, tuple[str, ...], str]


def _resblock_entries(src: str, dst: str, block: ResBlock) -> list[_Entry]:
    """ResBlock ``src`` <-> diffusers ResnetBlock2D ``dst``."""
    pairs = [("in_layers.0", "norm1"), ("in_layers.2", "conv1"), ("emb_proj.1", "time_emb_proj"),
             ("out_layers.0", "norm2"), ("out_layers.3", "conv2")]
    if isinstance(block.skip, nn.Conv2d):
        pairs.append(("skip", "conv_shortcut"))
    return [(f"{src}.{a}.{p}", (f"{dst}.{b}.{p}",), "copy")
            for a, b in pairs for p in ("weight", "bias")]


def _attention_entries(src: str, dst: str) -> list[_Entry]:
    """AttentionBlock ``src`` <-> diffusers Attention ``dst``."""
    entries: list[_Entry] = []
    for p in ("weight", "bias"):
        entries.append((f"{src}.norm.{p}", (f"{dst}.group_norm.{p}",), "copy"))
        entries.append((f"{src}.qkv.{p}", tuple(f"{dst}.{n}.{p}" for n in ("to_q", "to_k", "to_v")),
                        "qkv"))
        entries.append((f"{src}.proj.{p}", (f"{dst}.to_out.0.{p}",),
                        "squeeze" if p == "weight" else "copy"))
    return entries


def _plain_entries(src: str, dst: str) -> list[_Entry]:
    """A module whose parameters keep their names (``weight``, ``bias``)."""
    return [(f"{src}.{p}", (f"{dst}.{p}",), "copy") for p in ("weight", "bias")]


def _sequence_entries(seq: nn.Module, src: str, dst: str, j: int) -> list[_Entry]:
    """One encoder / decoder EmbedSequential: ResBlock [+ Attention] [+ resampler]."""
    entries: list[_Entry] = []
    for idx, layer in enumerate(seq):
        here = f"{src}.{idx}"
        if isinstance(layer, ResBlock) and layer.down:
            entries += _resblock_entries(here, f"{dst}.downsamplers.0", layer)
        elif isinstance(layer, ResBlock) and layer.up:
            entries += _resblock_entries(here, f"{dst}.upsamplers.0", layer)
        elif isinstance(layer, ResBlock):
            entries += _resblock_entries(here, f"{dst}.resnets.{j}", layer)
        elif isinstance(layer, AttentionBlock):
            entries += _attention_entries(here, f"{dst}.attentions.{j}")
        elif isinstance(layer, Downsample):
            entries += _plain_entries(f"{here}.conv", f"{dst}.downsamplers.0.conv")
        elif isinstance(layer, Upsample):
            entries += _plain_entries(f"{here}.conv", f"{dst}.upsamplers.0.conv")
        else:  # guarded by check_exportable
            raise ValueError(f"{type(layer).__name__} at {here} has no UNet2DModel counterpart")
    return entries


def _entries(net: UNet) -> list[_Entry]:
    """Every weight correspondence of ``net`` (already checked exportable)."""
    entries = _plain_entries("time_embed.mlp.0", "time_embedding.linear_1")
    entries += _plain_entries("time_embed.mlp.2", "time_embedding.linear_2")
    if net.label_embed is not None:
        entries.append(("label_embed.weight", ("class_embedding.weight",), "copy"))
    entries += _plain_entries("conv_in", "conv_in")
    levels, per_level = len(net.channel_mults), net.num_res_blocks
    k = 0
    for level in range(levels):
        for j in range(per_level + (level < levels - 1)):  # + the downsampler's sequence
            entries += _sequence_entries(net.down_blocks[k], f"down_blocks.{k}",
                                         f"down_blocks.{level}", j)
            k += 1
    resnet = 0
    for idx, layer in enumerate(net.mid_block):
        if isinstance(layer, ResBlock):
            entries += _resblock_entries(f"mid_block.{idx}", f"mid_block.resnets.{resnet}", layer)
            resnet += 1
        else:
            entries += _attention_entries(f"mid_block.{idx}", "mid_block.attentions.0")
    k = 0
    for i in range(levels):
        for j in range(per_level + 1):
            entries += _sequence_entries(net.up_blocks[k], f"up_blocks.{k}", f"up_blocks.{i}", j)
            k += 1
    entries += _plain_entries("out.0", "conv_norm_out")
    entries += _plain_entries("out.2", "conv_out")
    return entries


def _layout(unet_kwargs: Mapping[str, Any],
            data_shape: Sequence[int]) -> tuple[list[Entry], dict[str, torch.Size]]:
    """The weight correspondences (:mod:`diffcli.interop.weight_maps`) and diffcli's parameter
    shapes."""
    net = meta_unet(unet_kwargs, data_shape)
    check_exportable(net, unet_kwargs)
    entries = [(src, dsts, op, 1.0) for src, dsts, op in _entries(net)]
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert {e[0] for e in entries} == set(shapes), "diffusers layout out of sync with UNet"
    return entries, shapes


def to_diffusers_state_dict(state: Mapping[str, Tensor], unet_kwargs: Mapping[str, Any],
                            data_shape: Sequence[int]) -> dict[str, Tensor]:
    """diffcli U-Net weights -> the weights of ``UNet2DModel(**diffusers_unet_config(...))``.

    Args:
        state: ``UNet(**unet_kwargs, data_shape=data_shape).state_dict()`` (any device and
            dtype; kept as they are).
        unet_kwargs: as for :func:`diffusers_unet_config`.
        data_shape: one sample's shape ``(C, H, W)``.

    Returns:
        A new dict of new (contiguous, unshared) tensors that loads into the diffusers
        model with ``strict=True``.

    Raises:
        ValueError: the net is not exportable (see :func:`diffusers_unet_config`), or
            ``state`` has missing / unexpected keys or wrongly shaped tensors.
    """
    entries, shapes = _layout(unet_kwargs, data_shape)
    return map_out(state, entries, shapes, "U-Net")


def from_diffusers_state_dict(state: Mapping[str, Tensor], unet_kwargs: Mapping[str, Any],
                              data_shape: Sequence[int]) -> dict[str, Tensor]:
    """``UNet2DModel`` weights -> the state dict of ``UNet(**unet_kwargs, data_shape=...)``.

    The inverse of :func:`to_diffusers_state_dict`; ``unet_kwargs`` / ``data_shape`` are
    typically those of :func:`from_diffusers_config`. Attention weights under the names
    of pre-0.14 diffusers checkpoints (``query`` / ``key`` / ``value`` / ``proj_attn``)
    are accepted as well.

    Returns:
        A new dict of new tensors that loads into the diffcli net with ``strict=True``.

    Raises:
        ValueError: the layout is not expressible (see :func:`diffusers_unet_config`), or
            ``state`` has missing / unexpected keys or wrongly shaped tensors.
    """
    entries, shapes = _layout(unet_kwargs, data_shape)
    renamed: dict[str, Tensor] = {}
    for key, tensor in state.items():
        head, _, param = key.rpartition(".")
        prefix, _, name = head.rpartition(".")
        if ".attentions." in f".{prefix}" and name in _DEPRECATED_ATTENTION_NAMES:
            key = f"{prefix}.{_DEPRECATED_ATTENTION_NAMES[name]}.{param}"
        renamed[key] = tensor
    return map_in(renamed, entries, shapes, "U-Net")
