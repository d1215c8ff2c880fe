"""The DiT network (Peebles & Xie 2023): shapes, patchify round trip, adaLN-Zero at init, the
paper's parameter counts, text cross-attention and its all-masked case, gradient
checkpointing, the null label, and a train + sample run through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_bad_inputs import run_in_process
from test_conditional_cli import train_runs

from diffcli.cli import CONF_DIR
from diffcli.nets.dit import DiT, patchify, unpatchify

TINY = {"hidden_size": 32, "depth": 2, "num_heads": 2}
# DiT-S/B/L/XL (Table 1) and their parameter counts at 256x256 (Table 4), in millions
PRESETS = {"dit_s": 33, "dit_b": 130, "dit_l": 458, "dit_xl": 675}


def _t(batch: int) -> torch.Tensor:
    return torch.linspace(0, 999, batch)


def _randomise(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter redrawn (so the zero-initialised layers do something)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return net


@pytest.mark.parametrize("patch", [2, 4])
@pytest.mark.parametrize("kind", ["plain", "conditional", "learn_sigma"])
def test_output_shape(patch: int, kind: str):
    kwargs = {"num_classes": 5} if kind == "conditional" else {}
    net = DiT(data_shape=(3, 8, 12), patch_size=patch, learn_sigma=kind == "learn_sigma",
              **kwargs, **TINY)
    y = torch.tensor([0, 5]) if kind == "conditional" else None
    out = net(torch.randn(2, 3, 8, 12), _t(2), y)
    assert out.shape == (2, 6 if kind == "learn_sigma" else 3, 8, 12)
    assert (net.in_channels, net.out_channels, net.image_size, net.patch_size) == (
        3, out.shape[1], 8, patch)


def test_sizes_that_are_not_a_multiple_of_the_patch_are_padded_and_cropped():
    net = _randomise(DiT(data_shape=(1, 7, 7), patch_size=4, **TINY))
    assert net(torch.randn(2, 1, 7, 7), _t(2)).shape == (2, 1, 7, 7)
    with pytest.raises(ValueError, match="patch_size=4 needs height and width divisible by 4"):
        net.check_image_size(7, 7)
    net.check_image_size(8, 12)


def test_patchify_unpatchify_round_trip_is_exact():
    x = torch.randn(2, 3, 8, 12)
    for p in (1, 2, 4):
        tokens = patchify(x, p)
        assert tokens.shape == (2, (8 // p) * (12 // p), p * p * 3)
        assert torch.equal(unpatchify(tokens, p, 8, 12), x)
    # a token is its patch: the conv embedding equals a linear map of patchify's rows
    net = DiT(data_shape=(3, 8, 12), patch_size=4, **TINY)
    w = net.x_embedder.weight.permute(0, 2, 3, 1).reshape(32, -1)  # (D, p, p, C) flattened
    conv = net.x_embedder(x).flatten(2).transpose(1, 2)
    assert torch.allclose(conv, patchify(x, 4) @ w.T + net.x_embedder.bias, atol=1e-5)


def test_at_init_the_output_is_zero_and_every_block_the_identity():
    net = DiT(data_shape=(3, 8, 8), num_classes=4, context_dim=16, **TINY)
    x, t, y = torch.randn(2, 3, 8, 8), _t(2), torch.tensor([1, 4])
    context = torch.randn(2, 5, 16)
    assert torch.equal(net(x, t, y, context=context), torch.zeros(2, 3, 8, 8))
    h, c = torch.randn(2, 16, 32), net.embed(t, y)
    for block in net.blocks:
        assert torch.equal(block(h, c, context), h)
    assert not any(name == "pos_embed" for name, _ in net.named_parameters())
    assert "pos_embed" in dict(net.named_buffers())


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_counts_match_table_4(name: str):
    node = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(
        CONF_DIR / "model" / f"{name}.yaml")).items() if k != "_target_"}
    node |= {"num_classes": 1000, "learn_sigma": True}
    with torch.device("meta"):
        net = DiT(data_shape=(4, 32, 32), **node)
    count = sum(p.numel() for p in net.parameters())
    want = PRESETS[name] * 1e6
    assert abs(count - want) <= 0.01 * want, f"{name}: {count:,} parameters, paper {want:,.0f}"


def test_an_all_masked_context_is_no_context_and_a_context_matters():
    net = _randomise(DiT(data_shape=(2, 8, 8), context_dim=12, **TINY))
    x, t = torch.randn(3, 2, 8, 8), _t(3)
    context = torch.randn(3, 4, 12)
    mask = torch.zeros(3, 4, dtype=torch.bool)
    plain = net(x, t)
    assert torch.equal(net(x, t, context=context, context_mask=mask), plain)
    mask[1, :2] = True  # only sample 1 sees text
    out = net(x, t, context=context, context_mask=mask)
    assert torch.equal(out[[0, 2]], plain[[0, 2]])
    assert not torch.allclose(out[1], plain[1])
    assert not torch.allclose(net(x, t, context=context), plain)


@pytest.mark.parametrize("bad, match", [
    ({"context": torch.randn(2, 4, 7)}, r"context of shape \(2, L, 12\)"),
    ({"context_mask": torch.ones(2, 4, dtype=torch.bool)}, "context_mask without context"),
    ({"context": torch.randn(2, 4, 12), "context_mask": torch.ones(2, 3, dtype=torch.bool)},
     "context_mask as bool"),
])
def test_bad_contexts_are_one_line(bad, match):
    net = DiT(data_shape=(2, 8, 8), context_dim=12, **TINY)
    with pytest.raises(ValueError, match=match) as info:
        net(torch.randn(2, 2, 8, 8), _t(2), **bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="context_dim=None"):
        DiT(data_shape=(2, 8, 8), **TINY)(torch.randn(2, 2, 8, 8), _t(2),
                                          context=torch.randn(2, 4, 12))


def test_bad_sizes_are_one_line():
    with pytest.raises(ValueError, match="takes images"):
        DiT(data_shape=(2,), **TINY)
    with pytest.raises(ValueError, match="num_heads=3 must be a positive divisor"):
        DiT(data_shape=(1, 8, 8), hidden_size=32, depth=1, num_heads=3)
    with pytest.raises(ValueError, match="even out_channels"):
        DiT(data_shape=(1, 8, 8), learn_sigma=True, out_channels=3, **TINY)


def test_grad_checkpointing_gives_the_same_gradients():
    kwargs = {"data_shape": (2, 8, 8), "num_classes": 3, "context_dim": 8, **TINY}
    plain = _randomise(DiT(**kwargs))
    ckpt = DiT(**kwargs, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(2, 2, 8, 8), _t(2), torch.tensor([0, 2])
    context, mask = torch.randn(2, 3, 8), torch.tensor([[True, True, False], [False] * 3])
    grads = []
    for net in (plain, ckpt):
        net.train()
        net.zero_grad()
        net(x, t, y, context=context, context_mask=mask).square().mean().backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-5, atol=1e-7), name


def test_no_label_is_the_null_label():
    net = _randomise(DiT(data_shape=(1, 8, 8), num_classes=3, **TINY))
    x, t = torch.randn(2, 1, 8, 8), _t(2)
    assert torch.equal(net(x, t), net(x, t, torch.tensor([3, 3])))
    assert not torch.equal(net(x, t), net(x, t, torch.tensor([0, 1])))
    with pytest.raises(ValueError, match="num_classes=None"):
        DiT(data_shape=(1, 8, 8), **TINY)(x, t, torch.tensor([0, 1]))


def test_non_square_position_grid_is_computed_per_size():
    net = _randomise(DiT(data_shape=(1, 8, 8), **TINY))
    assert net.pos_embed.shape == (1, 16, 32)
    assert net(torch.randn(2, 1, 4, 12), _t(2)).shape == (2, 1, 4, 12)


SMALL = ["dataset=digits", "dataset.image_size=8", "model=dit", "model.hidden_size=32",
         "model.depth=2", "model.num_heads=2", "logger=none", "trainer.max_steps=2",
         "callbacks.preview=null"]
RUNS = {"ddpm": ["train", *SMALL, "model.patch_size=4"],
        "flow": ["train", *SMALL, "objective=flow", "conditional=true"],
        "text": ["train", *SMALL, "text_encoder=small", "text_encoder.width=16",
                 "text_encoder.depth=1"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return train_runs(tmp_path_factory.mktemp("dit"), RUNS)


@pytest.mark.parametrize("name, args", [
    ("ddpm", ["sampler=ddim", "steps=2", "n=4"]),
    ("flow", ["sampler=euler", "steps=2", "n=4", "guidance=2", "classes=0-1"]),
    ("text", ["sampler=ddim", "steps=2", "n=4", "guidance=2", "prompt=a handwritten digit one"]),
])
def test_a_dit_trains_and_samples_through_the_cli(runs, monkeypatch, capsys, name, args):
    code, lines = run_in_process(["sample", f"ckpt={runs[name]}", *args], runs["cwd"],
                                 monkeypatch, capsys)
    assert code in (0, None), lines
    folder = lines[-1].split(" to ", 1)[1].split(" : ")[0].strip()
    meta = json.loads((runs["cwd"] / folder / "meta.json").read_text())
    assert meta["n"] == 4
    state = torch.load(runs[name], map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.endswith("blocks.1.adaLN_modulation.1.weight") for k in state)  # a DiT
    assert any(".cross_attn." in k for k in state) == (name == "text")
