"""diffcli's :class:`~diffcli.nets.autoencoder.KLAutoencoder` in diffusers' ``AutoencoderKL``
layout, and back.

Both are the VQGAN / LDM encoder-decoder (Esser et al. 2021; Rombach et al. 2022, App. G):
``conv_in``, per level ResNet blocks (the decoder one more than the encoder) with stride-2
conv downsampling / nearest x2 + conv upsampling between levels, a middle of ResNet block,
optional single-head self-attention and ResNet block, then GroupNorm, SiLU and a 3x3 conv,
and the 1x1 ``quant_conv`` / ``post_quant_conv`` around the diagonal Gaussian posterior
(log-variance clamped to ``[-30, 20]`` in both). This module translates the config and the
weights:

* :func:`autoencoder_kl_config`: the run's ``autoencoder`` config node (minus ``_target_``),
  the data shape and the latent scale -> ``AutoencoderKL(**config)``;
* :func:`to_diffusers_vae_state_dict` / :func:`from_diffusers_vae_state_dict`: weights
  both ways.

With the mapped weights, ``vae.encode(x).latent_dist.mean / .logvar`` equal
``ae.encode(x).mean / .logvar`` and ``vae.decode(z).sample`` equals ``ae.decode_latent(z)``
(in eval mode, up to float rounding).

Correspondence (diffcli -> diffusers; ``l`` a level from the top for the encoder, ``i`` an
up block from the bottom for the decoder):

=====================================  ======================================================
``encoder.conv_in``                    ``encoder.conv_in``
``encoder.down`` ResnetBlock / Down.   ``encoder.down_blocks.l.resnets.j`` /
                                       ``encoder.down_blocks.l.downsamplers.0.conv``
``{en,de}coder.mid.0`` / ``.1`` /      ``{en,de}coder.mid_block.resnets.0`` /
``.2``                                 ``attentions.0`` / ``resnets.1``
``{en,de}coder.out.0`` / ``.2``        ``{en,de}coder.conv_norm_out`` / ``conv_out``
``decoder.up`` ResnetBlock / Upsample  ``decoder.up_blocks.i.resnets.j`` /
                                       ``decoder.up_blocks.i.upsamplers.0.conv``
ResnetBlock ``body.0`` / ``body.2`` /  ``norm1`` / ``conv1`` / ``norm2`` / ``conv2`` /
``body.3`` / ``body.6`` / ``skip``     ``conv_shortcut``
AttentionBlock ``norm`` / ``qkv`` /    ``group_norm`` / ``to_q``, ``to_k``, ``to_v`` (the
``proj``                               ``[q | k | v]`` thirds of ``qkv``, as Linear) /
                                       ``to_out.0``
``quant_conv`` / ``post_quant_conv``   ``quant_conv`` / ``post_quant_conv``
=====================================  ======================================================

Two differences are not in the names:

* **GroupNorm epsilon.** diffcli's norms add ``eps = 1e-5`` to the variance, diffusers'
  VAE norms a hard-coded ``1e-6``. GroupNorm is scale invariant apart from ``eps``:
  ``GN(c x; c^2 eps) = GN(x; eps)``. The export therefore runs the whole residual stream of
  encoder and decoder scaled by ``c = sqrt(1e-6 / 1e-5)``: ``conv_in``, each ResNet block's
  ``conv1`` and ``conv2``, and the attention's ``to_out.0`` are multiplied by ``c`` (weight
  and bias), the bias of every ``conv_shortcut``, down- and upsampling conv by ``c``; each
  norm then sees ``c`` times diffcli's input and, with ``eps = 1e-6``, gives diffcli's
  output exactly, so ``conv_out`` / ``quant_conv`` are unchanged. Import divides by ``c``.
* **Downsampling padding.** diffusers' VAE encoder pads its stride-2 convs on the right and
  bottom only (``F.pad(x, (0, 1, 0, 1))``, hard-coded), diffcli's default
  (``downsample_padding=1``) on every side; the two sample different pixels, which no choice
  of weights reconciles. Only nets built with ``downsample_padding=0`` (or a single level,
  without downsampling) export; :func:`autoencoder_kl_config` refuses the others.

Other refusals (one-line ``ValueError`` naming the option): ``channel_mults[0] != 1``
(diffusers' ``conv_in`` already has the first level's width) and a ``groups`` that gives
GroupNorms of different group counts (diffusers has one ``norm_num_groups``). Dropout is
accepted: ``AutoencoderKL`` has none, which is what diffcli's net computes in eval mode.

``KLAutoencoder.state_dict()`` holds the encoder, ``quant_conv``, ``post_quant_conv`` and the
decoder only, all of which map; the training module's discriminator (``discriminator.*``) and
EMA copy (``ema_net.*``) live beside it in the checkpoint and LPIPS is never saved, so the
caller selects the autoencoder's own keys (e.g. ``LoadedRun.weights("net.")``) before
calling. The mapping is plain Python / torch (the diffcli net is laid out on the ``meta``
device); diffusers itself is never imported here.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from diffcli.interop.weight_maps import Entry, map_in, map_out
from diffcli.nets.autoencoder import KLAutoencoder, ResnetBlock
from diffcli.nets.layers import AttentionBlock, Downsample, Upsample

__all__ = [
    "DIFFUSERS_VAE_NORM_EPS",
    "autoencoder_kl_config",
    "from_diffusers_vae_state_dict",
    "to_diffusers_vae_state_dict",
]

#: The epsilon of every GroupNorm in diffusers' VAE ``Encoder`` / ``Decoder`` (hard-coded).
DIFFUSERS_VAE_NORM_EPS = 1e-6

# One weight correspondence: diffcli key, diffusers key(s), how the tensor changes, and the
# factor the diffusers tensor carries (the residual-stream scale c, or 1).
# ops: "copy" (same shape), "squeeze" (1x1 conv (O, I, 1, 1) <-> Linear (O, I)),
# "qkv" (fused 1x1 conv weight (3C, C, 1, 1) or bias (3C,) <-> Linear to_q / to_k / to_v).


# --------------------------------------------------------------------------- config


def _meta_autoencoder(ae_kwargs: Mapping[str, Any], data_shape: Sequence[int]) -> KLAutoencoder:
    """The diffcli net for ``ae_kwargs`` on the meta device (layout only, no memory).

    One-line ``ValueError`` for keywords :class:`KLAutoencoder` does not take (e.g. a VQ
    autoencoder's ``n_embed``) and for anything it refuses itself.
    """
    kwargs = {k: v for k, v in dict(ae_kwargs).items() if k not in ("_target_", "data_shape")}
    known = inspect.signature(KLAutoencoder.__init__).parameters
    unknown = sorted(k for k in kwargs if k not in known)
    if unknown:
        raise ValueError(f"autoencoder.{unknown[0]} is not a KLAutoencoder option; only "
                         "KL autoencoders export to diffusers' AutoencoderKL")
    if "channel_mults" in kwargs:
        kwargs["channel_mults"] = [int(m) for m in kwargs["channel_mults"]]
    with torch.device("meta"):
        return KLAutoencoder(**kwargs, data_shape=tuple(int(d) for d in data_shape))


def _option(ae_kwargs: Mapping[str, Any], name: str) -> Any:
    """The value of KLAutoencoder option ``name``: from ``ae_kwargs``, else its default."""
    if name in ae_kwargs:
        return ae_kwargs[name]
    return inspect.signature(KLAutoencoder.__init__).parameters[name].default


def _check_exportable(net: KLAutoencoder, ae_kwargs: Mapping[str, Any]) -> None:
    """Raise a one-line ``ValueError`` for settings ``AutoencoderKL`` cannot express."""
    mults = list(_option(ae_kwargs, "channel_mults"))
    if int(mults[0]) != 1:
        raise ValueError(f"autoencoder.channel_mults={mults}: diffusers' AutoencoderKL has no "
                         "width change between conv_in and the first level; start the "
                         "multipliers with 1 (e.g. [1, 2, 2])")
    if any(m.padding != 0 for m in net.modules() if isinstance(m, Downsample)):
        raise ValueError(f"autoencoder.downsample_padding="
                         f"{_option(ae_kwargs, 'downsample_padding')}: diffusers' AutoencoderKL "
                         "pads its stride-2 convs on the right and bottom only; only nets "
                         "trained with autoencoder.downsample_padding=0 export")
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    groups = sorted({m.num_groups for m in norms})
    if len(groups) > 1:
        raise ValueError(f"autoencoder.groups={_option(ae_kwargs, 'groups')}: this net's "
                         f"GroupNorms use {groups} groups (the largest divisor of each width up "
                         "to groups), but diffusers' AutoencoderKL has one norm_num_groups; "
                         "choose groups dividing every channel count")
    eps = {m.eps for m in norms}
    if len(eps) > 1:  # cannot happen with today's KLAutoencoder
        raise ValueError(f"the autoencoder's GroupNorms use several epsilons {sorted(eps)}; "
                         "diffusers' AutoencoderKL needs one")


def _stream_scale(net: KLAutoencoder) -> float:
    """``c = sqrt(1e-6 / eps)``: the residual-stream scale that turns diffcli's GroupNorm
    epsilon into diffusers' (module docs)."""
    eps = next(m.eps for m in net.modules() if isinstance(m, nn.GroupNorm))
    return math.sqrt(DIFFUSERS_VAE_NORM_EPS / eps)


def autoencoder_kl_config(ae_kwargs: Mapping[str, Any], data_shape: Sequence[int],
                          scaling_factor: float) -> dict[str, Any]:
    """The ``AutoencoderKL(**config)`` keyword arguments for a diffcli KL autoencoder.

    Args:
        ae_kwargs: the run's ``autoencoder`` config node minus ``_target_`` (any
            :class:`~diffcli.nets.autoencoder.KLAutoencoder` keyword arguments;
            ``data_shape`` in it is ignored).
        data_shape: the images' shape ``(C, H, W)``.
        scaling_factor: the latent diffusion model's latent scale ``s`` (diffusion runs on
            ``s * z``); stored as the config's ``scaling_factor``.

    Returns:
        A JSON-serialisable dict of ``AutoencoderKL`` arguments (diffusers 0.42): with weights
        from :func:`to_diffusers_vae_state_dict` the VAE's posterior mean / log-variance and
        decoder output equal diffcli's (module docs). ``force_upcast`` is False (diffcli's
        net has no fp16 trouble to work around), ``shift_factor`` / ``latents_mean`` /
        ``latents_std`` are None.

    Raises:
        ValueError: (one line, naming the option) for a net ``AutoencoderKL`` cannot express:
            a keyword KLAutoencoder does not take (e.g. VQ settings),
            ``downsample_padding=1`` with more than one level, ``channel_mults[0] != 1``,
            GroupNorms of different group counts; a non-positive or non-finite
            ``scaling_factor``; anything KLAutoencoder itself refuses.
    """
    net = _meta_autoencoder(ae_kwargs, data_shape)
    _check_exportable(net, ae_kwargs)
    if not (math.isfinite(float(scaling_factor)) and float(scaling_factor) > 0):
        raise ValueError(f"scaling_factor={scaling_factor!r}: the latent scale must be a "
                         "positive finite number")
    channels, height, width = (int(d) for d in data_shape)
    base = net.encoder.conv_in.out_channels
    mults = [int(m) for m in _option(ae_kwargs, "channel_mults")]
    levels = len(mults)
    groups = next(m.num_groups for m in net.modules() if isinstance(m, nn.GroupNorm))
    return {
        "in_channels": channels,
        "out_channels": net.image_channels,
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
        "block_out_channels": [base * m for m in mults],
        "layers_per_block": int(_option(ae_kwargs, "num_res_blocks")),
        "act_fn": "silu",
        "latent_channels": net.z_channels,
        "norm_num_groups": groups,
        "sample_size": height if height == width else [height, width],
        "scaling_factor": float(scaling_factor),
        "shift_factor": None,
        "latents_mean": None,
        "latents_std": None,
        "force_upcast": False,
        "use_quant_conv": True,
        "use_post_quant_conv": True,
        "mid_block_add_attention": any(isinstance(m, AttentionBlock) for m in net.modules()),
    }


# --------------------------------------------------------------------------- weights


def _plain(src: str, dst: str, weight: float = 1.0, bias: float = 1.0) -> list[Entry]:
    """A module whose ``weight`` / ``bias`` keep their names, with their stream factors."""
    return [(f"{src}.weight", (f"{dst}.weight",), "copy", weight),
            (f"{src}.bias", (f"{dst}.bias",), "copy", bias)]


def _resnet(src: str, dst: str, block: ResnetBlock, c: float) -> list[Entry]:
    """diffcli ResnetBlock ``src`` <-> diffusers ResnetBlock2D ``dst``."""
    entries = _plain(f"{src}.body.0", f"{dst}.norm1")
    entries += _plain(f"{src}.body.2", f"{dst}.conv1", c, c)
    entries += _plain(f"{src}.body.3", f"{dst}.norm2")
    entries += _plain(f"{src}.body.6", f"{dst}.conv2", c, c)
    if isinstance(block.skip, nn.Conv2d):
        entries += _plain(f"{src}.skip", f"{dst}.conv_shortcut", 1.0, c)
    return entries


def _attention(src: str, dst: str, c: float) -> list[Entry]:
    """diffcli AttentionBlock ``src`` (one head) <-> diffusers Attention ``dst``."""
    entries = _plain(f"{src}.norm", f"{dst}.group_norm")
    for p in ("weight", "bias"):
        entries.append((f"{src}.qkv.{p}", tuple(f"{dst}.{n}.{p}" for n in ("to_q", "to_k", "to_v")),
                        "qkv", 1.0))
        entries.append((f"{src}.proj.{p}", (f"{dst}.to_out.0.{p}",),
                        "squeeze" if p == "weight" else "copy", c))
    return entries


def _middle(src: str, dst: str, mid: nn.Sequential, c: float) -> list[Entry]:
    """ResnetBlock, attention (or identity), ResnetBlock -> UNetMidBlock2D ``dst``."""
    first, attn, last = mid
    assert isinstance(first, ResnetBlock) and isinstance(last, ResnetBlock)
    entries = _resnet(f"{src}.0", f"{dst}.resnets.0", first, c)
    if isinstance(attn, AttentionBlock):
        entries += _attention(f"{src}.1", f"{dst}.attentions.0", c)
    return entries + _resnet(f"{src}.2", f"{dst}.resnets.1", last, c)


def _levels(src: str, dst: str, seq: nn.Sequential, c: float) -> list[Entry]:
    """The encoder's ``down`` / decoder's ``up`` sequence -> diffusers' down / up blocks:
    ResnetBlocks go to ``resnets.j`` of the current block; a resampler ends the block."""
    entries: list[Entry] = []
    block, j = 0, 0
    for idx, layer in enumerate(seq):
        here = f"{src}.{idx}"
        if isinstance(layer, ResnetBlock):
            entries += _resnet(here, f"{dst}.{block}.resnets.{j}", layer, c)
            j += 1
        elif isinstance(layer, Downsample | Upsample):
            kind = "downsamplers" if isinstance(layer, Downsample) else "upsamplers"
            entries += _plain(f"{here}.conv", f"{dst}.{block}.{kind}.0.conv", 1.0, c)
            block, j = block + 1, 0
        else:  # pragma: no cover - KLAutoencoder builds nothing else here
            raise ValueError(f"{type(layer).__name__} at {here} has no AutoencoderKL counterpart")
    return entries


def _entries(net: KLAutoencoder, c: float) -> list[Entry]:
    """Every weight correspondence of ``net`` (already checked exportable)."""
    enc, dec = net.encoder, net.decoder
    entries = _plain("encoder.conv_in", "encoder.conv_in", c, c)
    entries += _levels("encoder.down", "encoder.down_blocks", enc.down, c)
    entries += _middle("encoder.mid", "encoder.mid_block", enc.mid, c)
    entries += _plain("encoder.out.0", "encoder.conv_norm_out")
    entries += _plain("encoder.out.2", "encoder.conv_out")
    entries += _plain("quant_conv", "quant_conv")
    entries += _plain("post_quant_conv", "post_quant_conv")
    entries += _plain("decoder.conv_in", "decoder.conv_in", c, c)
    entries += _middle("decoder.mid", "decoder.mid_block", dec.mid, c)
    entries += _levels("decoder.up", "decoder.up_blocks", dec.up, c)
    entries += _plain("decoder.out.0", "decoder.conv_norm_out")
    entries += _plain("decoder.out.2", "decoder.conv_out")
    return entries


def _layout(ae_kwargs: Mapping[str, Any],
            data_shape: Sequence[int]) -> tuple[list[Entry], dict[str, torch.Size]]:
    """The weight correspondences and diffcli's parameter shapes (exportable nets only)."""
    net = _meta_autoencoder(ae_kwargs, data_shape)
    _check_exportable(net, ae_kwargs)
    entries = _entries(net, _stream_scale(net))
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    assert {e[0] for e in entries} == set(shapes), "VAE layout out of sync with KLAutoencoder"
    return entries, shapes


def to_diffusers_vae_state_dict(state: Mapping[str, Tensor], ae_kwargs: Mapping[str, Any],
                                data_shape: Sequence[int]) -> dict[str, Tensor]:
    """diffcli KL autoencoder weights -> the weights of
    ``AutoencoderKL(**autoencoder_kl_config(...))``.

    Args:
        state: ``KLAutoencoder(**ae_kwargs, data_shape=data_shape).state_dict()`` (any device
            and dtype; kept as they are). Exactly the net's keys: strip a checkpoint's
            ``net.`` / ``ema_net.`` prefix and leave the discriminator out first.
        ae_kwargs: as for :func:`autoencoder_kl_config`.
        data_shape: the images' shape ``(C, H, W)``.

    Returns:
        A new dict of new (contiguous, unshared) tensors that loads into the diffusers model
        with ``strict=True``; the residual-stream weights carry the GroupNorm-epsilon scale of
        the module docs.

    Raises:
        ValueError: the net is not exportable (see :func:`autoencoder_kl_config`), or
            ``state`` has missing / unexpected keys or wrongly shaped tensors.
    """
    entries, shapes = _layout(ae_kwargs, data_shape)
    return map_out(state, entries, shapes, "autoencoder")


def from_diffusers_vae_state_dict(state: Mapping[str, Tensor], ae_kwargs: Mapping[str, Any],
                                  data_shape: Sequence[int]) -> dict[str, Tensor]:
    """``AutoencoderKL`` weights -> the state dict of
    ``KLAutoencoder(**ae_kwargs, data_shape=data_shape)``.

    The inverse of :func:`to_diffusers_vae_state_dict` (the residual-stream scale is divided
    out again), for a VAE whose config is ``autoencoder_kl_config(ae_kwargs, data_shape, s)``.

    Raises:
        ValueError: the net is not exportable, or ``state`` has missing / unexpected keys or
            wrongly shaped tensors.
    """
    entries, shapes = _layout(ae_kwargs, data_shape)
    return map_in(state, entries, shapes, "autoencoder")
