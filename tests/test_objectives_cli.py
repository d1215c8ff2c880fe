"""objective=edm and objective=flow through the command line, on tiny runs trained here (issue 27):
they train, sample with every sampler family, guide (classifier-free, and a DDPM-trained
classifier matched by noise level), evaluate the ODE likelihood and export; the DDPM chain's
settings on them are one line naming both, with nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_bad_inputs import run_in_process
from test_cli import TINY_UNET
from test_conditional_cli import train_runs

MOONS = ["dataset=moons", "dataset.n_points=256", "logger=none", "trainer.max_steps=20"]
RUNS = {
    "edm": ["train", *MOONS, "model=mlp", "objective=edm", "callbacks.preview=null",
            "objective.uncertainty_weighting=true"],
    "flow": ["train", *MOONS, "model=mlp", "conditional=true", "objective=flow",
             "callbacks.preview=null"],
    "clf": ["train", "task=classifier", *MOONS, "model=mlp_classifier"],
    "digits": ["train", *TINY_UNET, "model.channel_mults=[1]", "logger=none",
               "trainer.max_steps=2", "callbacks.preview=null", "objective=flow",
               "objective.shift=null", "objective.interpolant=gvp"],
    "linear": ["train", *TINY_UNET, "model.channel_mults=[1]", "logger=none",
               "trainer.max_steps=2", "callbacks.preview=null", "objective=flow",
               "objective.shift=null"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    return train_runs(tmp_path_factory.mktemp("objectives"), RUNS)


def sample(runs: dict[str, Path], name: str, monkeypatch, capsys, *args: str) -> dict:
    code, lines = run_in_process(["sample", f"ckpt={runs[name]}", *args], runs["cwd"],
                                 monkeypatch, capsys)
    assert code in (0, None), lines
    folder = lines[-1].split(" to ", 1)[1].split(" : ")[0].strip()
    return json.loads((runs["cwd"] / folder / "meta.json").read_text())


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmpp_3m", "heun", "unipc", "restart"])
def test_an_edm_model_samples_with_every_sampler_family(runs, monkeypatch, capsys, sampler):
    meta = sample(runs, "edm", monkeypatch, capsys, f"sampler={sampler}", "steps=4", "n=6")
    assert meta["n"] == 6 and meta["nfe"] >= 4


def test_the_edm2_uncertainty_is_trained_and_saved(runs):
    import torch

    state = torch.load(runs["edm"], map_location="cpu", weights_only=True)["state_dict"]
    assert "uncertainty.linear.weight" in state
    assert float(state["uncertainty.linear.weight"].abs().sum()) > 0  # it moved from zero


def test_a_flow_model_is_guided_and_a_ddpm_classifier_guides_an_edm_model(
        runs, monkeypatch, capsys):
    meta = sample(runs, "flow", monkeypatch, capsys, "sampler=euler", "steps=4", "n=4",
                  "guidance=3", "classes=0-1")
    assert meta["guidance"] == 3 and meta["nfe"] == 8
    meta = sample(runs, "edm", monkeypatch, capsys, "sampler=heun", "steps=3", "n=4",
                  f"classifier={runs['clf']}", "classifier_scale=2", "classes=0")
    assert meta["classifier_scale"] == 2 and meta["classes"] == [0]


def test_eval_nll_is_the_ode_and_the_vlb_is_one_line(runs, monkeypatch, capsys):
    code, lines = run_in_process(["eval-nll", f"ckpt={runs['edm']}", "n=16", "batch_size=16"],
                                 runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    written = runs["edm"].parent.parent / "eval" / "nll-ode-train-n16.json"
    assert np.isfinite(json.loads(written.read_text())["results"]["ode"]["bits_per_dim"])
    code, lines = run_in_process(["eval-nll", f"ckpt={runs['edm']}", "method=vlb"], runs["cwd"],
                                 monkeypatch, capsys)
    assert code == 2 and len(lines) == 1 and "objective=edm" in lines[0], lines


def test_images_with_a_resolution_dependent_shift_sample_and_export(runs, monkeypatch, capsys):
    from diffcli.checkpoint import load_checkpoint

    run = load_checkpoint(runs["digits"])
    assert run.continuous.shift == pytest.approx(8 / 256)  # sqrt(8 * 8) / 256
    meta = sample(runs, "digits", monkeypatch, capsys, "sampler=dpmpp_2m", "steps=3", "n=2")
    assert meta["n"] == 2
    code, lines = run_in_process(["export", f"ckpt={runs['digits']}", "format=safetensors"],
                                 runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    card = (runs["digits"].parent.parent / "export" / "safetensors" / "README.md").read_text()
    assert "| objective | Flow: interpolant gvp" in card and "| schedule |" not in card
    code, lines = run_in_process(["export", f"ckpt={runs['digits']}", "format=onnx"],
                                 runs["cwd"], monkeypatch, capsys)
    assert code != 0 and "objective=flow" in lines[-1] and "safetensors" in lines[-1], lines


def _images(runs: dict[str, Path], ckpt: Path, monkeypatch, capsys, *args: str) -> np.ndarray:
    code, lines = run_in_process(["sample", f"ckpt={ckpt}", *args], runs["cwd"], monkeypatch,
                                 capsys)
    assert code in (0, None), lines
    folder = lines[-1].split(" to ", 1)[1].split(" : ")[0].strip()
    return np.load(runs["cwd"] / folder / "samples.npz")["images"]


def test_a_linear_flow_model_is_a_diffusers_flow_pipeline_both_ways(runs, monkeypatch, capsys):
    """objective=flow on diffusers' path exports as a DDPMPipeline with
    FlowMatchEulerDiscreteScheduler (the run's shift) that runs; from the same noise on
    diffcli's t grid, diffusers' Euler gives diffcli's Euler samples; diffcli samples the folder
    as the run. The gvp path, EDM and another sampler are one line each, with nothing written."""
    import torch
    from diffusers import DDPMPipeline, FlowMatchEulerDiscreteScheduler

    import diffcli
    from diffcli.components import option
    from diffcli.restore import make_sampler

    code, lines = run_in_process(["export", f"ckpt={runs['linear']}", "format=diffusers"],
                                 runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    folder = runs["linear"].parent.parent / "export" / "diffusers"
    pipe = DDPMPipeline.from_pretrained(folder)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    config = pipe.scheduler.config
    assert config.shift == 8 / 256 and not config.use_dynamic_shifting  # sqrt(8 * 8) / 256
    images = pipe(batch_size=2, num_inference_steps=3, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 8, 8, 1) and np.isfinite(images).all()

    den = diffcli.load(runs["linear"]).opened.denoiser
    flow = den.objective
    sampler, _ = make_sampler(option("sampler", "euler") | {"grid": "trailing"}, den.schedule,
                              steps=4, clip_denoised=False)
    sigmas = torch.tensor(sampler.make_grid(den.schedule).sigmas[:-1], dtype=torch.float64)
    t = flow.t_of_sigma(sigmas)  # the grid's t, shift applied; diffusers shifts what it gets:
    s = flow.shift_value
    pipe.scheduler.set_timesteps(sigmas=(t / (s - (s - 1) * t)).tolist())
    assert torch.allclose(pipe.scheduler.sigmas[:-1].double(), t, atol=1e-6)
    noise = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = sampler.sample(den, noise.clone())
    x = noise * flow.precondition(sigmas[:1]).c_in.float()  # x_t = (1 - t) xbar at the top
    with torch.no_grad():
        for step in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(pipe.unet(x, step).sample, step, x).prev_sample
    assert float((x - expected).abs().max()) < 1e-4 * max(1.0, float(expected.abs().max()))

    common = ["sampler=euler", "steps=3", "n=3"]
    np.testing.assert_array_equal(_images(runs, folder, monkeypatch, capsys, *common),
                                  _images(runs, runs["linear"], monkeypatch, capsys, *common))
    assert _images(runs, folder, monkeypatch, capsys, "sampler=dpmpp_3m", "steps=3",
                   "n=2").shape == (2, 8, 8, 1)
    for name, args, words in (
            ("digits", [], ["interpolant=gvp", "FlowMatchEulerDiscreteScheduler"]),
            ("edm", [], ["EDMEulerScheduler", "1000 ln(sigma) / 4"]),
            ("linear", ["sampler=heun", "out=never"], ["sampler=euler or ddim", "Heun"])):
        code, lines = run_in_process(["export", f"ckpt={runs[name]}", "format=diffusers", *args],
                                     runs["cwd"], monkeypatch, capsys)
        assert code == 1 and len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert not (runs["cwd"] / "never").exists()
    assert not (runs["digits"].parent.parent / "export" / "diffusers").exists()
    assert "DDPMPipeline.from_pretrained" in (folder / "README.md").read_text()
    edited = shutil.copytree(folder, runs["cwd"] / "dynamic")  # a shift set per image size
    config_file = edited / "scheduler" / "scheduler_config.json"
    config_file.write_text(json.dumps(json.loads(config_file.read_text())
                                      | {"use_dynamic_shifting": True}))
    code, lines = run_in_process(["sample", f"ckpt={edited}", "n=2"], runs["cwd"], monkeypatch,
                                 capsys)
    assert code == 1 and len(lines) == 1 and "use_dynamic_shifting=true" in lines[0], lines


@pytest.mark.parametrize("extra, words", [
    (["loss=hybrid", "model.learn_sigma=true"], ["loss=hybrid", "objective=flow"]),
    (["model.learn_sigma=true", "loss=simple"], ["model.learn_sigma=true", "objective=flow"]),
    (["module.min_snr_gamma=5"], ["module.min_snr_gamma", "objective=flow"]),
    (["objective.interpolant=cubic"], ["objective:", "interpolant"]),
    (["objective.shift=null"], ["objective.shift=null", "2-D points"]),
])
def test_the_ddpm_chains_settings_on_flow_are_one_line(runs, monkeypatch, capsys, extra, words,
                                                       tmp_path):
    args = ["train", *MOONS, "model=mlp", "objective=flow", *extra,
            f"hydra.run.dir={tmp_path / 'never'}"]
    code, lines = run_in_process(args, tmp_path, monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert all(w in lines[0] for w in words), lines
    assert not (tmp_path / "never").exists()



def test_noise_viz_on_a_run_refuses_another_objective(runs, monkeypatch, capsys):
    args = ["noise-viz", f"ckpt={runs['digits']}", "objective=edm"]  # drawing: test_noise_viz
    code, lines = run_in_process(args, runs["cwd"], monkeypatch, capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "objective=flow" in lines[0] and "drop objective=" in lines[0], lines
    assert not (runs["digits"].parent.parent / "viz").exists()
