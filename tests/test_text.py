"""Cross-attention text conditioning (Rombach et al. 2022, Sec. 3.3): blocks, U-Net, encoders."""

from __future__ import annotations

import json
import string
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from diffcli.nets import UNet
from diffcli.nets.attention import CrossAttention, SpatialTransformer, TransformerBlock
from diffcli.nets.text import (
    BOS,
    PAD,
    CLIPTextEncoder,
    SmallTextEncoder,
    TextConditionedNet,
    WordTokenizer,
)

WIDTH = 32


def _perturb_(module: nn.Module, scale: float = 0.1) -> None:
    """Add small noise to every parameter so zero-initialised outputs become non-zero."""
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _unet(**kwargs: object) -> UNet:
    args: dict[str, object] = {
        "base_channels": 16, "channel_mults": (1, 2), "groups": 4, "context_dim": WIDTH,
        "transformer_levels": (1,),
    }
    args.update(kwargs)
    return UNet(**args)  # type: ignore[arg-type]


def _text_net(seed: int = 0) -> TextConditionedNet:
    torch.manual_seed(seed)
    encoder = SmallTextEncoder(vocab_size=64, max_length=8, width=WIDTH, depth=1, heads=4)
    return TextConditionedNet(_unet(), encoder)


# --- attention blocks ---------------------------------------------------------------------


def test_cross_attention_all_false_mask_row_is_zero() -> None:
    torch.manual_seed(0)
    attn = CrossAttention(16, WIDTH, heads=2, head_dim=8)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 3, WIDTH)
    mask = torch.tensor([[True, False, True], [False, False, False]])
    out = attn(x, ctx, mask)
    assert out.shape == (2, 5, 16)
    assert torch.isfinite(out).all()
    assert torch.count_nonzero(out[1]) == 0
    assert torch.count_nonzero(out[0]) > 0
    # Masked keys do not matter: changing them leaves the output unchanged.
    ctx2 = ctx.clone()
    ctx2[0, 1] += 5.0
    assert torch.allclose(attn(x, ctx2, mask)[0], out[0], atol=1e-6)


def test_cross_attention_rejects_bad_context_and_mask() -> None:
    attn = CrossAttention(16, WIDTH, heads=2, head_dim=8)
    x = torch.randn(1, 4, 16)
    with pytest.raises(ValueError, match="context_dim=7"):
        attn(x, torch.randn(1, 3, 7))
    with pytest.raises(ValueError, match="bool tensor"):
        attn(x, torch.randn(1, 3, WIDTH), torch.ones(1, 3))


def test_spatial_transformer_identity_at_init_and_masked_equals_unconditional() -> None:
    torch.manual_seed(0)
    block = SpatialTransformer(16, WIDTH, num_heads=4, groups=4)
    x, ctx = torch.randn(2, 16, 4, 4), torch.randn(2, 3, WIDTH)
    assert torch.equal(block(x, ctx), x)  # zero-initialised proj_out
    _perturb_(block)
    none_mask = torch.zeros(2, 3, dtype=torch.bool)
    assert torch.allclose(block(x, ctx, none_mask), block(x), atol=1e-6)
    assert not torch.allclose(block(x, ctx), block(x), atol=1e-4)


def test_transformer_block_without_cross_attention_refuses_context() -> None:
    block = TransformerBlock(16, heads=2, head_dim=8, cross_attention=False)
    with pytest.raises(ValueError, match="context=None"):
        block(torch.randn(1, 3, 16), torch.randn(1, 2, 16))


# --- U-Net ----------------------------------------------------------------------------------


def test_unet_with_context_shape_and_unconditional_path() -> None:
    torch.manual_seed(0)
    net = _unet(transformer_resolutions=(8, 4), image_size=8, transformer_levels=None)
    assert net.context_dim == WIDTH and net.transformer_levels == {0, 1}
    _perturb_(net)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 500])
    ctx = torch.randn(2, 5, WIDTH)
    out_none = net(x, t)
    assert out_none.shape == (2, 1, 8, 8)
    masked = net(x, t, context=ctx, context_mask=torch.zeros(2, 5, dtype=torch.bool))
    assert torch.allclose(masked, out_none, atol=1e-6)
    assert not torch.allclose(net(x, t, context=ctx), out_none, atol=1e-4)
    h, _, _ = net.encode(x, t, context=ctx)
    assert h.shape == (2, 32, 4, 4)


def test_unet_block_layout() -> None:
    net = _unet(attention_levels=(1,))
    kinds = [type(m).__name__ for m in net.mid_block]
    assert kinds == ["ResBlock", "AttentionBlock", "SpatialTransformer", "ResBlock"]
    down = [[type(m).__name__ for m in b] for b in net.down_blocks]
    last = ["ResBlock", "AttentionBlock", "SpatialTransformer"]
    assert down == [["ResBlock"], ["Downsample"], last]
    no_mid = _unet(mid_transformer=False)
    assert [type(m).__name__ for m in no_mid.mid_block] == ["ResBlock", "ResBlock"]
    only_mid = _unet(transformer_levels=(), mid_transformer=True)
    assert sum(isinstance(m, SpatialTransformer) for m in only_mid.modules()) == 1


def test_unet_without_context_dim_has_unchanged_state_dict() -> None:
    old_args = {"base_channels": 16, "channel_mults": (1, 2), "groups": 4, "attention_levels": (1,)}
    torch.manual_seed(0)
    old = UNet(**old_args)  # type: ignore[arg-type]
    torch.manual_seed(0)
    new = UNet(**old_args, context_dim=None, transformer_levels=None)  # type: ignore[arg-type]
    assert new.context_dim is None
    old_sd, new_sd = old.state_dict(), new.state_dict()
    assert list(old_sd) == list(new_sd)
    assert all(torch.equal(old_sd[k], new_sd[k]) for k in old_sd)
    with pytest.raises(ValueError, match="context_dim=None"):
        new(torch.randn(1, 1, 8, 8), torch.tensor([1]), context=torch.randn(1, 2, WIDTH))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"context_dim": None}, "need context_dim"),
        ({"transformer_levels": ()}, "no spatial transformer"),
        ({"transformer_levels": (), "mid_transformer": False}, "no spatial transformer"),
        ({"transformer_resolutions": (4,), "transformer_levels": None}, "needs image_size"),
        ({"transformer_levels": (5,)}, "transformer level"),
        ({"transformer_heads": 3}, "transformer_heads"),
    ],
)
def test_unet_bad_transformer_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _unet(**kwargs)


def test_unet_bad_context_shapes() -> None:
    net = _unet()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"context of shape \(2, L, 32\)"):
        net(x, t, context=torch.randn(2, 3, 7))
    with pytest.raises(ValueError, match="context_mask"):
        net(x, t, context=torch.randn(2, 3, WIDTH), context_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="without context"):
        net(x, t, context_mask=torch.ones(2, 3, dtype=torch.bool))


# --- tokenizer and small text encoder -------------------------------------------------------


def test_word_tokenizer_layout_determinism_truncation() -> None:
    tok = WordTokenizer(vocab_size=100, max_length=5)
    ids = tok(["A red Cat!", "", "one two three four five six", "a red cat"])
    assert ids.shape == (4, 5) and ids.dtype == torch.long
    assert ids[:, 0].eq(BOS).all()
    assert ids[0, 4] == PAD and (ids[0, 1:4] >= 2).all()
    assert ids[0, 3] == 2 + zlib.crc32(b"cat") % 98
    assert torch.equal(ids[1], torch.tensor([BOS, PAD, PAD, PAD, PAD]))
    assert (ids[2] != PAD).all()  # truncated to max_length
    assert torch.equal(ids[0], ids[3])  # case and punctuation are ignored
    assert torch.equal(WordTokenizer(100, 5)(["a red cat"]), ids[3:])
    assert int(ids.max()) < 100
    with pytest.raises(ValueError, match="wrap it"):
        tok("a red cat")


def test_small_text_encoder_shapes_and_mask() -> None:
    torch.manual_seed(0)
    enc = SmallTextEncoder(vocab_size=64, max_length=8, width=WIDTH, depth=2, heads=4)
    tokens = enc.tokenize(["a cat", "a big red dog"])
    context, mask = enc(tokens)
    assert context.shape == (2, 8, WIDTH)
    assert torch.equal(mask, tokens != PAD)
    assert mask.sum(1).tolist() == [3, 5]
    assert torch.isfinite(context).all()
    with pytest.raises(ValueError, match="tokenize"):
        enc(torch.randn(2, 8))


# --- text-conditioned net -------------------------------------------------------------------


def test_text_conditioned_net_null_prompt_and_prompts() -> None:
    net = _text_net()
    assert net.conditioning == "text" and net.num_classes is None
    assert net.in_channels == 1 and net.out_channels == 1 and net.learn_sigma is False
    null = net.null_tokens()
    assert torch.equal(null, torch.tensor([BOS] + [PAD] * 7))
    _perturb_(net)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    out_none = net(x, t)
    assert out_none.shape == (2, 1, 8, 8)
    assert torch.equal(out_none, net(x, t, null.expand(2, -1)))
    a = net(x, t, net.tokenize(["a red cat", "a red cat"]))
    b = net(x, t, net.tokenize(["a blue dog", "a blue dog"]))
    assert not torch.allclose(a, b, atol=1e-4)


def test_text_conditioned_net_gradients_reach_small_encoder() -> None:
    net = _text_net()
    _perturb_(net)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 700])
    net(x, t, net.tokenize(["a red cat", "two dogs"])).square().mean().backward()
    grads = [p.grad for p in net.text_encoder.parameters()]
    assert all(g is not None for g in grads)
    assert net.text_encoder.token_embed.weight.grad.abs().sum() > 0


def test_text_conditioned_net_width_mismatch() -> None:
    enc = SmallTextEncoder(vocab_size=64, max_length=8, width=16, depth=1, heads=4)
    with pytest.raises(ValueError, match="context_dim=16"):
        TextConditionedNet(_unet(), enc)


# --- CLIP text encoder ----------------------------------------------------------------------


def _save_tiny_clip(model_dir: Path, tok_dir: Path) -> None:
    """A random 1-layer CLIP text model and a 60-token BPE tokenizer, saved offline."""
    transformers = pytest.importorskip("transformers")
    letters = list(string.ascii_lowercase)
    vocab = ["<|startoftext|>", "<|endoftext|>", *letters, *(c + "</w>" for c in letters),
             "ca", "cat</w>", "do", "dog</w>"]
    tok_dir.mkdir(parents=True, exist_ok=True)
    (tok_dir / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(vocab)}))
    (tok_dir / "merges.txt").write_text("#version: 0.2\nc a\nca t</w>\nd o\ndo g</w>\n")
    tokenizer = transformers.CLIPTokenizer(str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"))
    config = transformers.CLIPTextConfig(
        hidden_size=WIDTH, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
        vocab_size=len(vocab), max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    )
    transformers.CLIPTextModel(config).save_pretrained(str(model_dir))
    tokenizer.save_pretrained(str(tok_dir))


def test_clip_text_encoder_loads_offline(tmp_path: Path) -> None:
    torch.manual_seed(0)
    _save_tiny_clip(tmp_path, tmp_path)
    enc = CLIPTextEncoder(str(tmp_path))
    assert enc.width == WIDTH and enc.frozen
    tokens = enc.tokenize(["a cat", "dog"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    context, mask = enc(tokens)
    assert context.shape == (2, 77, WIDTH) and mask.shape == (2, 77) and mask.all()
    assert not enc.state_dict() and not list(enc.parameters())
    net = TextConditionedNet(_unet(), enc)
    assert all(k.startswith("unet.") for k in net.state_dict())
    assert net(torch.randn(2, 1, 8, 8), torch.tensor([1, 2]), tokens).shape == (2, 1, 8, 8)


def test_clip_text_encoder_diffusers_layout(tmp_path: Path) -> None:
    _save_tiny_clip(tmp_path / "text_encoder", tmp_path / "tokenizer")
    enc = CLIPTextEncoder(str(tmp_path), max_length=8)
    assert enc.tokenize([""]).shape == (1, 8)


def test_clip_text_encoder_bad_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="is not a folder with a CLIP text model"):
        CLIPTextEncoder(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ValueError, match="openai/clip-vit-base-patch32"):
        CLIPTextEncoder(str(tmp_path))
