"""diffcli's UNet <-> diffusers' UNet2DModel: configs and weights map both ways, exactly."""

from __future__ import annotations

import inspect
import json
import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from diffcli.components import conf_dir
from diffcli.interop.diffusers_layout import (
    DIFFUSERS_UNET_DEFAULTS,
    diffusers_unet_config,
    from_diffusers_config,
    from_diffusers_state_dict,
    to_diffusers_state_dict,
)
from diffcli.nets.layers import count_parameters, timestep_embedding
from diffcli.nets.unet import UNet

diffusers = pytest.importorskip("diffusers")
UNet2DModel = diffusers.UNet2DModel

CONF_DIR = conf_dir()

# google/ddpm-cifar10-32's unet/config.json (the DDPM CIFAR-10 model converted from the
# reference TensorFlow checkpoint).
GOOGLE_DDPM_CIFAR10_CONFIG: dict[str, Any] = {
    "_class_name": "UNet2DModel",
    "_diffusers_version": "0.0.4",
    "act_fn": "silu",
    "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256],
    "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"],
    "downsample_padding": 0,
    "flip_sin_to_cos": False,
    "freq_shift": 1,
    "in_channels": 3,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 32,
    "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
DDPM_PARAMETERS = 35_746_307

SHAPE = (3, 8, 8)
TOL = 1e-5

# Tiny diffcli layouts covering every option the export expresses.
LAYOUTS: dict[str, dict[str, Any]] = {
    "plain": dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, groups=4),
    "ddpm_like": dict(base_channels=16, channel_mults=(1, 2, 2), num_res_blocks=2, groups=8,
                      attention_levels=[1], dropout=0.1),
    "two_heads": dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, groups=4,
                      attention_levels=[1], num_heads=2),
    "class_cond_learn_sigma": dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=2,
                                   groups=4, attention_levels=[0], num_head_channels=4,
                                   learn_sigma=True, num_classes=3),
    "ddpm_reference_conventions": dict(base_channels=8, channel_mults=(1, 2, 2),
                                       num_res_blocks=1, groups=4, attention_resolutions=[4],
                                       downsample_padding=0, norm_eps=1e-6, time_freq_shift=1,
                                       time_sin_first=True),
    "adm_updown_scale_shift": dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1,
                                   groups=4, attention_levels=[0], num_head_channels=4,
                                   resblock_updown=True, use_scale_shift_norm=True, emb_dim=24),
    "no_mid_attention": dict(base_channels=8, channel_mults=(1, 2), num_res_blocks=1, groups=4,
                             attention_levels=[1], mid_attention=False),
    "mid_attention_only": dict(base_channels=8, channel_mults=(1, 2, 2), num_res_blocks=1,
                               groups=8, mid_attention=True, resblock_updown=True),
}


def _randomize(module: nn.Module, std: float = 0.2) -> nn.Module:
    """Overwrite every parameter (zero-initialised convs included) with N(0, std^2)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)
    return module.eval()


def _inputs(shape: tuple[int, int, int], num_classes: int | None) -> tuple[Tensor, ...]:
    """A batch of 3: images, integer timesteps (both ends of 0..999), labels or None."""
    x = torch.randn(3, *shape)
    t = torch.tensor([0, 417, 999])
    y = None if num_classes is None else torch.tensor([0, num_classes - 1, num_classes])
    return x, t, y


def _max_diff(a: Tensor, b: Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_export_gives_the_same_function(name: str) -> None:
    kwargs = LAYOUTS[name]
    torch.manual_seed(0)
    net = _randomize(UNet(**kwargs, data_shape=SHAPE))
    config = diffusers_unet_config(kwargs, SHAPE)
    assert json.loads(json.dumps(config)) == config  # storable as config.json
    assert set(config) == set(DIFFUSERS_UNET_DEFAULTS)
    model = _randomize(UNet2DModel(**config))
    mapped = to_diffusers_state_dict(net.state_dict(), kwargs, SHAPE)
    model.load_state_dict(mapped, strict=True)
    assert count_parameters(model) == count_parameters(net)

    x, t, y = _inputs(SHAPE, kwargs.get("num_classes"))
    with torch.no_grad():
        ours = net(x, t, y)
        theirs = model(x, t, class_labels=y).sample
    assert ours.abs().max() > 0.1  # a meaningful comparison, not two near-zero outputs
    assert _max_diff(ours, theirs) < TOL

    back = from_diffusers_state_dict(model.state_dict(), kwargs, SHAPE)
    original = net.state_dict()
    assert set(back) == set(original)
    assert all(torch.equal(back[k], v) for k, v in original.items())


def _tiny_google_config() -> dict[str, Any]:
    """google/ddpm-cifar10-32's config with every option kept and the widths shrunk."""
    return {**GOOGLE_DDPM_CIFAR10_CONFIG, "block_out_channels": [8, 16, 16, 16],
            "norm_num_groups": 4, "sample_size": 16}


IMPORT_CONFIGS: dict[str, dict[str, Any]] = {
    "google_tiny": _tiny_google_config(),
    "heads_scale_shift_classes": {
        "sample_size": [8, 16], "in_channels": 2, "out_channels": 4,
        "block_out_channels": [8, 16], "layers_per_block": 1, "norm_num_groups": 4,
        "down_block_types": ["AttnDownBlock2D", "AttnDownBlock2D"],
        "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D"], "attention_head_dim": 4,
        "resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 4,
        "num_class_embeds": 5, "time_embedding_dim": 40, "norm_eps": 1e-6,
    },
    "resnet_resampling": {
        "sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16, 16],
        "layers_per_block": 2, "norm_num_groups": 8,
        "down_block_types": ["ResnetDownsampleBlock2D", "AttnDownBlock2D", "DownBlock2D"],
        "up_block_types": ["ResnetUpsampleBlock2D", "AttnUpBlock2D", "UpBlock2D"],
        "downsample_type": "resnet", "upsample_type": "resnet", "add_attention": False,
        "attention_head_dim": 16,
    },
}


@pytest.mark.parametrize("name", list(IMPORT_CONFIGS))
def test_import_gives_the_same_function(name: str) -> None:
    config = IMPORT_CONFIGS[name]
    torch.manual_seed(1)
    model = _randomize(UNet2DModel(**{k: v for k, v in config.items() if k[0] != "_"}))
    kwargs, shape = from_diffusers_config(config)
    net = UNet(**kwargs, data_shape=shape).eval()
    net.load_state_dict(from_diffusers_state_dict(model.state_dict(), kwargs, shape), strict=True)
    assert count_parameters(net) == count_parameters(model)

    num_classes = kwargs.get("num_classes")
    x, t, y = _inputs(shape, num_classes)
    with torch.no_grad():
        theirs = model(x, t, class_labels=y).sample
        ours = net(x, t, y)
    assert ours.abs().max() > 0.1
    assert _max_diff(ours, theirs) < TOL

    # ... and back: the same config (up to keys that do not change the function) and weights.
    again = diffusers_unet_config(kwargs, shape)
    for key in ("block_out_channels", "layers_per_block", "norm_num_groups", "norm_eps",
                "in_channels", "out_channels", "freq_shift", "flip_sin_to_cos",
                "num_class_embeds", "resnet_time_scale_shift", "downsample_padding"):
        assert again[key] == {**DIFFUSERS_UNET_DEFAULTS, **config}[key], key
    state = model.state_dict()
    back = to_diffusers_state_dict(net.state_dict(), kwargs, shape)
    assert set(back) == set(state) and all(torch.equal(back[k], v) for k, v in state.items())


def test_google_ddpm_cifar10_config_imports() -> None:
    kwargs, shape = from_diffusers_config(GOOGLE_DDPM_CIFAR10_CONFIG)
    assert shape == (3, 32, 32)
    assert kwargs["base_channels"] == 128 and kwargs["channel_mults"] == [1, 2, 2, 2]
    assert kwargs["attention_levels"] == [1] and kwargs["num_heads"] == 1
    assert kwargs["downsample_padding"] == 0 and kwargs["norm_eps"] == 1e-6
    assert kwargs["time_freq_shift"] == 1 and kwargs["time_sin_first"] is True
    with torch.device("meta"):
        assert count_parameters(UNet(**kwargs, data_shape=shape)) == DDPM_PARAMETERS


def _preset_model_node() -> dict[str, Any]:
    """The ``model`` node of ``experiment=ddpm_cifar10``, as the commands compose it."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("train", overrides=["experiment=ddpm_cifar10"])
    node = OmegaConf.to_container(cfg.model, resolve=True)
    assert isinstance(node, dict)
    node.pop("_target_")
    return node


def test_ddpm_cifar10_preset_has_google_layout() -> None:
    kwargs = _preset_model_node()
    config = diffusers_unet_config(kwargs, (3, 32, 32))
    for key in ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block",
                "attention_head_dim", "norm_num_groups", "in_channels", "out_channels",
                "sample_size", "act_fn", "time_embedding_type", "center_input_sample",
                "mid_block_scale_factor"):
        assert config[key] == GOOGLE_DDPM_CIFAR10_CONFIG[key], key
    assert config["add_attention"] is True and config["resnet_time_scale_shift"] == "default"
    # diffcli's defaults, not the reference code's: same weights, slightly different function.
    assert (config["downsample_padding"], config["norm_eps"]) == (1, 1e-5)
    assert (config["flip_sin_to_cos"], config["freq_shift"]) == (True, 0)
    net = UNet(**kwargs, data_shape=(3, 32, 32))
    model = UNet2DModel(**config)
    assert count_parameters(net) == count_parameters(model) == DDPM_PARAMETERS
    model.load_state_dict(to_diffusers_state_dict(net.state_dict(), kwargs, (3, 32, 32)),
                          strict=True)


def test_defaults_table_matches_installed_diffusers() -> None:
    params = inspect.signature(UNet2DModel.__init__).parameters
    installed = {k: p.default for k, p in params.items() if k != "self"}
    assert installed == DIFFUSERS_UNET_DEFAULTS


def test_deprecated_attention_names_are_accepted() -> None:
    config = _tiny_google_config()
    torch.manual_seed(2)
    model = _randomize(UNet2DModel(**{k: v for k, v in config.items() if k[0] != "_"}))
    kwargs, shape = from_diffusers_config(config)
    old_names = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.",
                 ".to_out.0.": ".proj_attn."}
    state = model.state_dict()
    old = {}
    for key, value in state.items():
        for new, previous in old_names.items():
            key = key.replace(new, previous)
        old[key] = value
    assert any(".proj_attn." in k for k in old)
    a = from_diffusers_state_dict(state, kwargs, shape)
    b = from_diffusers_state_dict(old, kwargs, shape)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("dim", [128, 64, 33, 96])
@pytest.mark.parametrize(("flip_sin_to_cos", "freq_shift"), [(True, 0), (False, 1)])
def test_timestep_features_match_diffusers(dim: int, flip_sin_to_cos: bool,
                                           freq_shift: int) -> None:
    from diffusers.models.embeddings import get_timestep_embedding

    t = torch.arange(1000)
    theirs = get_timestep_embedding(t, dim, flip_sin_to_cos=flip_sin_to_cos,
                                    downscale_freq_shift=freq_shift)
    ours = timestep_embedding(t, dim, freq_shift=freq_shift, sin_first=not flip_sin_to_cos)
    if freq_shift == 0 and dim // 2 & (dim // 2 - 1):
        # diffcli's unshifted frequencies round as -ln(P) * (i / half), diffusers' as
        # (-ln(P) * i) / half: equal when half is a power of two, else one ulp apart.
        assert _max_diff(ours, theirs) < 1e-4
    else:
        assert torch.equal(ours, theirs)


def test_default_timestep_features_unchanged() -> None:
    """The new options leave the default embedding bit for bit as before."""
    t = torch.arange(1000)
    for dim in (32, 96, 33):
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * (torch.arange(half, dtype=torch.float32) / half))
        args = t[:, None].float() * freqs[None]
        expected = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
        expected = nn.functional.pad(expected, (0, dim % 2))
        assert torch.equal(timestep_embedding(t, dim), expected)


def _one_line_error(call: Any, prefix: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.startswith(prefix), message


@pytest.mark.parametrize(("overrides", "prefix"), [
    (dict(context_dim=8, transformer_levels=[1]), "model.context_dim=8:"),
    (dict(decoder=False), "model.decoder=false:"),
    (dict(groups=32), "model.groups=32:"),
    (dict(attention_levels=[0, 1], num_heads=2), "model.num_heads=2, "),
])
def test_export_refuses_what_diffusers_cannot_express(overrides: dict[str, Any],
                                                      prefix: str) -> None:
    kwargs = {**LAYOUTS["plain"], **overrides}
    _one_line_error(lambda: diffusers_unet_config(kwargs, SHAPE), prefix)
    state = UNet(**kwargs, data_shape=SHAPE).state_dict()
    _one_line_error(lambda: to_diffusers_state_dict(state, kwargs, SHAPE), prefix)


@pytest.mark.parametrize(("overrides", "prefix"), [
    ({"time_embedding_type": "fourier"}, "time_embedding_type='fourier':"),
    ({"down_block_types": ["DownBlock2D", "AttnSkipDownBlock2D", "DownBlock2D", "DownBlock2D"]},
     "down_block_types="),
    ({"center_input_sample": True}, "center_input_sample=True:"),
    ({"act_fn": "gelu"}, "act_fn='gelu':"),
    ({"class_embed_type": "timestep"}, "class_embed_type='timestep':"),
    ({"mid_block_scale_factor": 2}, "mid_block_scale_factor=2:"),
    ({"downsample_padding": 2}, "downsample_padding=2:"),
    ({"block_out_channels": [8, 12, 16, 16]}, "block_out_channels="),
    ({"up_block_types": ["UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"]},
     "up_block_types="),
    ({"downsample_type": "resnet"}, "downsample_type='resnet':"),
    ({"attention_head_dim": 3}, "attention_head_dim=3:"),
    ({"resnet_time_scale_shift": "scale_shift"}, "attn_norm_num_groups=None:"),
    ({"num_class_embeds": 1}, "num_class_embeds=1:"),
    ({"_class_name": "UNet2DConditionModel"}, "_class_name=UNet2DConditionModel:"),
    ({"cross_attention_dim": 768}, "cross_attention_dim=768:"),
])
def test_import_refuses_what_diffcli_cannot_express(overrides: dict[str, Any],
                                                    prefix: str) -> None:
    config = {**_tiny_google_config(), **overrides}
    _one_line_error(lambda: from_diffusers_config(config), prefix)


def test_learn_sigma_import() -> None:
    config = {**_tiny_google_config(), "out_channels": 6}
    kwargs, shape = from_diffusers_config(config)
    assert kwargs["out_channels"] == 6 and kwargs["learn_sigma"] is False
    kwargs, shape = from_diffusers_config(config, learn_sigma=True)
    assert "out_channels" not in kwargs and kwargs["learn_sigma"] is True
    assert UNet(**kwargs, data_shape=shape).out_channels == 6
    _one_line_error(lambda: from_diffusers_config(_tiny_google_config(), learn_sigma=True),
                    "out_channels=3:")


def test_state_dict_mismatch_is_one_line() -> None:
    kwargs = LAYOUTS["plain"]
    state = UNet(**kwargs, data_shape=SHAPE).state_dict()
    missing = {k: v for k, v in state.items() if k != "conv_in.bias"}
    _one_line_error(lambda: to_diffusers_state_dict(missing, kwargs, SHAPE), "diffcli state dict")
    mapped = to_diffusers_state_dict(state, kwargs, SHAPE)
    mapped["extra.weight"] = torch.zeros(1)
    _one_line_error(lambda: from_diffusers_state_dict(mapped, kwargs, SHAPE),
                    "diffusers state dict")
    wrong = dict(state, **{"conv_in.bias": torch.zeros(3)})
    _one_line_error(lambda: to_diffusers_state_dict(wrong, kwargs, SHAPE), "diffcli weight")
