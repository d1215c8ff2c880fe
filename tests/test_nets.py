"""Shape, initialisation and gradient checks for diffcli.nets."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from diffcli.nets import MLP, UNet, count_parameters, timestep_embedding
from diffcli.nets.layers import EmbedSequential, ResBlock, TimeEmbedding, norm


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


def test_unet_rejects_indivisible_size() -> None:
    net = _small_unet(channel_mults=(1, 2, 2, 2))
    with pytest.raises(ValueError, match="divisible by 8"):
        net.check_image_size(28)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.randn(1, 1, 28, 28), torch.zeros(1))
    net.check_image_size(32, 16)


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
