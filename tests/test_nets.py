"""Shape, initialisation and gradient checks for diffcli.nets."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from diffcli.nets import MLP, UNet, count_parameters, timestep_embedding
from diffcli.nets.layers import (
    AttentionBlock,
    Downsample,
    EmbedSequential,
    ResBlock,
    TimeEmbedding,
    Upsample,
    norm,
)


def _small_unet(**kwargs: object) -> UNet:
    defaults: dict[str, object] = {"base_channels": 8, "channel_mults": (1, 2)}
    defaults.update(kwargs)
    return UNet(**defaults)  # type: ignore[arg-type]


def _randomise_(module: nn.Module) -> None:
    """Give zero-initialised parameters random values so every gradient is non-zero."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize(
    ("shape", "mults"),
    [
        ((2, 1, 16, 16), (1, 2)),
        ((2, 3, 32, 32), (1, 2)),
        ((2, 1, 28, 28), (1, 2)),
        ((2, 1, 28, 28), (1, 2, 2)),
        ((2, 3, 32, 32), (1, 2, 2, 2)),
    ],
)
def test_unet_output_shape(shape: tuple[int, int, int, int], mults: tuple[int, ...]) -> None:
    net = _small_unet(in_channels=shape[1], channel_mults=mults)
    t = torch.tensor([0.0, 999.0])
    assert net(torch.randn(shape), t).shape == shape


def test_unet_out_channels_and_long_timesteps() -> None:
    net = _small_unet(in_channels=3, out_channels=6, num_res_blocks=2)
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([3, 500]))
    assert out.shape == (2, 6, 16, 16)


def test_unet_zero_output_at_init() -> None:
    net = _small_unet()
    out = net(torch.randn(2, 1, 16, 16), torch.tensor([1.0, 10.0]))
    assert torch.count_nonzero(out) == 0


def test_unet_pads_sizes_its_levels_do_not_halve() -> None:
    """28x28 through 4 levels (multiples of 8): the input is padded to 32x32 and the output
    cropped back; sizes that already fit are not padded at all (the same function as before).
    The export check still names the multiple."""
    net = _small_unet(channel_mults=(1, 2, 2, 2))
    _randomise_(net)
    with pytest.raises(ValueError, match="divisible by 8"):
        net.check_image_size(28)
    net.check_image_size(32, 16)
    x, t = torch.randn(2, 1, 28, 28), torch.tensor([3.0, 500.0])
    out = net(x, t)
    assert out.shape == x.shape and torch.isfinite(out).all()
    padded = net.pad(x)
    assert padded.shape[-2:] == (32, 32)
    torch.testing.assert_close(padded[..., :28, :28], x)  # the data itself is untouched
    torch.testing.assert_close(out, net(padded, t)[..., :28, :28])
    fits = torch.randn(2, 1, 32, 16)
    assert net.pad(fits) is fits
    tiny = torch.randn(1, 1, 3, 5)  # smaller than the padding: replicated, not reflected
    assert net(tiny, t[:1]).shape == tiny.shape


def test_unet_rejects_wrong_channels() -> None:
    with pytest.raises(ValueError, match="expects input"):
        _small_unet(in_channels=3)(torch.randn(1, 1, 16, 16), torch.zeros(1))


@pytest.mark.parametrize("num_res_blocks", [1, 2])
def test_unet_gradients_reach_every_parameter(num_res_blocks: int) -> None:
    net = _small_unet(num_res_blocks=num_res_blocks, dropout=0.1)
    _randomise_(net)
    net(torch.randn(2, 1, 16, 16), torch.tensor([5.0, 700.0])).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) > 0, name


def test_unet_output_depends_on_t() -> None:
    net = _small_unet()
    _randomise_(net)
    x = torch.randn(1, 1, 16, 16).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([10.0, 900.0]))
    assert not torch.allclose(out[0], out[1])


def test_mlp_shape_and_gradients() -> None:
    net = MLP(dim=2, hidden=32, depth=3, emb_dim=16)
    x = torch.randn(5, 2)
    out = net(x, torch.randint(0, 1000, (5,)).float())
    assert out.shape == (5, 2)
    out.square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.count_nonzero(p.grad) > 0, name


def test_mlp_depth_one_and_invalid_depth() -> None:
    assert MLP(dim=3, hidden=8, depth=1)(torch.randn(4, 3), torch.zeros(4)).shape == (4, 3)
    with pytest.raises(ValueError):
        MLP(depth=0)


@pytest.mark.parametrize("dim", [1, 7, 8, 64])
def test_timestep_embedding_shape(dim: int) -> None:
    emb = timestep_embedding(torch.arange(3), dim)
    assert emb.shape == (3, dim)
    assert emb.dtype == torch.float32
    if dim % 2:
        assert torch.all(emb[:, -1] == 0)


def test_timestep_embedding_distinguishes_timesteps() -> None:
    t = torch.tensor([0.0, 1.0, 2.0, 500.0, 998.0, 999.0, 0.5])
    emb = timestep_embedding(t, 33)
    dists = torch.cdist(emb, emb)
    off_diag = dists[~torch.eye(len(t), dtype=torch.bool)]
    assert off_diag.min() > 1e-3
    assert torch.allclose(emb[0, :16], torch.ones(16))  # cos(0) = 1


def test_time_embedding_module() -> None:
    module = TimeEmbedding(16, 40)
    assert module(torch.tensor([1, 2, 3])).shape == (3, 40)


def test_norm_picks_dividing_group_count() -> None:
    assert norm(12, 32).num_groups == 12
    assert norm(48, 32).num_groups == 24
    assert norm(64, 32).num_groups == 32
    assert norm(3, 8).num_groups == 3
    assert norm(7, 4).num_groups == 1


def test_resblock_and_embed_sequential() -> None:
    block = EmbedSequential(ResBlock(4, 6, emb_dim=10, groups=32), nn.Identity())
    out = block(torch.randn(2, 4, 5, 5), torch.randn(2, 10))
    assert out.shape == (2, 6, 5, 5)


def test_count_parameters() -> None:
    assert count_parameters(nn.Linear(3, 4)) == 16


# --- self-attention and ADM options -------------------------------------------------------

DDPM_CIFAR10 = {
    "in_channels": 3,
    "base_channels": 128,
    "channel_mults": (1, 2, 2, 2),
    "num_res_blocks": 2,
    "attention_resolutions": (16,),
    "image_size": 32,
    "dropout": 0.1,
    "groups": 32,
    "num_heads": 1,
}

ALL_ON: dict[str, object] = {
    "base_channels": 8,
    "channel_mults": (1, 2, 2),
    "num_res_blocks": 2,
    "attention_resolutions": (8, 4),
    "image_size": 16,
    "num_heads": 2,
    "resblock_updown": True,
    "use_scale_shift_norm": True,
    "num_classes": 3,
    "dropout": 0.1,
}


def _attention_blocks(net: nn.Module) -> list[AttentionBlock]:
    return [m for m in net.modules() if isinstance(m, AttentionBlock)]


def test_ddpm_cifar10_parameter_count() -> None:
    """Ho et al. 2020, App. B: the CIFAR-10 model has 35.7M parameters."""
    n = count_parameters(UNet(**DDPM_CIFAR10))  # type: ignore[arg-type]
    assert 35_600_000 <= n <= 35_800_000, n
    assert n == 35_746_307


def _naive_attention(block: AttentionBlock, x: Tensor) -> Tensor:
    """Reference multi-head self-attention with einsum / softmax, same weight layout."""
    b, c, height, width = x.shape
    heads, d = block.num_heads, c // block.num_heads
    h = block.norm(x).reshape(b, c, height * width)  # (B, C, L)
    w = block.qkv.weight.reshape(3 * c, c)
    qkv = torch.einsum("oc,bcl->bol", w, h) + block.qkv.bias[None, :, None]  # (B, 3C, L)
    q, k, v = (z.reshape(b, heads, d, height * width) for z in qkv.split(c, dim=1))
    logits = torch.einsum("bhdi,bhdj->bhij", q, k) / d**0.5  # (B, heads, L, L)
    a = torch.einsum("bhij,bhdj->bhdi", logits.softmax(dim=-1), v).reshape(b, c, -1)
    out = torch.einsum("oc,bcl->bol", block.proj.weight.reshape(c, c), a)
    out = out + block.proj.bias[None, :, None]
    return x + out.reshape(b, c, height, width)


@pytest.mark.parametrize("num_heads", [1, 4])
def test_attention_block_matches_naive_reference(num_heads: int) -> None:
    torch.manual_seed(0)
    block = AttentionBlock(16, num_heads=num_heads, groups=4)
    _randomise_(block)
    ref = AttentionBlock(16, num_heads=num_heads, groups=4)
    ref.load_state_dict(block.state_dict())  # copied weights
    x = torch.randn(2, 16, 5, 6)
    assert torch.allclose(block(x), _naive_attention(ref, x), atol=1e-5)


def test_attention_block_heads_and_errors() -> None:
    assert AttentionBlock(32, num_heads=2, num_head_channels=8).num_heads == 4
    with pytest.raises(ValueError, match="num_head_channels"):
        AttentionBlock(32, num_head_channels=12)
    with pytest.raises(ValueError, match="num_heads"):
        AttentionBlock(32, num_heads=3)


def test_attention_block_is_identity_at_init() -> None:
    x = torch.randn(2, 8, 4, 4)
    assert torch.equal(AttentionBlock(8, num_heads=2)(x), x)


def test_attention_block_autocast_bf16_channels_last() -> None:
    block = AttentionBlock(8, num_heads=2)
    _randomise_(block)
    x = torch.randn(2, 8, 4, 4).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(x)
    assert out.shape == x.shape
    assert torch.allclose(out.float(), block(x), atol=0.1)


@pytest.mark.parametrize(
    ("kwargs", "levels"),
    [
        ({"attention_resolutions": (16,), "image_size": 32}, {1}),
        ({"attention_resolutions": (32, 8), "image_size": 32}, {0, 2}),
        ({"attention_resolutions": (14,), "image_size": 28}, {1}),
        ({"attention_levels": (1,)}, {1}),
        ({"attention_levels": (1,), "image_size": 28}, {1}),
    ],
)
def test_unet_attention_placement(kwargs: dict[str, object], levels: set[int]) -> None:
    net = _small_unet(channel_mults=(1, 2, 2), num_res_blocks=2, **kwargs)
    assert net.attention_levels == levels
    # encoder and decoder blocks per attention level, plus the middle block
    assert len(_attention_blocks(net)) == len(levels) * (2 + 3) + 1
    assert len(_attention_blocks(net.mid_block)) == 1
    size = int(kwargs.get("image_size", 16))  # type: ignore[call-overload]
    x = torch.randn(2, 1, size, size)
    assert net(x, torch.tensor([1.0, 500.0])).shape == x.shape


def test_unet_decoder_attention_precedes_upsample() -> None:
    net = _small_unet(attention_levels=(1,), num_res_blocks=1)
    last_of_level1 = net.up_blocks[1]
    kinds = [type(m).__name__ for m in last_of_level1]
    assert kinds == ["ResBlock", "AttentionBlock", "Upsample"]


def test_unet_mid_attention_override() -> None:
    assert len(_attention_blocks(_small_unet(mid_attention=True))) == 1
    net = _small_unet(attention_levels=(0,), mid_attention=False)
    assert len(_attention_blocks(net.mid_block)) == 0
    assert len(_attention_blocks(_small_unet())) == 0


def test_unet_attention_resolutions_need_image_size() -> None:
    with pytest.raises(ValueError, match="needs image_size"):
        _small_unet(attention_resolutions=(8,))


def test_unet_attention_resolution_must_exist() -> None:
    with pytest.raises(ValueError, match=r"not among this net's resolutions \[28, 14\]"):
        _small_unet(attention_resolutions=(16,), image_size=28)
    with pytest.raises(ValueError, match="out of range"):
        _small_unet(attention_levels=(2,))
    with pytest.raises(ValueError, match="not both"):
        _small_unet(attention_levels=(1,), attention_resolutions=(8,), image_size=16)


@pytest.mark.parametrize(
    ("up", "down", "size"), [(False, False, 6), (True, False, 12), (False, True, 3)]
)
@pytest.mark.parametrize("scale_shift", [False, True])
def test_resblock_resampling_and_scale_shift(
    up: bool, down: bool, size: int, scale_shift: bool
) -> None:
    block = ResBlock(4, 6, 10, groups=2, up=up, down=down, use_scale_shift_norm=scale_shift)
    assert block.emb_proj[1].out_features == (12 if scale_shift else 6)
    out = block(torch.randn(2, 4, 6, 6), torch.randn(2, 10))
    assert out.shape == (2, 6, size, size)


def test_resblock_resamples_skip_without_conv() -> None:
    """At init the residual branch is zero, so the output is the resampled skip."""
    x = torch.randn(1, 4, 4, 4)
    emb = torch.randn(1, 10)
    down = ResBlock(4, 4, 10, down=True)(x, emb)
    assert torch.allclose(down, torch.nn.functional.avg_pool2d(x, 2))
    up = ResBlock(4, 4, 10, up=True)(x, emb)
    assert torch.equal(up, x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3))
    with pytest.raises(ValueError):
        ResBlock(4, 4, 10, up=True, down=True)


def test_resblock_scale_shift_formula() -> None:
    torch.manual_seed(0)
    block = ResBlock(4, 4, 10, groups=2, use_scale_shift_norm=True)
    _randomise_(block)
    x, emb = torch.randn(2, 4, 5, 5), torch.randn(2, 10)
    h = block.in_layers(x)
    scale, shift = block.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
    h = block.out_layers[0](h) * (1 + scale) + shift
    expected = x + block.out_layers[1:](h)
    assert torch.allclose(block(x, emb), expected, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resblock_updown": True},
        {"use_scale_shift_norm": True},
        {"resblock_updown": True, "use_scale_shift_norm": True, "attention_levels": (0, 1)},
    ],
)
def test_unet_adm_options_shapes(kwargs: dict[str, object]) -> None:
    net = _small_unet(in_channels=3, out_channels=6, channel_mults=(1, 2, 2), **kwargs)
    out = net(torch.randn(2, 3, 16, 16), torch.tensor([3, 500]))
    assert out.shape == (2, 6, 16, 16)
    assert torch.count_nonzero(out) == 0  # zero-initialised output conv
    if kwargs.get("resblock_updown"):
        assert not any(isinstance(m, (Downsample, Upsample)) for m in net.modules())


def test_unet_channels_last_matches_contiguous() -> None:
    torch.manual_seed(0)
    net = UNet(**{**ALL_ON, "in_channels": 3}).eval()  # type: ignore[arg-type]
    _randomise_(net)
    x = torch.randn(2, 3, 16, 16)
    t, y = torch.tensor([3.0, 700.0]), torch.tensor([0, 2])
    with torch.no_grad():
        ref = net(x, t, y)
        out = net(x.to(memory_format=torch.channels_last), t, y)
        net_cl = net.to(memory_format=torch.channels_last)
        out_cl = net_cl(x.to(memory_format=torch.channels_last), t, y)
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(out_cl, ref, atol=1e-5)


def test_unet_autocast_bf16() -> None:
    net = UNet(**ALL_ON).eval()  # type: ignore[arg-type]
    x = torch.randn(2, 1, 16, 16).to(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, torch.tensor([3.0, 700.0]), torch.tensor([0, 1]))
    assert out.shape == x.shape


def test_unet_class_conditioning() -> None:
    torch.manual_seed(0)
    net = _small_unet(num_classes=3, attention_levels=(1,))
    _randomise_(net)
    x = torch.randn(1, 1, 16, 16).expand(2, -1, -1, -1)
    t = torch.tensor([100.0, 100.0])
    out = net(x, t, torch.tensor([0, 1]))
    assert not torch.allclose(out[0], out[1])
    assert torch.allclose(net(x, t), net(x, t, torch.tensor([3, 3])))  # None = null label
    assert net.label_embed is not None and net.label_embed.num_embeddings == 4
    with pytest.raises(ValueError, match="integer class labels"):
        net(x, t, torch.tensor([0.0, 1.0]))


def test_unconditional_unet_rejects_labels() -> None:
    net = _small_unet()
    assert net.label_embed is None
    with pytest.raises(ValueError, match="num_classes=None"):
        net(torch.randn(2, 1, 16, 16), torch.zeros(2), torch.tensor([0, 1]))


def test_unet_gradients_reach_every_parameter_all_options() -> None:
    torch.manual_seed(0)
    net = UNet(**ALL_ON)  # type: ignore[arg-type]
    _randomise_(net)
    out = net(torch.randn(3, 1, 16, 16), torch.tensor([5.0, 300.0, 700.0]), torch.tensor([0, 1, 2]))
    out.square().mean().backward()
    assert net.label_embed is not None
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        if name == "label_embed.weight":  # row 3 (null label) is unused by these labels
            assert torch.count_nonzero(p.grad[:3].abs().sum(dim=1)) == 3, name
        else:
            assert torch.count_nonzero(p.grad) > 0, name


def test_unet_defaults_unchanged() -> None:
    """The attention-free defaults (model=unet) keep their parameter layout."""
    net = UNet()
    assert not _attention_blocks(net) and net.label_embed is None
    assert [type(m).__name__ for m in net.mid_block] == ["ResBlock", "ResBlock"]
    assert count_parameters(net) == 634_273


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_unet_grad_checkpointing_gives_the_same_outputs_and_gradients(dropout: float) -> None:
    """Checkpointed blocks (recomputed in backward, non-reentrant: dropout replays the same
    random state) give the plain net's outputs and gradients, with the same state_dict keys;
    attention, a spatial transformer and class labels included."""
    kwargs = {"data_shape": (2, 16, 16), "base_channels": 8, "channel_mults": (1, 2),
              "num_res_blocks": 1, "attention_levels": (1,), "transformer_levels": (1,),
              "context_dim": 8, "num_classes": 3, "use_scale_shift_norm": True,
              "dropout": dropout}
    torch.manual_seed(0)
    plain = UNet(**kwargs)  # type: ignore[arg-type]
    _randomise_(plain)
    ckpt = UNet(**kwargs, grad_checkpointing=True)  # type: ignore[arg-type]
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(2, 2, 16, 16), torch.tensor([3.0, 600.0]), torch.tensor([0, 2])
    context = torch.randn(2, 3, 8)
    outs, grads = [], []
    for net in (plain, ckpt):
        net.train()
        net.zero_grad()
        torch.manual_seed(1)
        out = net(x, t, y, context=context)
        out.square().mean().backward()
        outs.append(out.detach())
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    assert torch.allclose(outs[0], outs[1], rtol=1e-6, atol=1e-7)
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], rtol=1e-5, atol=1e-7), name
    ckpt.eval()  # not training: no recomputation, the plain forward
    with torch.no_grad():
        assert torch.equal(ckpt(x, t, y, context=context), plain.eval()(x, t, y, context=context))
