"""Memory that does not grow with the work: streamed sample files, and batches that cannot fit
refused before any work (the footprint traced on the meta device)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from diffcli.errors import DiffcliError
from diffcli.files import NpzStream
from diffcli.nets import memory
from diffcli.nets.dit import DiT
from diffcli.nets.memory import Footprint, check_fits, footprint
from diffcli.nets.mlp import MLP
from diffcli.nets.unet import UNet
from diffcli.workflows.sample_files import GRID_MAX, grid_picks


def test_a_streamed_npz_reads_back_as_savez_compressed(tmp_path: Path):
    images = np.random.default_rng(0).integers(0, 256, (100, 8, 8, 3), dtype=np.uint8)
    with NpzStream(tmp_path / "s.npz", "images", images.shape, np.uint8) as out:
        for i in range(0, 100, 32):
            out.write(images[i:i + 32])
        out.close(seeds=np.arange(100), labels=np.arange(100) % 10)
    got = np.load(tmp_path / "s.npz")
    assert sorted(got.files) == ["images", "labels", "seeds"]
    np.testing.assert_array_equal(got["images"], images)
    np.testing.assert_array_equal(got["seeds"], np.arange(100))


def test_a_streamed_npz_refuses_missing_or_extra_rows(tmp_path: Path):
    with NpzStream(tmp_path / "s.npz", "x", (4, 2), np.float32) as out:
        out.write(np.zeros((3, 2), np.float32))
        with pytest.raises(ValueError, match="3 of 4 rows"):
            out.close()
        with pytest.raises(ValueError, match="holds 4 rows"):
            out.write(np.zeros((2, 2), np.float32))
        with pytest.raises(ValueError, match="does not fit"):
            out.write(np.zeros((1, 3), np.float32))


def test_the_grid_shows_every_sample_up_to_its_limit_then_the_first_columns():
    assert grid_picks(10, None) == (list(range(10)), 4)
    picks, per_row = grid_picks(100_000, None)
    assert picks == list(range(GRID_MAX)) and per_row == 16
    assert grid_picks(6, 3) == ([0, 1, 2, 3, 4, 5], 3)  # two classes, three each
    picks, cols = grid_picks(10 * 1000, 1000)  # ten class rows of 1000
    assert cols == GRID_MAX // 10 and len(picks) == 10 * cols
    assert picks[:2] == [0, 1] and picks[cols] == 1000  # row 2 starts at class 2's first


def test_the_traced_peak_of_two_linear_layers_is_exact():
    """Inference through Linear(10, 1000) then Linear(1000, 10): at most the hidden (B, 1000)
    and the output (B, 10) are alive at once; the weights are counted apart."""
    def build() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 1000), nn.Linear(1000, 10))

    fp = footprint(build, (10,), call=lambda net, x, t: net(x))
    assert fp.params == 4 * (10 * 1000 + 1000 + 1000 * 10 + 10)
    assert fp.per_sample == 4 * (1000 + 10) and fp.fixed == 0
    assert fp.at(64) == fp.params + 64 * 4 * 1010


def test_a_unet_footprint_grows_with_batch_and_image_area():
    small = footprint(lambda: UNet(data_shape=[3, 16, 16], base_channels=8), (3, 16, 16))
    large = footprint(lambda: UNet(data_shape=[3, 32, 32], base_channels=8), (3, 32, 32))
    assert small.params == large.params  # a convolutional net: weights do not see the size
    assert 3.5 < large.per_sample / small.per_sample < 4.5  # activations: 4x the pixels
    trained = footprint(lambda: UNet(data_shape=[3, 16, 16], base_channels=8), (3, 16, 16),
                        grad=True)
    assert trained.per_sample > 2 * small.per_sample  # backward keeps the activations


def test_a_batch_that_cannot_fit_is_refused_naming_one_that_does(monkeypatch):
    monkeypatch.setattr(memory, "free_memory", lambda device: 64 * 2**20)
    build = lambda: MLP(data_shape=[2])  # noqa: E731
    check_fits(build, (2,), 64, torch.device("cpu"))  # a small batch: not even traced
    with pytest.raises(DiffcliError) as e:
        check_fits(build, (2,), 10**7, torch.device("cpu"))
    message = str(e.value)
    assert message.startswith("batch_size=10000000 does not fit in memory") and "\n" not in message
    fits = int(message.rsplit("batch_size=", 1)[1].split()[0])
    assert message.endswith(f"batch_size={fits} fits") and fits >= 1
    check_fits(build, (2,), fits, torch.device("cpu"))


def test_a_sample_too_large_for_any_batch_says_so():
    fp = Footprint(params=10, fixed=0, per_sample=2**40)
    assert memory.batch_hint(fp, 2**30, "batch_size").startswith("even batch_size=1 needs 1.0 TiB")


def _dit(checkpointing: bool) -> DiT:
    return DiT(data_shape=(4, 16, 16), patch_size=2, hidden_size=128, depth=4, num_heads=4,
               grad_checkpointing=checkpointing)


def _unet(checkpointing: bool) -> UNet:
    return UNet(data_shape=(3, 16, 16), base_channels=16, grad_checkpointing=checkpointing)


@pytest.mark.parametrize(("build", "shape"), [(_unet, (3, 16, 16)), (_dit, (4, 16, 16))])
def test_activation_checkpointing_lowers_the_traced_training_bytes_a_sample(build, shape):
    plain = footprint(lambda: build(False), shape, grad=True)
    ckpt = footprint(lambda: build(True), shape, grad=True)
    assert plain.params == ckpt.params
    assert 0 < ckpt.per_sample < 0.7 * plain.per_sample


def test_the_fitted_line_bounds_every_traced_peak_and_meets_it_at_large_batches():
    """With checkpointing the gradients of the weights set the peak of small batches (the old
    two small traces saw 0.4x of the per-sample bytes): the fit is the large-batch slope, from
    the small batch's peak, so it is never below a traced peak and close to it when large."""
    fp = footprint(lambda: _dit(True), (4, 16, 16), grad=True)
    with torch.device("meta"):
        net = _dit(True)
    for batch in (4, 16, 256, 4096):
        traced = memory._peak(net, (4, 16, 16), batch, True, lambda n, x, t: n(x, t))
        fitted = fp.fixed + batch * fp.per_sample
        assert traced <= fitted, batch
        if batch >= 256:
            assert fitted < 1.05 * traced, batch
