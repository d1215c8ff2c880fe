"""diffusers' ``UNet2DModel`` config -> diffcli's :class:`~diffcli.nets.unet.UNet` keyword
arguments and data shape (import, e.g. ``google/ddpm-cifar10-32``).

:func:`from_diffusers_config` reads a folder's ``config.json`` over
:data:`DIFFUSERS_UNET_DEFAULTS` step by step (options, channel list, block types, attention
layout, labels, sample shape), refusing in one line naming the key what diffcli's U-Net
cannot express. The weights follow through :mod:`diffcli.interop.diffusers_layout`, which
re-exports both names; the other direction is :mod:`diffcli.interop.config_to_diffusers`.
diffusers itself is never imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffcli.interop.config_to_diffusers import plain_number

__all__ = [
    "DIFFUSERS_UNET_DEFAULTS",
    "from_diffusers_config",
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

# A block type -> (has attention, how it resamples): "conv", "resnet" or, for the attention
# blocks, the config's downsample_type / upsample_type.
_Kinds = dict[str, tuple[bool, Any]]


def _refuse(c: Mapping[str, Any], key: str, why: str) -> ValueError:
    """The one-line error for config key ``key``, which diffcli's UNet cannot express."""
    return ValueError(f"{key}={c[key]!r}: {why}")


def _merged_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` without its ``_`` keys over :data:`DIFFUSERS_UNET_DEFAULTS`; refuses unknown
    keys and a ``_class_name`` other than ``UNet2DModel``."""
    unknown = sorted(k for k in config if not k.startswith("_") and k not in
                     DIFFUSERS_UNET_DEFAULTS)
    if unknown:
        raise ValueError(f"{unknown[0]}={config[unknown[0]]!r}: unknown UNet2DModel config key "
                         "(not in diffusers 0.42); cannot tell whether diffcli matches it")
    cls = config.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise ValueError(f"_class_name={cls}: only UNet2DModel folders can be imported")
    return {**DIFFUSERS_UNET_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}


def _check_supported_options(c: Mapping[str, Any]) -> None:
    """Refuse the UNet2DModel options diffcli's UNet has no counterpart for."""
    if c["center_input_sample"]:
        raise _refuse(c, "center_input_sample", "diffcli's UNet does not rescale its input")
    if c["time_embedding_type"] != "positional":
        raise _refuse(c, "time_embedding_type", "diffcli's UNet has only the positional "
                      "(sinusoidal) timestep embedding")
    if c["act_fn"] not in ("silu", "swish"):
        raise _refuse(c, "act_fn", "diffcli's UNet uses SiLU throughout")
    if c["class_embed_type"] is not None:
        raise _refuse(c, "class_embed_type", "diffcli's UNet has only a learned label table "
                      "(class_embed_type=None with num_class_embeds)")
    if c["mid_block_type"] != "UNetMidBlock2D":
        raise _refuse(c, "mid_block_type", "diffcli's UNet always has a UNetMidBlock2D middle")
    if c["mid_block_scale_factor"] != 1:
        raise _refuse(c, "mid_block_scale_factor", "diffcli's UNet does not rescale residuals")
    if c["resnet_time_scale_shift"] not in ("default", "scale_shift"):
        raise _refuse(c, "resnet_time_scale_shift", "diffcli's UNet supports default and "
                      "scale_shift only")


def _channel_list(c: Mapping[str, Any]) -> list[int]:
    """``block_out_channels`` as ints, each a multiple of the first."""
    channels = [int(ch) for ch in c["block_out_channels"]]
    base = channels[0] if channels else 0
    if not channels or base < 1 or any(ch % base for ch in channels):
        raise _refuse(c, "block_out_channels", "diffcli's UNet needs every level's width to be "
                      "a multiple of the first")
    return channels


def _strip_unet_res(block_type: str) -> str:
    """diffusers accepts a ``UNetRes`` prefix on block type names."""
    return block_type[7:] if block_type.startswith("UNetRes") else block_type


def _block_types(c: Mapping[str, Any],
                 levels: int) -> tuple[list[str], list[str], _Kinds, _Kinds]:
    """``(down, up, down_kinds, up_kinds)``: the block types (one per level, each known) and
    what each type means (:data:`_Kinds`)."""
    down = [_strip_unet_res(t) for t in c["down_block_types"]]
    up = [_strip_unet_res(t) for t in c["up_block_types"]]
    if len(down) != levels or len(up) != levels:
        raise _refuse(c, "down_block_types", "needs one down and one up block type per "
                      "block_out_channels entry")
    down_kinds = {"DownBlock2D": (False, "conv"), "ResnetDownsampleBlock2D": (False, "resnet"),
                  "AttnDownBlock2D": (True, c["downsample_type"])}
    up_kinds = {"UpBlock2D": (False, "conv"), "ResnetUpsampleBlock2D": (False, "resnet"),
                "AttnUpBlock2D": (True, c["upsample_type"])}
    for key, types, kinds in (("down_block_types", down, down_kinds),
                              ("up_block_types", up, up_kinds)):
        bad = [t for t in types if t not in kinds]
        if bad:
            raise _refuse(c, key, f"{bad[0]} has no diffcli counterpart (supported: "
                          f"{', '.join(kinds)})")
    return down, up, down_kinds, up_kinds


def _attention_levels(c: Mapping[str, Any], down: list[str], up: list[str],
                      down_kinds: _Kinds, up_kinds: _Kinds) -> list[int]:
    """The levels with attention, the same in both halves."""
    levels = len(down)
    attn_levels = [lv for lv, t in enumerate(down) if down_kinds[t][0]]
    if [lv for lv in range(levels) if up_kinds[up[levels - 1 - lv]][0]] != attn_levels:
        raise _refuse(c, "up_block_types", "attention levels must mirror down_block_types, as "
                      "diffcli's UNet puts attention at the same levels in both halves")
    return attn_levels


def _resblock_updown(c: Mapping[str, Any], down: list[str], up: list[str],
                     down_kinds: _Kinds, up_kinds: _Kinds) -> bool:
    """Whether the net resamples with ResNet blocks (else with convolutions); checks
    ``downsample_padding`` for convolutions."""
    # Every block that resamples must agree (the last down / first-level up block has no
    # resampler, so its type does not matter).
    resamplers = {down_kinds[t][1] for t in down[:-1]} | {up_kinds[t][1] for t in up[:-1]}
    if len(resamplers) > 1 or not resamplers <= {"conv", "resnet"}:
        raise _refuse(c, "downsample_type", f"with upsample_type={c['upsample_type']!r} and the "
                      f"block types the net resamples with {sorted(resamplers)}; diffcli uses "
                      "convolutions or ResNet blocks (resblock_updown) throughout")
    updown = resamplers == {"resnet"}
    if not updown and len(down) > 1 and c["downsample_padding"] not in (0, 1):
        raise _refuse(c, "downsample_padding", "diffcli's Downsample pads by 1 or by 0 (right / "
                      "bottom only)")
    return updown


def _block_layout(c: Mapping[str, Any], levels: int) -> tuple[list[int], bool]:
    """``(attention_levels, resblock_updown)`` from the block types."""
    down, up, down_kinds, up_kinds = _block_types(c, levels)
    attn_levels = _attention_levels(c, down, up, down_kinds, up_kinds)
    return attn_levels, _resblock_updown(c, down, up, down_kinds, up_kinds)


def _check_counts(c: Mapping[str, Any]) -> None:
    """Refuse a ``layers_per_block`` or ``norm_num_groups`` that is not an int >= 1."""
    layers = c["layers_per_block"]
    if not isinstance(layers, int) or layers < 1:
        raise _refuse(c, "layers_per_block", "diffcli's UNet needs one int >= 1")
    groups = c["norm_num_groups"]
    if not isinstance(groups, int) or groups < 1:
        raise _refuse(c, "norm_num_groups", "diffcli's UNet needs a group count")


def _attention_widths(c: Mapping[str, Any], channels: list[int],
                      attn_levels: list[int]) -> list[int]:
    """The widths of the attention blocks (the mid block's last); checks ``attention_head_dim``
    and the mid attention's norm against them."""
    groups = c["norm_num_groups"]
    mid_attention = bool(c["add_attention"])
    head_dim = c["attention_head_dim"]
    attn_widths = [channels[lv] for lv in attn_levels] + ([channels[-1]] if mid_attention else [])
    if head_dim is not None and any(w % int(head_dim) for w in attn_widths):
        raise _refuse(c, "attention_head_dim", f"must divide every attention width "
                      f"{attn_widths} for diffcli's AttentionBlock")
    if mid_attention and c["attn_norm_num_groups"] not in (None, groups):
        raise _refuse(c, "attn_norm_num_groups", f"diffcli's mid attention norm uses "
                      f"norm_num_groups={groups}")
    if (mid_attention and c["resnet_time_scale_shift"] == "scale_shift"
            and c["attn_norm_num_groups"] is None):
        raise _refuse(c, "attn_norm_num_groups", "with scale_shift diffusers' mid attention has "
                      "no GroupNorm, diffcli's always has one")
    return attn_widths


def _num_classes(c: Mapping[str, Any]) -> int | None:
    """diffcli's ``num_classes``: ``num_class_embeds`` less the null label's row."""
    num_class_embeds = c["num_class_embeds"]
    if num_class_embeds is not None and int(num_class_embeds) < 2:
        raise _refuse(c, "num_class_embeds", "diffcli needs at least one label besides the null "
                      "label (its last row)")
    return None if num_class_embeds is None else int(num_class_embeds) - 1


def _data_shape(c: Mapping[str, Any], learn_sigma: bool) -> tuple[int, int, int]:
    """``(in_channels, H, W)`` from ``sample_size``; checks ``out_channels`` for
    ``learn_sigma``."""
    sample_size = c["sample_size"]
    if sample_size is None:
        raise _refuse(c, "sample_size", "diffcli needs the image size")
    height, width = ((int(sample_size),) * 2 if isinstance(sample_size, int)
                     else (int(sample_size[0]), int(sample_size[1])))
    in_channels, out_channels = int(c["in_channels"]), int(c["out_channels"])
    if learn_sigma and out_channels != 2 * in_channels:
        raise _refuse(c, "out_channels", f"learn_sigma needs 2 * in_channels = {2 * in_channels}")
    return in_channels, height, width


def _unet_kwargs(c: Mapping[str, Any], channels: list[int], attn_levels: list[int],
                 updown: bool, num_classes: int | None, learn_sigma: bool) -> dict[str, Any]:
    """The UNet kwargs every import sets, from the checked config ``c``."""
    base = channels[0]
    return {
        "base_channels": base,
        "channel_mults": [ch // base for ch in channels],
        "num_res_blocks": c["layers_per_block"],
        "dropout": float(c["dropout"]),
        "groups": c["norm_num_groups"],
        "attention_resolutions": [],
        "attention_levels": attn_levels,
        "num_heads": 1,
        "num_head_channels": None,
        "resblock_updown": updown,
        "use_scale_shift_norm": c["resnet_time_scale_shift"] == "scale_shift",
        "mid_attention": bool(c["add_attention"]),
        "num_classes": num_classes,
        "learn_sigma": bool(learn_sigma),
        "downsample_padding": (int(c["downsample_padding"]) if not updown and len(channels) > 1
                               else 1),
        "norm_eps": float(c["norm_eps"]),
        "time_freq_shift": plain_number(c["freq_shift"]),
        "time_sin_first": not c["flip_sin_to_cos"],
    }


def _optional_kwargs(c: Mapping[str, Any], base: int, attn_widths: list[int],
                     learn_sigma: bool) -> dict[str, Any]:
    """The UNet kwargs given only when they differ from the defaults: ``num_head_channels``
    (when not every attention is one head), ``emb_dim`` and ``out_channels``."""
    kwargs: dict[str, Any] = {}
    head_dim = c["attention_head_dim"]
    if head_dim is not None and any(w != int(head_dim) for w in attn_widths):
        kwargs["num_head_channels"] = int(head_dim)
    emb_dim = c["time_embedding_dim"]
    if emb_dim is not None and int(emb_dim) != 4 * base:
        kwargs["emb_dim"] = int(emb_dim)
    in_channels, out_channels = int(c["in_channels"]), int(c["out_channels"])
    if not learn_sigma and out_channels != in_channels:
        kwargs["out_channels"] = out_channels
    return kwargs


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
    c = _merged_config(config)
    _check_supported_options(c)
    channels = _channel_list(c)
    attn_levels, updown = _block_layout(c, len(channels))
    _check_counts(c)
    attn_widths = _attention_widths(c, channels, attn_levels)
    num_classes = _num_classes(c)
    data_shape = _data_shape(c, learn_sigma)
    kwargs = _unet_kwargs(c, channels, attn_levels, updown, num_classes, learn_sigma)
    return {**kwargs, **_optional_kwargs(c, channels[0], attn_widths, learn_sigma)}, data_shape
