"""diffcli's :class:`~diffcli.nets.dit.DiT` as diffusers' ``DiTTransformer2DModel``, and back.

Both are the DiT of Peebles & Xie 2023 (adaLN-Zero blocks, fixed 2-D sine-cosine positions,
final adaLN layer), so a diffcli DiT and a ``DiTTransformer2DModel`` of matching config compute
the same function (``model(x, t, class_labels=y).sample == net(x, t, y)``, float32 rounding
apart); only the parameter names differ, the fused ``qkv`` projection is split, and diffusers
gives every block its own copy of the timestep + label embedding (its final layer reads block
0's), where diffcli has one:

==================================  ==========================================================
``x_embedder``                      ``pos_embed.proj``
``t_embedder.mlp.0`` / ``.2``       ``transformer_blocks.i.norm1.emb.timestep_embedder.
                                    linear_1`` / ``linear_2`` (copied into every block ``i``)
``y_embedder``                      ``transformer_blocks.i.norm1.emb.class_embedder.
                                    embedding_table`` (``num_embeds_ada_norm = num_classes``;
                                    row ``num_classes`` is the null label in both)
``blocks.i.adaLN_modulation.1``     ``transformer_blocks.i.norm1.linear`` (shift, scale, gate
                                    of the attention, then of the MLP, in both)
``blocks.i.attn.qkv``               ``transformer_blocks.i.attn1.to_q`` / ``to_k`` / ``to_v``
``blocks.i.attn.proj``              ``transformer_blocks.i.attn1.to_out.0``
``blocks.i.mlp.fc1`` / ``fc2``      ``transformer_blocks.i.ff.net.0.proj`` / ``ff.net.2``
``final_layer.adaLN_modulation.1``  ``proj_out_1`` (shift, scale)
``final_layer.linear``              ``proj_out_2``
==================================  ==========================================================

What must hold for the match to be exact (each refused in one line naming the option):
256 timestep features with ``time_freq_shift=1`` (diffusers' ``Timesteps(256,
flip_sin_to_cos=True, downscale_freq_shift=1)``, diffcli's default), ``mlp_ratio=4``, no text
context (PixArt's layout differs), and a square image whose side is a multiple of
``patch_size`` (diffusers' DiT neither pads nor unpatchifies other shapes; at its
``sample_size`` its ``PatchEmbed`` positions equal diffcli's). An unconditional diffcli DiT is
written with ``num_embeds_ada_norm=1`` and a label table of zeros, so the label adds nothing:
any ``class_labels`` (0 or 1) gives the net's output. Read back, a label table whose rows are
all equal is an unconditional net (the row is added to the timestep MLP's output bias, which
leaves zeros exact).

Plain Python / torch (the diffcli net is laid out on the ``meta`` device); diffusers itself is
never imported here.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from diffcli.interop.weight_maps import Entry, map_in, map_out
from diffcli.nets.dit import DiT

__all__ = [
    "DIFFUSERS_DIT_DEFAULTS",
    "DIT_TARGET",
    "TEXT_REFUSAL",
    "check_exportable",
    "diffusers_dit_config",
    "from_diffusers_dit",
    "meta_dit",
    "to_diffusers_dit_state_dict",
]

DIT_TARGET = "diffcli.nets.dit.DiT"
TEXT_REFUSAL = ("a text-conditioned DiT has no exact diffusers layout (PixArt's differs); "
                "export format=safetensors")
_EMB = "norm1.emb"
_TIME = f"{_EMB}.timestep_embedder"
_LABELS = f"{_EMB}.class_embedder.embedding_table.weight"

#: ``DiTTransformer2DModel.__init__``'s defaults (diffusers 0.42), for keys a ``config.json``
#: leaves out.
DIFFUSERS_DIT_DEFAULTS: dict[str, Any] = {
    "num_attention_heads": 16,
    "attention_head_dim": 72,
    "in_channels": 4,
    "out_channels": None,
    "num_layers": 28,
    "dropout": 0.0,
    "norm_num_groups": 32,
    "attention_bias": True,
    "sample_size": 32,
    "patch_size": 2,
    "activation_fn": "gelu-approximate",
    "num_embeds_ada_norm": 1000,
    "upcast_attention": False,
    "norm_type": "ada_norm_zero",
    "norm_elementwise_affine": False,
    "norm_eps": 1e-5,
}


def meta_dit(dit_kwargs: Mapping[str, Any], data_shape: Sequence[int]) -> DiT:
    """The diffcli DiT for ``dit_kwargs`` on the meta device (layout only, no memory)."""
    kwargs = {k: v for k, v in dict(dit_kwargs).items() if k not in ("_target_", "data_shape")}
    with torch.device("meta"):
        return DiT(**kwargs, data_shape=tuple(int(d) for d in data_shape))


def _option(dit_kwargs: Mapping[str, Any], name: str) -> Any:
    """DiT option ``name``: from ``dit_kwargs``, else DiT's default."""
    if name in dit_kwargs:
        return dit_kwargs[name]
    return inspect.signature(DiT.__init__).parameters[name].default


def check_exportable(net: DiT, dit_kwargs: Mapping[str, Any],
                     data_shape: Sequence[int]) -> None:
    """Raise a one-line ``ValueError`` for a DiT that ``DiTTransformer2DModel`` cannot
    compute exactly."""
    if net.context_dim is not None:
        raise ValueError(TEXT_REFUSAL)
    time = net.t_embedder
    if time.freq_dim != 256 or time.freq_shift != 1 or time.sin_first or time.max_period != 1e4:
        raise ValueError(f"model.freq_dim={time.freq_dim}, model.time_freq_shift="
                         f"{_option(dit_kwargs, 'time_freq_shift')}: diffusers' DiT embeds "
                         "timesteps with 256 features at frequency shift 1 (diffcli's default)")
    block = net.blocks[0]
    if block.mlp.fc1.out_features != 4 * net.hidden_size:
        raise ValueError(f"model.mlp_ratio={_option(dit_kwargs, 'mlp_ratio')}: diffusers' DiT "
                         "has an MLP of 4 x hidden_size")
    height, width = (int(d) for d in data_shape[-2:])
    if height != width or height % net.patch_size:
        raise ValueError(f"data {height}x{width} with model.patch_size="
                         f"{net.patch_size}: diffusers' DiT takes square images whose side is "
                         "a multiple of patch_size (diffcli pads the others); use "
                         "format=safetensors")


def diffusers_dit_config(dit_kwargs: Mapping[str, Any],
                         data_shape: Sequence[int]) -> dict[str, Any]:
    """The ``DiTTransformer2DModel(**config)`` keyword arguments for a diffcli DiT (its
    ``model`` node minus ``_target_``; ``data_shape`` ``(C, H, W)``, latents for a latent
    model). ``num_embeds_ada_norm`` is ``num_classes`` (1 for an unconditional net, whose
    exported label table is zero). ValueError (one line) for what it cannot express."""
    net = meta_dit(dit_kwargs, data_shape)
    check_exportable(net, dit_kwargs, data_shape)
    heads = net.blocks[0].attn.num_heads
    return {
        "num_attention_heads": heads,
        "attention_head_dim": net.hidden_size // heads,
        "in_channels": net.in_channels,
        "out_channels": net.out_channels,
        "num_layers": len(net.blocks),
        "dropout": 0.0,
        "norm_num_groups": 32,  # unused by the DiT
        "attention_bias": True,
        "sample_size": int(net.image_size),
        "patch_size": net.patch_size,
        "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1 if net.num_classes is None else int(net.num_classes),
        "upcast_attention": False,
        "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False,
        "norm_eps": net.blocks[0].norm2.eps,
    }


def _plain(src: str, dst: str) -> list[Entry]:
    return [(f"{src}.{p}", (f"{dst}.{p}",), "copy", 1.0) for p in ("weight", "bias")]


def _entries(net: DiT) -> list[Entry]:
    """Every correspondence, with the shared embedding under block 0's names."""
    block0 = "transformer_blocks.0"
    entries = _plain("x_embedder", "pos_embed.proj")
    entries += _plain("t_embedder.mlp.0", f"{block0}.{_TIME}.linear_1")
    entries += _plain("t_embedder.mlp.2", f"{block0}.{_TIME}.linear_2")
    if net.y_embedder is not None:
        entries.append(("y_embedder.weight", (f"{block0}.{_LABELS}",), "copy", 1.0))
    for i in range(len(net.blocks)):
        src, dst = f"blocks.{i}", f"transformer_blocks.{i}"
        entries += _plain(f"{src}.adaLN_modulation.1", f"{dst}.norm1.linear")
        for p in ("weight", "bias"):
            entries.append((f"{src}.attn.qkv.{p}", tuple(f"{dst}.attn1.{n}.{p}" for n in
                                                         ("to_q", "to_k", "to_v")), "qkv", 1.0))
        entries += _plain(f"{src}.attn.proj", f"{dst}.attn1.to_out.0")
        entries += _plain(f"{src}.mlp.fc1", f"{dst}.ff.net.0.proj")
        entries += _plain(f"{src}.mlp.fc2", f"{dst}.ff.net.2")
    entries += _plain("final_layer.adaLN_modulation.1", "proj_out_1")
    entries += _plain("final_layer.linear", "proj_out_2")
    return entries


def _layout(dit_kwargs: Mapping[str, Any],
            data_shape: Sequence[int]) -> tuple[DiT, list[Entry], dict[str, torch.Size]]:
    net = meta_dit(dit_kwargs, data_shape)
    check_exportable(net, dit_kwargs, data_shape)
    entries = _entries(net)
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert {e[0] for e in entries} == set(shapes), "diffusers layout out of sync with DiT"
    return net, entries, shapes


def _shared_keys(block: int) -> list[str]:
    """The embedding keys diffusers repeats in every block (the label table included)."""
    stem = f"transformer_blocks.{block}"
    return [f"{stem}.{_TIME}.linear_{n}.{p}" for n in (1, 2) for p in ("weight", "bias")] + [
        f"{stem}.{_LABELS}"]


def to_diffusers_dit_state_dict(state: Mapping[str, Tensor], dit_kwargs: Mapping[str, Any],
                                data_shape: Sequence[int]) -> dict[str, Tensor]:
    """diffcli DiT weights -> those of ``DiTTransformer2DModel(**diffusers_dit_config(...))``
    (new tensors, loading with ``strict=True``); an unconditional net gets a (2, D) zero label
    table. ValueError (one line) for a net that cannot be exported or mismatched weights."""
    net, entries, shapes = _layout(dit_kwargs, data_shape)
    out = map_out(state, entries, shapes, "DiT")
    first = _shared_keys(0)
    if net.y_embedder is None:
        like = out[first[0]]
        out[first[-1]] = torch.zeros(2, net.hidden_size, dtype=like.dtype, device=like.device)
    for i in range(1, len(net.blocks)):
        for key, copy in zip(first, _shared_keys(i), strict=True):
            out[copy] = out[key].clone()
    return out


def _refuse(c: Mapping[str, Any], key: str, why: str) -> ValueError:
    return ValueError(f"{key}={c[key]!r}: {why}")


def _merged_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` over :data:`DIFFUSERS_DIT_DEFAULTS`, with the options diffcli's DiT has no
    counterpart for refused."""
    unknown = sorted(k for k in config if not k.startswith("_") and k not in
                     DIFFUSERS_DIT_DEFAULTS)
    if unknown:
        raise ValueError(f"{unknown[0]}={config[unknown[0]]!r}: unknown DiTTransformer2DModel "
                         "config key (not in diffusers 0.42)")
    c = {**DIFFUSERS_DIT_DEFAULTS, **{k: v for k, v in config.items() if not k.startswith("_")}}
    fixed = {"norm_type": "ada_norm_zero", "activation_fn": "gelu-approximate",
             "attention_bias": True, "norm_elementwise_affine": False}
    for key, value in fixed.items():
        if c[key] != value:
            raise _refuse(c, key, f"diffcli's DiT has {key}={value!r} only")
    if float(c["norm_eps"]) != 1e-6:
        raise _refuse(c, "norm_eps", "diffcli's DiT normalises with eps 1e-6")
    if c["num_embeds_ada_norm"] is None or int(c["num_embeds_ada_norm"]) < 1:
        raise _refuse(c, "num_embeds_ada_norm", "needs at least one label")
    return c


def from_diffusers_dit(config: Mapping[str, Any], state: Mapping[str, Tensor], *,
                       learn_sigma: bool = False
                       ) -> tuple[dict[str, Any], tuple[int, int, int], dict[str, Tensor]]:
    """A ``DiTTransformer2DModel`` folder's ``config.json`` and weights -> diffcli ``DiT``
    kwargs, data shape ``(C, S, S)`` and state dict (loading with ``strict=True``).

    ``learn_sigma``: read the output as prediction + variance (the scheduler's
    ``variance_type="learned_range"``); otherwise an ``out_channels`` other than
    ``in_channels`` is kept as ``out_channels``. A label table whose rows are all equal (the
    zeros an unconditional export writes) gives an unconditional net. ValueError (one line)
    for what diffcli's DiT cannot express, per-block embeddings that differ, or mismatched
    weights.
    """
    c = _merged_config(config)
    heads, head_dim = int(c["num_attention_heads"]), int(c["attention_head_dim"])
    in_channels, size = int(c["in_channels"]), int(c["sample_size"])
    out_channels = in_channels if c["out_channels"] is None else int(c["out_channels"])
    if learn_sigma and out_channels != 2 * in_channels:
        raise _refuse(c, "out_channels", f"learn_sigma needs 2 * in_channels = {2 * in_channels}")
    depth = int(c["num_layers"])
    labels = state.get(f"transformer_blocks.0.{_LABELS}")
    unconditional = labels is not None and bool((labels == labels[:1]).all())
    kwargs: dict[str, Any] = {
        "patch_size": int(c["patch_size"]), "hidden_size": heads * head_dim, "depth": depth,
        "num_heads": heads, "mlp_ratio": 4.0,
        "num_classes": None if unconditional else int(c["num_embeds_ada_norm"]),
        "learn_sigma": bool(learn_sigma), "context_dim": None}
    if not learn_sigma and out_channels != in_channels:
        kwargs["out_channels"] = out_channels
    shape = (in_channels, size, size)
    _, entries, shapes = _layout(kwargs, shape)
    state = dict(state)
    first = _shared_keys(0)
    for i in range(1, depth):
        for key, copy in zip(first, _shared_keys(i), strict=True):
            if copy in state and key in state and not torch.equal(state.pop(copy), state[key]):
                raise ValueError(f"{copy} differs from block 0's: diffcli's DiT has one "
                                 "timestep + label embedding shared by every block")
    bias = f"transformer_blocks.0.{_TIME}.linear_2.bias"
    if unconditional and labels is not None and bias in state:
        row = state.pop(first[-1])[0]
        state[bias] = state[bias] + row.to(state[bias].dtype)
    return kwargs, shape, map_in(state, entries, shapes, "DiT")
