"""Checks for the latent-diffusion autoencoders, quantizer, GAN helpers and LPIPS."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from diffcli.nets.autoencoder import (
    AutoencoderOutput,
    DiagonalGaussian,
    KLAutoencoder,
    PatchDiscriminator,
    VectorQuantizer,
    VQAutoencoder,
    adaptive_gan_weight,
    check_divisible,
    downsample_factor,
    hinge_d_loss,
    kl_divergence,
    nearest_codes,
    straight_through,
    vq_losses,
)
from diffcli.nets.perceptual import LPIPS, LPIPS_FILES, load_lpips

TINY = {"base_channels": 8, "groups": 4, "z_channels": 3}


def _tiny(cls: type, data_shape: tuple[int, ...], mults: tuple[int, ...],
          **kw: object) -> KLAutoencoder | VQAutoencoder:
    torch.manual_seed(0)
    return cls(data_shape=data_shape, channel_mults=mults, **TINY, **kw)


def _images(shape: tuple[int, ...], batch: int = 2) -> Tensor:
    return torch.rand(batch, *shape) * 2 - 1


# --------------------------------------------------------------------------- shapes

SHAPE_CASES = [
    ((1, 28, 28), (1, 2, 2), 4, (7, 7)),  # f4 with an odd latent
    ((3, 32, 32), (1, 2, 2, 2), 8, (4, 4)),  # f8
    ((3, 16, 8), (1, 2), 2, (8, 4)),  # non-square f2
]


@pytest.mark.parametrize(("cls", "regularizer"), [(KLAutoencoder, "kl"), (VQAutoencoder, "vq")])
@pytest.mark.parametrize(("data_shape", "mults", "f", "latent_hw"), SHAPE_CASES)
def test_encode_decode_shapes(cls: type, regularizer: str, data_shape: tuple[int, ...],
                              mults: tuple[int, ...], f: int, latent_hw: tuple[int, int]) -> None:
    model = _tiny(cls, data_shape, mults)
    x = _images(data_shape)
    assert model.regularizer == regularizer
    assert model.downsample_factor == f == downsample_factor(mults)
    assert model.image_channels == data_shape[0] and model.z_channels == 3
    assert model.latent_shape == (3, *latent_hw)
    z = model.encode_latent(x)
    assert z.shape == (2, *model.latent_shape)
    assert model.decode_latent(z).shape == x.shape
    out = model(x)
    assert isinstance(out, AutoencoderOutput)
    assert out.recon.shape == x.shape and out.reg_loss.ndim == 0
    assert model.last_layer.shape == (data_shape[0], 8, 3, 3)


def test_kl_encode_returns_posterior_and_sampling_controls() -> None:
    model = _tiny(KLAutoencoder, (1, 28, 28), (1, 2, 2))
    x = _images((1, 28, 28))
    posterior = model.encode(x)
    assert isinstance(posterior, DiagonalGaussian)
    assert posterior.mean.shape == posterior.std.shape == (2, 3, 7, 7)
    torch.testing.assert_close(model.encode_latent(x, sample=False), posterior.mean)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(model.encode_latent(x, generator=g1),
                               model.encode_latent(x, generator=g2))
    out = model(x, sample=False)
    assert set(out.stats) == {"kl", "logvar_mean"}
    torch.testing.assert_close(out.reg_loss, posterior.kl().mean())


def test_vq_encode_is_pre_quantization_latent_and_decoder_quantizes() -> None:
    model = _tiny(VQAutoencoder, (3, 16, 16), (1, 2), n_embed=16)
    x = _images((3, 16, 16))
    z = model.encode(x)
    torch.testing.assert_close(model.encode_latent(x), z)
    z_q, _ = model.quantizer.lookup(z)
    torch.testing.assert_close(model.decode_latent(z), model.decoder(model.post_quant_conv(z_q)))
    model.train()
    before = model.quantizer.codebook.clone()
    model.decode_latent(z)  # no codebook update outside forward
    torch.testing.assert_close(model.quantizer.codebook, before)
    out = model(x)
    assert set(out.stats) == {"perplexity", "usage"}


@pytest.mark.parametrize("cls", [KLAutoencoder, VQAutoencoder])
def test_gradients_reach_the_encoder(cls: type) -> None:
    model = _tiny(cls, (1, 8, 8), (1, 2))
    x = _images((1, 8, 8))
    out = model(x)
    ((out.recon - x).abs().mean() + out.reg_loss).backward()
    assert model.encoder.conv_in.weight.grad is not None
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- bad input


def test_check_divisible_message_suggests_next_multiple() -> None:
    check_divisible(28, 28, 4)
    with pytest.raises(ValueError, match=r"image size 30x30 .* factor 4 \(f4\); "
                                         r"use dataset.image_size=32 \(a multiple of 4\)"):
        check_divisible(30, 30, 4)


@pytest.mark.parametrize("cls", [KLAutoencoder, VQAutoencoder])
def test_constructor_rejects_indivisible_size(cls: type) -> None:
    with pytest.raises(ValueError, match=r"image size 28x28 .* \(f8\); use dataset.image_size=32"):
        cls(data_shape=(1, 28, 28), channel_mults=(1, 2, 2, 2), **TINY)


@pytest.mark.parametrize("cls", [KLAutoencoder, VQAutoencoder])
def test_encode_rejects_bad_images(cls: type) -> None:
    model = _tiny(cls, (1, 28, 28), (1, 2, 2))
    with pytest.raises(ValueError, match=r"image size 30x30 .* use dataset.image_size=32"):
        model.encode(_images((1, 30, 30)))
    with pytest.raises(ValueError, match=r"takes images \(B, 1, H, W\)") as info:
        model.encode(_images((3, 28, 28)))
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"decodes latents \(B, 3, h, w\)"):
        model.decode_latent(torch.zeros(1, 4, 7, 7))


# --------------------------------------------------------------------------- KL


def test_kl_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    mean, logvar = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1)
    torch.testing.assert_close(kl_divergence(mean, logvar), expected)
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).kl(), expected)


def test_diagonal_gaussian_clamps_and_samples() -> None:
    g = DiagonalGaussian(torch.zeros(1, 1, 1, 2), torch.tensor([[[[-100.0, 100.0]]]]))
    assert g.logvar.flatten().tolist() == [-30.0, 20.0]
    torch.testing.assert_close(g.std, torch.exp(0.5 * g.logvar))
    s1 = g.sample(torch.Generator().manual_seed(0))
    s2 = g.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(s1, s2)
    assert torch.equal(g.mode(), g.mean)


# --------------------------------------------------------------------------- VQ functions


def test_nearest_codes_by_hand() -> None:
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[0.1, 0.1], [0.9, -0.2], [0.2, 1.5], [0.6, 0.9]])
    # squared distances of the last row: 1.17, 0.97, 1.57 -> code 1
    assert nearest_codes(z, codebook).tolist() == [0, 1, 2, 1]
    assert nearest_codes(z, codebook).dtype == torch.long


def test_straight_through_value_and_gradient() -> None:
    z = torch.randn(2, 3, requires_grad=True)
    z_q = torch.randn(2, 3)
    out = straight_through(z, z_q)
    torch.testing.assert_close(out, z_q)
    out.sum().backward()
    torch.testing.assert_close(z.grad, torch.ones_like(z))


def test_vq_losses_by_hand() -> None:
    z = torch.tensor([[1.0, 2.0]], requires_grad=True)
    e = torch.tensor([[0.0, 0.0]], requires_grad=True)
    codebook_loss, commitment = vq_losses(z, e, beta=0.25)
    assert codebook_loss.item() == pytest.approx(2.5)  # (1 + 4) / 2
    assert commitment.item() == pytest.approx(0.625)  # 0.25 * 2.5
    codebook_loss.backward(retain_graph=True)
    assert z.grad is None
    torch.testing.assert_close(e.grad, torch.tensor([[-1.0, -2.0]]))  # 2 (e - z) / 2
    e.grad = None
    commitment.backward()
    assert e.grad is None
    torch.testing.assert_close(z.grad, torch.tensor([[0.25, 0.5]]))  # 0.25 * 2 (z - e) / 2


# --------------------------------------------------------------------------- VectorQuantizer


def _set_codes(vq: VectorQuantizer, codes: list[list[float]]) -> None:
    with torch.no_grad():
        vq.embed.copy_(torch.tensor(codes))
        if vq.ema:
            vq.embed_sum.copy_(torch.tensor(codes))


def test_ema_update_by_hand() -> None:
    vq = VectorQuantizer(2, 2, decay=0.5, eps=1e-5, restart_dead=False)
    _set_codes(vq, [[0.0, 0.0], [10.0, 10.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).t().reshape(1, 2, 1, 2)  # vectors (1,0), (0,1)
    vq.eval()
    vq(z)
    torch.testing.assert_close(vq.codebook, torch.tensor([[0.0, 0.0], [10.0, 10.0]]))
    vq.train()
    z_q, loss, idx, _ = vq(z)
    assert idx.tolist() == [[[0, 0]]]
    torch.testing.assert_close(z_q, torch.zeros_like(z))  # quantised with the old codes
    assert loss.item() == pytest.approx(0.25 * 0.5)  # commitment only
    cluster = torch.tensor([0.5 * 1 + 0.5 * 2, 0.5 * 1 + 0.5 * 0])  # [1.5, 0.5]
    embed_sum = torch.tensor([[0.5, 0.5], [5.0, 5.0]])  # 0.5 * old + 0.5 * batch sum
    smoothed = (cluster + 1e-5) / (2.0 + 2 * 1e-5) * 2.0
    torch.testing.assert_close(vq.cluster_size, cluster)
    torch.testing.assert_close(vq.embed_sum, embed_sum)
    torch.testing.assert_close(vq.codebook, embed_sum / smoothed[:, None])
    assert vq.codebook[0, 0].item() == pytest.approx(1 / 3, rel=1e-4)  # moved toward (.5, .5)


def test_dead_code_restart_uses_batch_vectors() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(3, 2, decay=0.5, dead_threshold=0.6)
    _set_codes(vq, [[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]])
    flat = torch.tensor([[0.1, 0.0], [0.9, 1.0], [0.0, 0.2], [1.1, 0.9]])
    vq.train()
    vq(flat.t().reshape(1, 2, 2, 2))
    restarted = vq.codebook[2]
    assert any(torch.equal(restarted, row) for row in flat)
    assert vq.cluster_size[2].item() == 1.0
    torch.testing.assert_close(vq.embed_sum[2], restarted)
    keep = VectorQuantizer(3, 2, decay=0.5, dead_threshold=0.6, restart_dead=False)
    _set_codes(keep, [[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]])
    keep.train()
    keep(flat.t().reshape(1, 2, 2, 2))
    assert keep.codebook[2].tolist() == pytest.approx([100.0, 100.0], rel=1e-4)  # smoothing only


def test_perplexity_is_exp_entropy_of_histogram() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(8, 4).eval()
    _, _, idx, stats = vq(torch.randn(2, 4, 5, 5))
    p = torch.bincount(idx.flatten(), minlength=8).float() / idx.numel()
    entropy = -sum(float(pi) * math.log(float(pi)) for pi in p if pi > 0)
    assert stats["perplexity"].item() == pytest.approx(math.exp(entropy), rel=1e-5)
    assert stats["usage"].item() == pytest.approx(len(idx.unique()) / 8)


def test_learned_codebook_without_ema() -> None:
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema=False, restart_dead=False).train()
    assert isinstance(vq.embed, nn.Parameter)
    z = torch.randn(1, 2, 3, 3, requires_grad=True)
    before = vq.codebook.detach().clone()
    z_q, loss, _, _ = vq(z)
    codebook_loss, commitment = vq_losses(z, vq.lookup(z)[0], 0.25)
    torch.testing.assert_close(loss, codebook_loss + commitment)
    loss.backward()
    assert vq.embed.grad is not None and vq.embed.grad.abs().sum() > 0
    torch.testing.assert_close(vq.codebook.detach(), before)  # moved by the optimiser only


def test_quantizer_rejects_wrong_latent_channels() -> None:
    with pytest.raises(ValueError, match=r"latents \(B, 2, h, w\)"):
        VectorQuantizer(4, 2)(torch.zeros(1, 3, 2, 2))


# --------------------------------------------------------------------------- GAN helpers


@pytest.mark.parametrize(("size", "out_hw"), [(28, 1), (32, 2)])
def test_patch_discriminator_shape(size: int, out_hw: int) -> None:
    disc = PatchDiscriminator(in_channels=1, base_channels=8, num_layers=3)
    assert disc(torch.randn(2, 1, size, size)).shape == (2, 1, out_hw, out_hw)


def test_hinge_d_loss_by_hand() -> None:
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    # relu(1 - real) = [0, .5] -> .25; relu(1 + fake) = [0, 1] -> .5; 0.5 * .75
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.375)


def test_adaptive_gan_weight_on_tiny_model() -> None:
    model = _tiny(KLAutoencoder, (1, 8, 8), (1, 2))
    torch.manual_seed(1)
    disc = PatchDiscriminator(in_channels=1, base_channels=4, num_layers=1)
    x = _images((1, 8, 8))
    recon = model(x, sample=False).recon
    rec_loss = (recon - x).abs().mean()
    g_loss = -disc(recon).mean()
    weight = adaptive_gan_weight(rec_loss, g_loss, model.last_layer)
    assert torch.isfinite(weight) and weight.item() > 0 and not weight.requires_grad
    assert adaptive_gan_weight(rec_loss, g_loss, model.last_layer, max_weight=1e-6) <= 1e-6
    (rec_loss + weight * g_loss).backward()  # graph kept for the real backward pass


# --------------------------------------------------------------------------- LPIPS


def _random_lpips_folder(folder: Path) -> LPIPS:
    torch.manual_seed(0)
    model = LPIPS()
    with torch.no_grad():
        for head in model.heads():
            head.model[1].weight.uniform_(0.0, 1.0)
    state = model.state_dict()
    vgg = {k: v for k, v in state.items() if k.startswith("features.")}
    vgg["classifier.0.weight"] = torch.zeros(2, 2)  # extra torchvision keys are ignored
    torch.save(vgg, folder / LPIPS_FILES[0])
    torch.save({k: v for k, v in state.items() if k.startswith("lin")}, folder / LPIPS_FILES[1])
    return model


def test_lpips_layout_matches_torchvision_vgg16() -> None:
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        reference = torchvision.models.vgg16(weights=None).state_dict()
    want = {k: v.shape for k, v in reference.items() if k.startswith("features.")}
    ours = {k: v.shape for k, v in LPIPS().state_dict().items() if k.startswith("features.")}
    assert ours == want
    heads = [k for k in LPIPS().state_dict() if k.startswith("lin")]
    assert heads == [f"lin{i}.model.1.weight" for i in range(5)]


def test_load_lpips_round_trip(tmp_path: Path) -> None:
    model = _random_lpips_folder(tmp_path)
    loaded = load_lpips(tmp_path)
    x, y = _images((3, 16, 16)), _images((3, 16, 16))
    torch.testing.assert_close(loaded(x, y), model(x, y), rtol=0, atol=0)
    assert loaded(x, y).shape == (2,) and (loaded(x, y) > 0).all()
    assert torch.equal(loaded(x, x), torch.zeros(2))
    grey = _images((1, 16, 16))
    torch.testing.assert_close(loaded(grey, grey * 0.5), loaded(grey.repeat(1, 3, 1, 1),
                                                                 grey.repeat(1, 3, 1, 1) * 0.5))


def test_lpips_is_frozen_but_passes_gradients() -> None:
    model = LPIPS()
    model.train()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = _images((3, 16, 16)).requires_grad_(True)
    model(x, torch.zeros_like(x)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_load_lpips_missing_folder_and_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        load_lpips(tmp_path / "nowhere")
    _random_lpips_folder(tmp_path)
    (tmp_path / "lpips_vgg.pth").unlink()
    with pytest.raises(ValueError, match=r"lpips_vgg\.pth is missing") as info:
        load_lpips(tmp_path)
    assert "\n" not in str(info.value)


def test_load_lpips_wrong_shapes(tmp_path: Path) -> None:
    _random_lpips_folder(tmp_path)
    heads = torch.load(tmp_path / "lpips_vgg.pth", weights_only=True)
    heads["lin2.model.1.weight"] = torch.zeros(1, 128, 1, 1)
    torch.save(heads, tmp_path / "lpips_vgg.pth")
    with pytest.raises(ValueError, match=r"'lin2.model.1.weight' has shape \(1, 128, 1, 1\), "
                                         r"expected \(1, 256, 1, 1\)"):
        load_lpips(tmp_path)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "vgg16.pth")
    with pytest.raises(ValueError, match=r"vgg16\.pth"):
        load_lpips(tmp_path)
