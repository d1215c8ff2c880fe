"""diffcli's KLAutoencoder <-> diffusers' AutoencoderKL: config and weights map exactly."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from torch import nn

from diffcli.interop.diffusers_vae import (
    DIFFUSERS_VAE_NORM_EPS,
    autoencoder_kl_config,
    from_diffusers_vae_state_dict,
    to_diffusers_vae_state_dict,
)
from diffcli.nets.autoencoder import KLAutoencoder, VQAutoencoder
from diffcli.nets.layers import Downsample

TOL = 1e-5
EXPORTABLE = {"base_channels": 8, "groups": 4, "z_channels": 3, "downsample_padding": 0}

# (data_shape, autoencoder kwargs): tiny nets covering every exportable option.
CASES: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {
    "f2-attn": ((3, 16, 16), dict(channel_mults=[1, 2], num_res_blocks=1, mid_attention=True)),
    "f4-2res-noattn": ((3, 16, 16), dict(channel_mults=[1, 2, 2], num_res_blocks=2,
                                         mid_attention=False)),
    "gray-f4-attn": ((1, 8, 8), dict(channel_mults=[1, 2, 2], num_res_blocks=1,
                                     mid_attention=True)),
    "gray-f2-2res": ((1, 8, 8), dict(channel_mults=[1, 2], num_res_blocks=2,
                                     mid_attention=False)),
    "f1-default-padding": ((1, 8, 8), dict(channel_mults=[1], num_res_blocks=1,
                                           downsample_padding=1)),
    "non-square-dropout": ((3, 16, 8), dict(channel_mults=[1, 2], num_res_blocks=1,
                                            dropout=0.1, z_channels=4)),
}


def _kwargs(case: str) -> tuple[tuple[int, int, int], dict[str, Any]]:
    data_shape, extra = CASES[case]
    return data_shape, {**EXPORTABLE, **extra}


def _random_net(data_shape: tuple[int, int, int], kwargs: dict[str, Any]) -> KLAutoencoder:
    torch.manual_seed(0)
    net = KLAutoencoder(data_shape=data_shape, **kwargs).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    return net


@pytest.fixture(scope="module")
def autoencoder_kl() -> type:
    return pytest.importorskip("diffusers").AutoencoderKL


@pytest.mark.parametrize("case", list(CASES))
def test_mapped_vae_computes_the_same_function(case: str, autoencoder_kl: type) -> None:
    data_shape, kwargs = _kwargs(case)
    net = _random_net(data_shape, kwargs)
    config = autoencoder_kl_config(kwargs, data_shape, scaling_factor=0.37)
    vae = autoencoder_kl(**config).eval()
    vae.load_state_dict(to_diffusers_vae_state_dict(net.state_dict(), kwargs, data_shape),
                        strict=True)
    x = torch.rand(2, *data_shape) * 2 - 1
    z = torch.randn(2, *net.latent_shape)
    with torch.no_grad():
        ours, theirs = net.encode(x), vae.encode(x).latent_dist
        torch.testing.assert_close(theirs.mean, ours.mean, rtol=0, atol=TOL)
        torch.testing.assert_close(theirs.logvar, ours.logvar, rtol=0, atol=TOL)
        torch.testing.assert_close(vae.decode(z).sample, net.decode_latent(z), rtol=0, atol=TOL)
    assert vae.config.scaling_factor == pytest.approx(0.37)
    # the epsilon the stream scale assumes is the one diffusers builds
    assert {m.eps for m in vae.modules() if isinstance(m, nn.GroupNorm)} \
        == {DIFFUSERS_VAE_NORM_EPS}


@pytest.mark.parametrize("case", ["f4-2res-noattn", "gray-f4-attn"])
def test_weights_round_trip(case: str) -> None:
    data_shape, kwargs = _kwargs(case)
    state = _random_net(data_shape, kwargs).state_dict()
    back = from_diffusers_vae_state_dict(to_diffusers_vae_state_dict(state, kwargs, data_shape),
                                         kwargs, data_shape)
    assert set(back) == set(state)
    for key, tensor in state.items():
        torch.testing.assert_close(back[key], tensor, rtol=1e-6, atol=1e-7)


def test_config_is_json_and_complete() -> None:
    data_shape, kwargs = _kwargs("non-square-dropout")
    config = autoencoder_kl_config(kwargs, data_shape, scaling_factor=0.18215)
    assert json.loads(json.dumps(config)) == config
    assert config["scaling_factor"] == 0.18215
    assert config["sample_size"] == [16, 8]
    assert config["block_out_channels"] == [8, 16]
    assert config["down_block_types"] == ["DownEncoderBlock2D"] * 2
    assert config["up_block_types"] == ["UpDecoderBlock2D"] * 2
    assert config["latent_channels"] == 4 and config["norm_num_groups"] == 4
    assert config["force_upcast"] is False and config["mid_block_add_attention"] is True


def _one_line_error(call: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match) as err:
        call()
    assert "\n" not in str(err.value)


REFUSED = {
    "default downsample padding": ({"channel_mults": [1, 2], "downsample_padding": 1},
                                   r"autoencoder\.downsample_padding=1"),
    "padding left at its default": ({"channel_mults": [1, 2], "downsample_padding": None},
                                    r"autoencoder\.downsample_padding=1"),
    "first multiplier": ({"channel_mults": [2, 2]}, r"autoencoder\.channel_mults=\[2, 2\]"),
    "mixed group counts": ({"base_channels": 12, "groups": 8, "channel_mults": [1, 2]},
                           r"autoencoder\.groups=8"),
    "VQ option": ({"channel_mults": [1, 2], "n_embed": 16}, r"autoencoder\.n_embed"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_options(name: str) -> None:
    changes, match = REFUSED[name]
    kwargs = {**EXPORTABLE, **changes}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    _one_line_error(lambda: autoencoder_kl_config(kwargs, (3, 16, 16), 1.0), match)
    _one_line_error(lambda: to_diffusers_vae_state_dict({}, kwargs, (3, 16, 16)), match)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("nan"), float("inf")])
def test_refused_scaling_factor(scale: float) -> None:
    data_shape, kwargs = _kwargs("f2-attn")
    _one_line_error(lambda: autoencoder_kl_config(kwargs, data_shape, scale), "scaling_factor")


def test_state_dict_keys_and_shapes_are_checked() -> None:
    data_shape, kwargs = _kwargs("f2-attn")
    state = KLAutoencoder(data_shape=data_shape, **kwargs).state_dict()
    extra = {**state, "discriminator.main.0.weight": torch.zeros(1)}
    _one_line_error(lambda: to_diffusers_vae_state_dict(extra, kwargs, data_shape),
                    r"unexpected \['discriminator")
    missing = {k: v for k, v in state.items() if k != "quant_conv.bias"}
    _one_line_error(lambda: to_diffusers_vae_state_dict(missing, kwargs, data_shape),
                    r"missing \['quant_conv.bias'\]")
    wrong = {**state, "quant_conv.bias": torch.zeros(5)}
    _one_line_error(lambda: to_diffusers_vae_state_dict(wrong, kwargs, data_shape),
                    "quant_conv.bias has shape")
    mapped = to_diffusers_vae_state_dict(state, kwargs, data_shape)
    del mapped["decoder.conv_out.bias"]
    _one_line_error(lambda: from_diffusers_vae_state_dict(mapped, kwargs, data_shape),
                    r"missing \['decoder.conv_out.bias'\]")


# --------------------------------------------------------------------------- the new option


@pytest.mark.parametrize("cls", [KLAutoencoder, VQAutoencoder])
def test_downsample_padding_option(cls: type) -> None:
    common = {"data_shape": (3, 16, 16), "channel_mults": [1, 2, 2], "base_channels": 8,
              "groups": 4, "z_channels": 3}
    default, right = cls(**common), cls(**common, downsample_padding=0)
    assert {m.padding for m in default.modules() if isinstance(m, Downsample)} == {1}
    assert {m.padding for m in right.modules() if isinstance(m, Downsample)} == {0}
    assert {k: v.shape for k, v in default.state_dict().items()} \
        == {k: v.shape for k, v in right.state_dict().items()}
    right.load_state_dict(default.state_dict())
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert right.encode_latent(x, sample=False).shape == (2, 3, 4, 4)
    _one_line_error(lambda: cls(**common, downsample_padding=2), "downsample_padding")
