"""diffcli's :class:`~diffcli.nets.unet.UNet` in diffusers' ``UNet2DModel`` layout, and back.

Both are the DDPM / ADM U-Net (Ho et al. 2020; Nichol & Dhariwal 2021), so a diffcli net
and a ``UNet2DModel`` of matching config compute the same function; only the parameter
names (and the fused ``qkv`` convolution of diffcli's attention) differ. This module
translates configs and weights both ways:

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

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffcli.interop.weight_maps import Entry, map_in, map_out
from diffcli.nets.attention import SpatialTransformer
from diffcli.nets.layers import AttentionBlock, Downsample, ResBlock, Upsample
from diffcli.nets.unet import UNet

__all__ = [
    "DIFFUSERS_UNET_DEFAULTS",
    "diffusers_unet_config",
    "from_diffusers_config",
    "from_diffusers_state_dict",
    "to_diffusers_state_dict",
]

#: ``UNet2DModel.__init__``'s defaults (diffusers 0.42), used for keys a ``config.json``
#: leaves out (older diffusers versions wrote fewer keys).
DIFFUSERS_UNET_DEFAULTS: dict[str, Any] = {
    "sample_size": None,
    "in_channels": 3,
    "out_channels": 3,
    "center_input_sample": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "freq_shift": 0,
    "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896),
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "downsample_padding": 1,
    "downsample_type": "conv",
    "upsample_type": "conv",
    "dropout": 0.0,
    "act_fn": "silu",
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "attn_norm_num_groups": None,
    "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default",
    "add_attention": True,
    "class_embed_type": None,
    "num_class_embeds": None,
    "num_train_timesteps": None,
}

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


def _meta_unet(unet_kwargs: Mapping[str, Any], data_shape: Sequence[int]) -> UNet:
    """The diffcli net for ``unet_kwargs`` on the meta device (layout only, no memory)."""
    kwargs = {k: v for k, v in dict(unet_kwargs).items() if k not in ("_target_", "data_shape")}
    with torch.device("meta"):
        return UNet(**kwargs, data_shape=tuple(int(d) for d in data_shape))


def _plain_number(value: float) -> float | int:
    """``value`` as an int when it is integral (diffusers types freq_shift as int)."""
    return int(value) if float(value).is_integer() else float(value)


def _option(unet_kwargs: Mapping[str, Any], name: str) -> Any:
    """The value of UNet option ``name``: from ``unet_kwargs``, else UNet's default."""
    if name in unet_kwargs:
        return unet_kwargs[name]
    return inspect.signature(UNet.__init__).parameters[name].default


def _check_exportable(net: UNet, unet_kwargs: Mapping[str, Any]) -> None:
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
        with weights from :func:`to_diffusers_state_dict` the model computes the same
        function as the diffcli net (``model(x, t).sample == net(x, t)``; class-conditional
        nets take ``class_labels=y``, and diffcli's null label is ``num_classes``).

    Raises:
        ValueError: (one line, naming the option) for nets UNet2DModel cannot express:
            text conditioning (``context_dim`` / spatial transformers), ``decoder=false``,
            GroupNorms with differing group counts, attention with differing head widths;
            also anything :class:`~diffcli.nets.unet.UNet` itself refuses.
    """
    net = _meta_unet(unet_kwargs, data_shape)
    _check_exportable(net, unet_kwargs)
    channels, height, width = (int(d) for d in data_shape)
    base = net.conv_in.out_channels
    levels = len(net.channel_mults)
    updown = any(isinstance(m, ResBlock) and (m.down or m.up) for m in net.modules())
    scale_shift = any(isinstance(m, ResBlock) and m.use_scale_shift_norm for m in net.modules())
    mid_attention = any(isinstance(m, AttentionBlock) for m in net.mid_block)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    paddings = {m.padding for m in net.modules() if isinstance(m, Downsample)}
    dropouts = {m.p for m in net.modules() if isinstance(m, nn.Dropout)}
    attn_levels = net.attention_levels
    return {
        "sample_size": height if height == width else [height, width],
        "in_channels": channels,
        "out_channels": net.out_channels,
        "center_input_sample": False,
        "time_embedding_type": "positional",
        "time_embedding_dim": None if net.emb_dim == 4 * base else net.emb_dim,
        "freq_shift": _plain_number(net.time_embed.freq_shift),
        "flip_sin_to_cos": not net.time_embed.sin_first,
        "down_block_types": [_DOWN_TYPES[(lv in attn_levels, updown)] for lv in range(levels)],
        "mid_block_type": "UNetMidBlock2D",
        "up_block_types": [_UP_TYPES[(lv in attn_levels, updown)]
                           for lv in reversed(range(levels))],
        "block_out_channels": [base * m for m in net.channel_mults],
        "layers_per_block": net.num_res_blocks,
        "mid_block_scale_factor": 1,
        "downsample_padding": paddings.pop() if paddings else 1,
        "downsample_type": "resnet" if updown else "conv",
        "upsample_type": "resnet" if updown else "conv",
        "dropout": dropouts.pop() if dropouts else 0.0,
        "act_fn": "silu",
        "attention_head_dim": _attention_head_dim(net, unet_kwargs),
        "norm_num_groups": norms[0].num_groups,
        # diffusers drops the mid attention's GroupNorm under scale-shift unless told.
        "attn_norm_num_groups": norms[0].num_groups if scale_shift else None,
        "norm_eps": norms[0].eps,
        "resnet_time_scale_shift": "scale_shift" if scale_shift else "default",
        "add_attention": mid_attention,
        "class_embed_type": None,
        "num_class_embeds": None if net.num_classes is None else net.num_classes + 1,
        "num_train_timesteps": None,
    }


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
        else:  # guarded by _check_exportable
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
    net = _meta_unet(unet_kwargs, data_shape)
    _check_exportable(net, unet_kwargs)
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


def _strip_unet_res(block_type: str) -> str:
    """diffusers accepts a ``UNetRes`` prefix on block type names."""
    return block_type[7:] if block_type.startswith("UNetRes") else block_type


def from_diffusers_config(config: Mapping[str, Any], *,
                          learn_sigma: bool = False) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """A ``UNet2DModel`` config (a folder's ``config.json``) -> diffcli ``UNet`` kwargs and shape.

    Keys starting with ``_`` (``_class_name``, ``_diffusers_version``, ...) are ignored
    except that ``_class_name``, when present, must be ``UNet2DModel``; missing keys take
    ``UNet2DModel``'s defaults (:data:`DIFFUSERS_UNET_DEFAULTS`).

    Args:
        config: the config dict.
        learn_sigma: read the output as prediction + learned variance (Nichol & Dhariwal
            2021), diffusers' ``variance_type="learned_range"`` scheduler setting, which
            the U-Net config does not record; needs ``out_channels == 2 * in_channels``.
            Otherwise an ``out_channels`` other than ``in_channels`` is kept as
            ``out_channels``.

    Returns:
        ``(unet_kwargs, data_shape)``: a ``model`` config node without ``_target_`` (the
        keys of ``conf/model/unet.yaml`` that matter, the diffusers-compatibility options
        ``downsample_padding``, ``norm_eps``, ``time_freq_shift``, ``time_sin_first``, and
        ``emb_dim`` / ``out_channels`` when they differ from the defaults; attention is
        given by ``attention_levels``) and ``(in_channels, H, W)`` from ``sample_size``.
        A class-conditional config (``num_class_embeds = N``) gives ``num_classes = N - 1``:
        diffcli then reads label ``N - 1`` as its null (unconditional) label.

    Raises:
        ValueError: one line naming the config key diffcli's U-Net cannot express.
    """
    unknown = sorted(k for k in config if not k.startswith("_") and k not in
                     DIFFUSERS_UNET_DEFAULTS)
    if unknown:
        raise ValueError(f"{unknown[0]}={config[unknown[0]]!r}: unknown UNet2DModel config key "
                         "(not in diffusers 0.42); cannot tell whether diffcli matches it")
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"_class_name={cls}: only UNet2DModel folders can be imported")
    c = {**DIFFUSERS_UNET_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}

    def refuse(key: str, why: str) -> ValueError:
        return ValueError(f"{key}={c[key]!r}: {why}")

    if c["center_input_sample"]:
        raise refuse("center_input_sample", "diffcli's UNet does not rescale its input")
    if c["time_embedding_type"] != "positional":
        raise refuse("time_embedding_type", "diffcli's UNet has only the positional "
                     "(sinusoidal) timestep embedding")
    if c["act_fn"] not in ("silu", "swish"):
        raise refuse("act_fn", "diffcli's UNet uses SiLU throughout")
    if c["class_embed_type"] is not None:
        raise refuse("class_embed_type", "diffcli's UNet has only a learned label table "
                     "(class_embed_type=None with num_class_embeds)")
    if c["mid_block_type"] != "UNetMidBlock2D":
        raise refuse("mid_block_type", "diffcli's UNet always has a UNetMidBlock2D middle")
    if c["mid_block_scale_factor"] != 1:
        raise refuse("mid_block_scale_factor", "diffcli's UNet does not rescale residuals")
    if c["resnet_time_scale_shift"] not in ("default", "scale_shift"):
        raise refuse("resnet_time_scale_shift", "diffcli's UNet supports default and "
                     "scale_shift only")
    scale_shift = c["resnet_time_scale_shift"] == "scale_shift"
    channels = [int(ch) for ch in c["block_out_channels"]]
    base = channels[0] if channels else 0
    if not channels or base < 1 or any(ch % base for ch in channels):
        raise refuse("block_out_channels", "diffcli's UNet needs every level's width to be a "
                     "multiple of the first")
    down = [_strip_unet_res(t) for t in c["down_block_types"]]
    up = [_strip_unet_res(t) for t in c["up_block_types"]]
    levels = len(channels)
    if len(down) != levels or len(up) != levels:
        raise refuse("down_block_types", "needs one down and one up block type per "
                     "block_out_channels entry")
    down_kinds = {"DownBlock2D": (False, "conv"), "ResnetDownsampleBlock2D": (False, "resnet"),
                  "AttnDownBlock2D": (True, c["downsample_type"])}
    up_kinds = {"UpBlock2D": (False, "conv"), "ResnetUpsampleBlock2D": (False, "resnet"),
                "AttnUpBlock2D": (True, c["upsample_type"])}
    for key, types, kinds in (("down_block_types", down, down_kinds),
                              ("up_block_types", up, up_kinds)):
        bad = [t for t in types if t not in kinds]
        if bad:
            raise refuse(key, f"{bad[0]} has no diffcli counterpart (supported: "
                         f"{', '.join(kinds)})")
    attn_levels = [lv for lv, t in enumerate(down) if down_kinds[t][0]]
    if [lv for lv in range(levels) if up_kinds[up[levels - 1 - lv]][0]] != attn_levels:
        raise refuse("up_block_types", "attention levels must mirror down_block_types, as "
                     "diffcli's UNet puts attention at the same levels in both halves")
    # Resampling: every block that resamples must agree (the last down / first-level up
    # block has no resampler, so its type does not matter).
    resamplers = {down_kinds[t][1] for t in down[:-1]} | {up_kinds[t][1] for t in up[:-1]}
    if len(resamplers) > 1 or not resamplers <= {"conv", "resnet"}:
        raise refuse("downsample_type", f"with upsample_type={c['upsample_type']!r} and the "
                     f"block types the net resamples with {sorted(resamplers)}; diffcli uses "
                     "convolutions or ResNet blocks (resblock_updown) throughout")
    updown = resamplers == {"resnet"}
    if not updown and levels > 1 and c["downsample_padding"] not in (0, 1):
        raise refuse("downsample_padding", "diffcli's Downsample pads by 1 or by 0 (right / "
                     "bottom only)")
    layers = c["layers_per_block"]
    if not isinstance(layers, int) or layers < 1:
        raise refuse("layers_per_block", "diffcli's UNet needs one int >= 1")
    groups = c["norm_num_groups"]
    if not isinstance(groups, int) or groups < 1:
        raise refuse("norm_num_groups", "diffcli's UNet needs a group count")
    mid_attention = bool(c["add_attention"])
    head_dim = c["attention_head_dim"]
    attn_widths = [channels[lv] for lv in attn_levels] + ([channels[-1]] if mid_attention else [])
    if head_dim is not None and any(w % int(head_dim) for w in attn_widths):
        raise refuse("attention_head_dim", f"must divide every attention width {attn_widths} "
                     "for diffcli's AttentionBlock")
    if mid_attention and c["attn_norm_num_groups"] not in (None, groups):
        raise refuse("attn_norm_num_groups", f"diffcli's mid attention norm uses "
                     f"norm_num_groups={groups}")
    if mid_attention and scale_shift and c["attn_norm_num_groups"] is None:
        raise refuse("attn_norm_num_groups", "with scale_shift diffusers' mid attention has no "
                     "GroupNorm, diffcli's always has one")
    num_class_embeds = c["num_class_embeds"]
    if num_class_embeds is not None and int(num_class_embeds) < 2:
        raise refuse("num_class_embeds", "diffcli needs at least one label besides the null "
                     "label (its last row)")
    sample_size = c["sample_size"]
    if sample_size is None:
        raise refuse("sample_size", "diffcli needs the image size")
    height, width = ((int(sample_size),) * 2 if isinstance(sample_size, int)
                     else (int(sample_size[0]), int(sample_size[1])))
    in_channels, out_channels = int(c["in_channels"]), int(c["out_channels"])
    if learn_sigma and out_channels != 2 * in_channels:
        raise refuse("out_channels", f"learn_sigma needs 2 * in_channels = {2 * in_channels}")

    kwargs: dict[str, Any] = {
        "base_channels": base,
        "channel_mults": [ch // base for ch in channels],
        "num_res_blocks": layers,
        "dropout": float(c["dropout"]),
        "groups": groups,
        "attention_resolutions": [],
        "attention_levels": attn_levels,
        "num_heads": 1,
        "num_head_channels": None,
        "resblock_updown": updown,
        "use_scale_shift_norm": scale_shift,
        "mid_attention": mid_attention,
        "num_classes": None if num_class_embeds is None else int(num_class_embeds) - 1,
        "learn_sigma": bool(learn_sigma),
        "downsample_padding": int(c["downsample_padding"]) if not updown and levels > 1 else 1,
        "norm_eps": float(c["norm_eps"]),
        "time_freq_shift": _plain_number(c["freq_shift"]),
        "time_sin_first": not c["flip_sin_to_cos"],
    }
    if head_dim is not None and any(w != int(head_dim) for w in attn_widths):
        kwargs["num_head_channels"] = int(head_dim)
    emb_dim = c["time_embedding_dim"]
    if emb_dim is not None and int(emb_dim) != 4 * base:
        kwargs["emb_dim"] = int(emb_dim)
    if not learn_sigma and out_channels != in_channels:
        kwargs["out_channels"] = out_channels
    return kwargs, (in_channels, height, width)
