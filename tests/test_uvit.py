"""The U-ViT network (Bao et al. 2023): shapes, the in/mid/out layout with its long skips, a zero
output at init that the first step moves, the U-ViT-S parameter count, text cross-attention and
its all-masked case, gradient checkpointing, the null label, padding, and a train + sample run
through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_bad_inputs import run_in_process
from test_conditional_cli import train_runs

from diffcli.cli import CONF_DIR
from diffcli.nets.memory import footprint
from diffcli.nets.uvit import UViT

TINY = {"hidden_size": 32, "depth": 3, "num_heads": 2}
# U-ViT-S/2 on CIFAR-10 (32x32x3, unconditional): 44M parameters in the paper
PRESETS = {"uvit_s": ((3, 32, 32), 44)}


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
    net = UViT(data_shape=(3, 8, 12), patch_size=patch, learn_sigma=kind == "learn_sigma",
               **kwargs, **TINY)
    y = torch.tensor([0, 5]) if kind == "conditional" else None
    out = _randomise(net)(torch.randn(2, 3, 8, 12), _t(2), y)
    assert out.shape == (2, 6 if kind == "learn_sigma" else 3, 8, 12)
    assert (net.in_channels, net.out_channels, net.image_size, net.patch_size) == (
        3, out.shape[1], 8, patch)
    assert net.num_extra_tokens == (2 if kind == "conditional" else 1)


def test_sizes_that_are_not_a_multiple_of_the_patch_are_padded_and_cropped():
    net = _randomise(UViT(data_shape=(1, 7, 7), patch_size=4, **TINY))
    assert net(torch.randn(2, 1, 7, 7), _t(2)).shape == (2, 1, 7, 7)
    with pytest.raises(ValueError, match="patch_size=4 needs height and width divisible by 4"):
        net.check_image_size(7, 7)
    net.check_image_size(8, 12)


def test_depth_splits_into_in_mid_and_out_blocks_with_concat_linear_skips():
    net = UViT(data_shape=(1, 8, 8), hidden_size=32, depth=7, num_heads=2)
    assert (len(net.in_blocks), len(net.out_blocks)) == (3, 3)
    assert all(b.skip_linear is None for b in [*net.in_blocks, net.mid_block])
    assert all(tuple(b.skip_linear.weight.shape) == (32, 64) for b in net.out_blocks)
    assert len(UViT(data_shape=(1, 8, 8), hidden_size=32, depth=1, num_heads=2).blocks()) == 1


def test_each_out_block_takes_the_matching_in_blocks_output():
    """Out-block i gets in-block (n - 1 - i)'s output as its skip: shallow pairs with deep."""
    net = _randomise(UViT(data_shape=(1, 8, 8), hidden_size=32, depth=7, num_heads=2))
    seen_in, seen_skip = [], []
    for block in net.in_blocks:
        block.register_forward_hook(lambda m, args, out: seen_in.append(out))
    for block in net.out_blocks:
        block.register_forward_hook(lambda m, args, out: seen_skip.append(args[1]))
    net(torch.randn(2, 1, 8, 8), _t(2))
    assert len(seen_skip) == 3
    for i, skip in enumerate(seen_skip):
        assert skip is seen_in[2 - i]


def test_at_init_the_output_is_zero_and_the_first_step_moves_it():
    net = UViT(data_shape=(3, 8, 8), num_classes=4, context_dim=16, **TINY)
    x, t, y = torch.randn(2, 3, 8, 8), _t(2), torch.tensor([1, 4])
    context = torch.randn(2, 5, 16)
    assert torch.equal(net(x, t, y, context=context), torch.zeros(2, 3, 8, 8))
    assert torch.equal(net.decoder_pred.weight, torch.zeros_like(net.decoder_pred.weight))
    assert net.final_conv.weight.abs().sum() > 0  # random: gradients reach decoder_pred
    assert "pos_embed" in dict(net.named_buffers())
    assert not any(name == "pos_embed" for name, _ in net.named_parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    (net(x, t, y, context=context) - torch.randn(2, 3, 8, 8)).square().mean().backward()
    assert net.decoder_pred.weight.grad.abs().sum() > 0
    opt.step()
    assert net(x, t, y, context=context).abs().sum() > 0


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_parameter_count_matches_the_paper(name: str):
    node = {k: v for k, v in OmegaConf.to_container(OmegaConf.load(
        CONF_DIR / "model" / f"{name}.yaml")).items() if k != "_target_"}
    shape, millions = PRESETS[name]
    with torch.device("meta"):
        net = UViT(data_shape=shape, **node)
    count = sum(p.numel() for p in net.parameters())
    want = millions * 1e6
    # 44,537,952: the time token's MLP (394,240) and qkv biases (19,968) are ours
    assert abs(count - want) <= 0.015 * want, f"{name}: {count:,} parameters, paper {want:,.0f}"


def test_an_all_masked_context_is_no_context_and_a_context_matters():
    net = _randomise(UViT(data_shape=(2, 8, 8), context_dim=12, **TINY))
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
    net = UViT(data_shape=(2, 8, 8), context_dim=12, **TINY)
    with pytest.raises(ValueError, match=match) as info:
        net(torch.randn(2, 2, 8, 8), _t(2), **bad)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="context_dim=None"):
        UViT(data_shape=(2, 8, 8), **TINY)(torch.randn(2, 2, 8, 8), _t(2),
                                           context=torch.randn(2, 4, 12))


@pytest.mark.parametrize("kwargs, match", [
    ({"data_shape": (2,), **TINY}, "takes images"),
    ({"data_shape": (1, 8, 8), "hidden_size": 32, "depth": 4, "num_heads": 2}, "depth must be odd"),
    ({"data_shape": (1, 8, 8), "hidden_size": 32, "depth": 3, "num_heads": 3},
     "num_heads=3 must be a positive divisor"),
    ({"data_shape": (1, 8, 8), "hidden_size": 30, "depth": 3, "num_heads": 2}, "multiple of 4"),
    ({"data_shape": (1, 8, 8), "learn_sigma": True, "out_channels": 3, **TINY}, "even out_chan"),
])
def test_bad_sizes_are_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        UViT(**kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, H, W\)"):
        UViT(data_shape=(1, 8, 8), **TINY)(torch.randn(2, 3, 8, 8), _t(2))


def test_grad_checkpointing_gives_the_same_outputs_and_gradients():
    kwargs = {"data_shape": (2, 8, 8), "num_classes": 3, "context_dim": 8, **TINY}
    plain = _randomise(UViT(**kwargs))
    ckpt = UViT(**kwargs, grad_checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(2, 2, 8, 8), _t(2), torch.tensor([0, 2])
    context, mask = torch.randn(2, 3, 8), torch.tensor([[True, True, False], [False] * 3])
    outs, grads = [], []
    for net in (plain, ckpt):
        net.train()
        net.zero_grad()
        out = net(x, t, y, context=context, context_mask=mask)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    assert torch.equal(outs[0], outs[1])
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-5, atol=1e-7), name


def test_activation_checkpointing_lowers_the_traced_training_bytes_a_sample():
    """The long skips keep the in-blocks' outputs alive either way; the rest is recomputed."""
    def build(checkpointing: bool) -> UViT:
        return UViT(data_shape=(4, 16, 16), patch_size=2, hidden_size=128, depth=7,
                    num_heads=4, grad_checkpointing=checkpointing)

    plain = footprint(lambda: build(False), (4, 16, 16), grad=True)
    ckpt = footprint(lambda: build(True), (4, 16, 16), grad=True)
    assert plain.params == ckpt.params
    assert 0 < ckpt.per_sample < 0.7 * plain.per_sample


def test_no_label_is_the_null_label_and_time_matters():
    net = _randomise(UViT(data_shape=(1, 8, 8), num_classes=3, **TINY))
    x, t = torch.randn(2, 1, 8, 8), _t(2)
    assert torch.equal(net(x, t), net(x, t, torch.tensor([3, 3])))
    assert not torch.equal(net(x, t), net(x, t, torch.tensor([0, 1])))
    assert not torch.allclose(net(x, t), net(x, t.flip(0)))
    with pytest.raises(ValueError, match="num_classes=None"):
        UViT(data_shape=(1, 8, 8), **TINY)(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer class labels"):
        net(x, t, torch.tensor([0.0, 1.0]))


def test_non_square_position_grid_is_computed_per_size():
    net = _randomise(UViT(data_shape=(1, 8, 8), **TINY))
    assert net.pos_embed.shape == (1, 16, 32)
    assert net(torch.randn(2, 1, 4, 12), _t(2)).shape == (2, 1, 4, 12)


def test_onnx_export_matches_torch(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from diffcli.interop.onnx import export_onnx, onnx_predict

    net = _randomise(UViT(data_shape=(1, 8, 8), num_classes=3, **TINY))
    path = export_onnx(net, (1, 8, 8), tmp_path / "uvit.onnx", num_classes=3)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0.0, 10.0, 999.0]), torch.tensor([0, 2, 3])
    with torch.no_grad():
        want = net.eval()(x, t, y)
    assert torch.allclose(torch.as_tensor(onnx_predict(path, x, t, y)), want, atol=1e-4)


SMALL = ["dataset=digits", "dataset.image_size=8", "model=uvit", "model.hidden_size=32",
         "model.depth=3", "model.num_heads=2", "logger=none", "trainer.max_steps=2",
         "callbacks.preview=null"]
RUNS = {"ddpm": ["train", *SMALL, "model.patch_size=4"],
        "flow": ["train", *SMALL, "objective=flow", "conditional=true"],
        "text": ["train", *SMALL, "text_encoder=small", "text_encoder.width=16",
                 "text_encoder.depth=1"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return train_runs(tmp_path_factory.mktemp("uvit"), RUNS)


@pytest.mark.parametrize("name, args", [
    ("ddpm", ["sampler=ddim", "steps=2", "n=4"]),
    ("flow", ["sampler=euler", "steps=2", "n=4", "guidance=2", "classes=0-1"]),
    ("text", ["sampler=ddim", "steps=2", "n=4", "guidance=2", "prompt=a handwritten digit one"]),
])
def test_a_uvit_trains_and_samples_through_the_cli(runs, monkeypatch, capsys, name, args):
    code, lines = run_in_process(["sample", f"ckpt={runs[name]}", *args], runs["cwd"],
                                 monkeypatch, capsys)
    assert code in (0, None), lines
    folder = lines[-1].split(" to ", 1)[1].split(" : ")[0].strip()
    meta = json.loads((runs["cwd"] / folder / "meta.json").read_text())
    assert meta["n"] == 4
    state = torch.load(runs[name], map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.endswith("out_blocks.0.skip_linear.weight") for k in state)  # a U-ViT
    assert any(".cross_attn." in k for k in state) == (name == "text")
    assert any(k.endswith("label_embed.weight") for k in state) == (name == "flow")


def test_a_uvit_run_exports_as_safetensors_and_not_to_diffusers(runs, monkeypatch, capsys):
    import diffcli

    ckpt, cwd = runs["ddpm"], runs["cwd"]
    folder = cwd / "exported"
    code, lines = run_in_process(["export", f"ckpt={ckpt}", "format=safetensors",
                                  f"out={folder}"], cwd, monkeypatch, capsys)
    assert code in (0, None), lines
    ours = diffcli.load(ckpt).opened.network.state_dict()
    back = diffcli.load(folder / "model.safetensors").opened.network.state_dict()
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k]) for k in ours)
    code, lines = run_in_process(["export", f"ckpt={ckpt}", "format=diffusers",
                                  f"out={cwd / 'diffusers'}"], cwd, monkeypatch, capsys)
    assert code not in (0, None)
    assert lines[-1] == ("error: format=diffusers: model=UViT: diffusers has no U-ViT model; "
                         "export format=safetensors")
