"""Rectified flow's reflow (Liu et al. 2023; issue 27): `diffcli train objective=flow reflow=<flow
run>` trains on the source's (noise, ODE sample) pairs. Checked: the module's loss takes a
batch's paired noise (exact: zero at the coupling's own velocity field), which samplers add
noise (so cannot couple), and on tiny moons runs that the pairs are the source's own samples
of seeds 0..n-1 with their noise, that the reflowed run samples, and the refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_bad_inputs import run_in_process
from test_cli import TINY_UNET
from test_conditional_cli import train_runs
from test_objectives import CouplingVelocity, ideal_denoiser
from torch import nn

from diffcli.components import build, option
from diffcli.data.pairs import Coupled
from diffcli.diffusion.generate import seed_generators, seed_noise
from diffcli.diffusion.objectives import Flow
from diffcli.lit.module import DiffusionModule
from diffcli.workflows.reflow import adds_noise

F64 = torch.float64
MOONS = ["dataset=moons", "dataset.n_points=256", "logger=none", "trainer.max_steps=20",
         "model=mlp", "objective=flow", "callbacks.preview=null"]
PAIRS = ["reflow.n=256", "reflow.steps=4", "reflow.sampler=dpmpp_2m"]
DIGITS = ["train", *TINY_UNET, "model.channel_mults=[1]", "logger=none", "trainer.max_steps=2",
          "callbacks.preview=null", "objective=flow", "objective.shift=null"]


class Coupling(nn.Module):
    """:class:`CouplingVelocity` as a module (the LightningModule takes an nn.Module)."""

    def __init__(self, flow: Flow, a: torch.Tensor) -> None:
        super().__init__()
        self.field = CouplingVelocity(flow, a)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.field(x, t)


def test_the_module_trains_on_the_noise_a_batch_carries():
    """A Coupled(x0, z) batch's loss uses its z: at the field of the coupling x0 = A z it is 0;
    the same data as a bare batch (independent noise) scores clearly more."""
    flow = Flow(t_sampling="uniform")
    a = torch.tensor([[2.0, 0.5], [0.0, 0.5]], dtype=F64)
    module = DiffusionModule(Coupling(flow, a), flow.lattice(), objective=flow, ema_decay=None)
    z = torch.randn(2048, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    x0 = z @ a.T
    assert float(module.continuous_loss(Coupled(x0, z), x0)) < 1e-12
    assert float(module.continuous_loss(x0, x0)) > 0.1


@pytest.mark.parametrize("name, extra", [
    ("ddim", {}), ("ddim", {"eta": 1.0}), ("ddpm", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {}),
    ("dpmpp_2m_sde", {}), ("euler", {}), ("heun", {}), ("heun", {"s_churn": 5.0}),
    ("restart", {}), ("unipc", {}),
])
def test_adds_noise_says_which_samplers_draw_noise_after_x_T(name, extra):
    """Two generators, one x_T: a sampler's samples differ exactly when ``adds_noise`` says it
    draws noise (the pairs are a coupling only for the others)."""
    sampler = build("sampler", option("sampler", name), steps=4, **extra)
    den = ideal_denoiser(Flow())
    x_t = torch.randn(16, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    a, b = (sampler.sample(den, x_t.clone(), generator=torch.Generator().manual_seed(s))
            for s in (2, 3))
    assert (not torch.equal(a, b)) == adds_noise(sampler)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    return train_runs(tmp_path_factory.mktemp("reflow"), {
        "src": ["train", *MOONS],
        "reflow": ["train", *MOONS, "reflow=src", *PAIRS],
        "digits": DIGITS,
        "digits_reflow": [*DIGITS, "reflow=digits", "reflow.n=8", "reflow.steps=2", "seed=1",
                          "trainer.max_steps=1"],
    })


def test_reflow_trains_on_the_sources_samples_and_their_noise(runs, monkeypatch, capsys):
    """The cached pairs are (the noise of seeds 0..255, what `diffcli sample` of the source
    draws from it with the same sampler and steps); the reflowed run samples in one step."""
    blob, = (b for p in (runs["cwd"] / "outputs" / "reflow-cache").glob("*.pt")
             if (b := torch.load(p, weights_only=True))["x"].ndim == 2)
    assert blob["settings"] == {"n": 256, "sampler": "dpmpp_2m", "steps": 4, "use_ema": True}
    assert blob["x"].shape == blob["noise"].shape == (256, 2)
    torch.testing.assert_close(blob["noise"], seed_noise(seed_generators(range(256)), (2,),
                                                         torch.device("cpu")))
    code, lines = run_in_process(["sample", f"ckpt={runs['src']}", "seeds=0-7",
                                  "sampler=dpmpp_2m", "steps=4"], runs["cwd"], monkeypatch,
                                 capsys)
    assert code in (0, None), lines
    drawn = np.load(runs["src"].parent.parent / "samples" / "dpmpp_2m-4" / "samples.npz")
    np.testing.assert_allclose(blob["x"][:8].numpy(), drawn["points"], atol=1e-5)
    code, lines = run_in_process(["sample", f"ckpt={runs['reflow']}", "n=8", "sampler=euler",
                                  "steps=1"], runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    meta = json.loads((runs["reflow"].parent.parent / "samples" / "euler-1" / "meta.json")
                      .read_text())
    assert meta["n"] == 8 and meta["nfe"] == 1


def test_an_image_flow_reflows_from_its_own_weights(runs):
    """An image flow reflows on its own (1, 8, 8) pairs and starts from its EMA weights
    (reflow.init): one small step later the network is within 1% of them (a fresh one, seeded
    otherwise, is about 86% away)."""
    from diffcli.checkpoint import load_checkpoint

    blobs = [torch.load(p, weights_only=True)
             for p in (runs["cwd"] / "outputs" / "reflow-cache").glob("*.pt")]
    assert sorted(tuple(b["x"].shape) for b in blobs) == [(8, 1, 8, 8), (256, 2)]
    source, _ = load_checkpoint(runs["digits"]).network_weights(use_ema=True)
    trained, _ = load_checkpoint(runs["digits_reflow"]).network_weights(use_ema=False)
    flat = [torch.cat([w[k].flatten().float() for k in sorted(source)]) for w in (source, trained)]
    assert float((flat[1] - flat[0]).norm() / flat[0].norm()) < 0.01


@pytest.mark.parametrize("extra, words", [
    (["objective=ddpm"], ["objective=flow", "objective=ddpm"]),
    (["dataset=swiss_roll"], ["dataset.name: moons -> swiss_roll"]),
])
def test_reflow_refusals_are_one_line_and_create_nothing(runs, monkeypatch, capsys, extra,
                                                         words):
    never = runs["cwd"] / "never"
    args = ["train", *MOONS, "reflow=src", *PAIRS, *extra, f"hydra.run.dir={never}"]
    code, lines = run_in_process(args, runs["cwd"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert all(w in lines[0] for w in words), lines
    assert not never.exists()
