"""Refactoring guard: `diffcli sample` of two fixed tiny networks gives the same numbers as
before the redesign (values recorded on the code of 2026-11-25, before sampling moved out of the
workflows). The networks are seeded random initialisations saved as diffcli checkpoints, so the
pins depend only on the sampling path: checkpoint -> network -> schedule -> sampler -> files.

The checkpoints are written as diffcli wrote them before the redesign (top-level ``prediction``,
the dataset factory's old name), so the pins also check that old checkpoints still load.

These are regression pins, not correctness checks (tests/test_samplers.py checks the samplers
against exact Gaussian references); change them only with a change of algorithm, and say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import run_here as run

from diffcli.nets.mlp import MLP
from diffcli.nets.unet import UNet

pytestmark = pytest.mark.slow
LINEAR = {"_target_": "diffcli.diffusion.schedules.linear_schedule", "num_timesteps": 1000,
          "beta_start": 1e-4, "beta_end": 0.02}

# seeds 0-2, 4 steps, an MLP on 2-D points (eps prediction)
POINTS = {
    "ddim": [[277.4491882324219, -5.96612024307251], [127.86453247070312, 74.52090454101562],
             [85.86341857910156, -10.379343032836914]],
    "ddpm": [[238.88243103027344, 2.9189271926879883], [129.127197265625, 90.39299774169922],
             [86.18714141845703, -30.312875747680664]],
    "dpmpp_2m": [[281.0185852050781, -1.2019232511520386], [128.80661010742188, 77.73273468017578],
                 [86.7093505859375, -9.266349792480469]],
    "euler": [[138.32168579101562, -6.473129749298096], [63.95906448364258, 35.452579498291016],
              [42.34467697143555, -6.75229024887085]],
    "heun": [[159.92080688476562, 23.84588050842285], [70.3094482421875, 55.12400436401367],
             [48.00993728637695, 0.32562389969825745]],
}
# seeds 0-1, 3 steps, a U-Net on 8x8 images (x0 prediction): row 2 of each uint8 image
IMAGE_ROWS = {
    "ddim": [[108, 147, 91, 82, 161, 45, 64, 130], [110, 137, 124, 246, 35, 103, 111, 85]],
    "heun": [[63, 46, 0, 102, 105, 57, 109, 136], [119, 69, 101, 0, 144, 156, 6, 70]],
}


def _save(path: Path, net: torch.nn.Module, model: dict, dataset: dict, data: dict,
          prediction: str) -> Path:
    config = {"dataset": dataset, "model": model, "schedule": LINEAR, "prediction": prediction}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "global_step": 0, "diffcli": {"format": 1, "data": data, "config": config}},
               path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pinned") / "checkpoints"  # samples go to ../samples
    folder.mkdir()
    torch.manual_seed(0)
    points = _save(folder / "points.ckpt", MLP(dim=2, hidden=32, depth=2, emb_dim=16),
                   {"_target_": "diffcli.nets.mlp.MLP", "hidden": 32, "depth": 2, "emb_dim": 16},
                   {"_target_": "diffcli.data.datamodule.make_datamodule", "name": "moons",
                    "n_points": 64}, {"kind": "points", "shape": [2]}, "eps")
    torch.manual_seed(0)
    unet = UNet(in_channels=1, base_channels=8, channel_mults=[1, 2], groups=4, image_size=8)
    with torch.no_grad():  # away from the zero-initialised output layer: non-trivial images
        for p in unet.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    images = _save(folder / "images.ckpt", unet,
                   {"_target_": "diffcli.nets.unet.UNet", "base_channels": 8,
                    "channel_mults": [1, 2], "groups": 4},
                   {"_target_": "diffcli.data.datamodule.make_datamodule", "name": "digits",
                    "image_size": 8}, {"kind": "image", "shape": [1, 8, 8]}, "x0")
    return points, images


# Heun's pins predate max_ratio (Euler steps where a step shrinks sigma more than 10-fold,
# issue 34): they pin its trapezoid on every step, max_ratio=null
OLD_RULE = {"heun": ["sampler.max_ratio=null"]}


def _samples(ckpt: Path, prefix: str) -> dict[str, np.ndarray]:
    return {p.name: np.load(p / "samples.npz") for p in ckpt.parent.parent.glob(
        f"samples/{prefix}")}


@pytest.mark.parametrize("sampler", sorted(POINTS))
def test_point_samples_are_unchanged(checkpoints, sampler: str):
    points, _ = checkpoints
    run(points.parent, "sample", f"ckpt={points}", f"sampler={sampler}", "steps=4", "seeds=0-2",
        "overwrite=true", *OLD_RULE.get(sampler, []))
    (got,) = _samples(points, f"{sampler}-4").values()
    np.testing.assert_allclose(got["points"], POINTS[sampler], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("sampler", sorted(IMAGE_ROWS))
def test_image_samples_are_unchanged(checkpoints, sampler: str):
    _, images = checkpoints
    run(images.parent, "sample", f"ckpt={images}", f"sampler={sampler}", "steps=3", "seeds=0-1",
        "overwrite=true", *OLD_RULE.get(sampler, []))
    (got,) = _samples(images, f"{sampler}-3").values()
    rows = got["images"][:, 2, :, 0].astype(int)
    assert np.abs(rows - np.array(IMAGE_ROWS[sampler])).max() <= 1  # uint8 rounding
