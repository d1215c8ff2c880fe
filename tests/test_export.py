"""Leaving with a model and using it from Python: ``diffcli export`` (safetensors, diffusers,
ONNX), loading exported models back, and the ``diffcli.load`` API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import TINY_UNET, assert_one_line_error, run_here

import diffcli
from diffcli.files import MARKER

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A tiny trained image run (8x8 digits, 3 steps)."""
    root = tmp_path_factory.mktemp("export")
    run_here(root, "train", *TINY_UNET, "trainer.max_steps=3", "logger=none", "objective=ddpm")
    return root


def _run_dir(root: Path) -> Path:
    return next(root.glob("outputs/*/*/checkpoints")).parent


def _images(folder: Path) -> np.ndarray:
    return np.load(folder / "samples.npz")["images"]


def test_safetensors_export_samples_as_the_checkpoint(tiny_run: Path):
    run = _run_dir(tiny_run)
    run_here(tiny_run, "export", "format=safetensors")
    out = run / "export" / "safetensors"
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "model.json", "README.md",
                                               MARKER}
    card = (out / "README.md").read_text()
    assert "digits" in card and "3 steps; ema weights" in card and "diffcli.load(" in card
    common = ["sampler=ddim", "steps=4", "n=5", "overwrite=true"]
    run_here(tiny_run, "sample", f"ckpt={out / 'model.safetensors'}", *common)
    run_here(tiny_run, "sample", f"ckpt={run}", *common)  # a run folder names its last.ckpt
    np.testing.assert_array_equal(_images(out / "samples" / "ddim-4"),
                                  _images(run / "samples" / "ddim-4"))
    # the exported weights are the checkpoint's EMA weights, bit for bit
    from safetensors.torch import load_file

    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    exported = load_file(str(out / "model.safetensors"))
    assert exported.keys() == {"net." + k[len("ema_net."):] for k in ckpt if
                               k.startswith("ema_net.")}
    for key, value in exported.items():
        assert torch.equal(value, ckpt["ema_" + key])


def test_an_edited_sidecar_is_refused(tiny_run: Path, tmp_path: Path):
    run_here(tiny_run, "export", "format=safetensors", f"out={tmp_path / 'x'}")
    weights, sidecar = tmp_path / "x" / "model.safetensors", tmp_path / "x" / "model.json"
    original = sidecar.read_text()
    for edit in ({"model": {"_target_": "os.system"}}, {"model": {"base_channels": 16}}):
        described = json.loads(original)
        described["config"]["model"].update(edit["model"])
        sidecar.write_text(json.dumps(described))
        assert_one_line_error(run_here(tiny_run, "sample", f"ckpt={weights}", "n=2", ok=False),
                              "refusing to load", "changed after export")
    sidecar.unlink()
    assert_one_line_error(run_here(tiny_run, "sample", f"ckpt={weights}", "n=2", ok=False),
                          "model.json is missing")


def test_python_api_samples_as_the_cli(tiny_run: Path):
    """diffcli.load + Pipeline.sample give the CLI's images for the same seeds, with two
    samplers; nll and noise work on the same model."""
    run = _run_dir(tiny_run)
    pipe = diffcli.load(run)
    assert pipe.kind == "image" and pipe.shape == (1, 8, 8)
    for sampler, steps in (("ddim", 4), ("dpmpp_2m", 3)):
        run_here(tiny_run, "sample", f"sampler={sampler}", f"steps={steps}", "seeds=3-7",
                 "overwrite=true")
        cli = _images(run / "samples" / f"{sampler}-{steps}")
        mine = pipe.sample(sampler=sampler, steps=steps, seeds=range(3, 8))
        assert mine.dtype == torch.uint8 and mine.shape == (5, 1, 8, 8)
        np.testing.assert_array_equal(mine.permute(0, 2, 3, 1).numpy(), cli)
    pils = pipe.sample(2, sampler="ddim", steps=2, output="pil")
    assert len(pils) == 2 and pils[0].size == (8, 8)
    x0 = pipe.sample(3, sampler="ddim", steps=2, output="float")
    bits = pipe.nll(x0, steps=5)
    assert bits.shape == (3,) and torch.isfinite(bits).all() and (bits > 0).all()
    x_t = pipe.noise(x0, t=999, seed=1)
    assert x_t.shape == x0.shape and torch.equal(x_t, pipe.noise(x0, t=999, seed=1))
    assert x_t.std() > 0.8  # at t = T - 1 almost pure noise
    with pytest.raises(diffcli.api.DiffcliError, match="no such option"):
        pipe.sample(2, sampler="nope")


def _ddim_from(den, x_T: torch.Tensor, steps: int) -> torch.Tensor:
    """diffcli's DDIM (x0 not clipped) from the noise ``x_T``."""
    from diffcli.components import option
    from diffcli.restore import make_sampler

    sampler, _ = make_sampler(option("sampler", "ddim"), den.schedule, steps=steps,
                              clip_denoised=False)
    return sampler.sample(den, x_T.clone(), generator=torch.Generator().manual_seed(1))


def test_diffusers_export_loads_in_diffusers_and_back(tiny_run: Path):
    """The exported folder is a DDPMPipeline whose DDIM scheduler, driven from the same noise,
    gives diffcli's DDIM samples; read back by diffcli it has the same weights."""
    from diffusers import DDIMScheduler, DDPMPipeline

    run = _run_dir(tiny_run)
    run_here(tiny_run, "export", "format=diffusers", "sampler=ddim")
    folder = run / "export" / "diffusers"
    pipe = DDPMPipeline.from_pretrained(folder)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    ours = diffcli.load(run)
    x_T = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = _ddim_from(ours.opened.denoiser, x_T, 5)
    pipe.scheduler.set_timesteps(5)
    x = x_T.clone()
    with torch.no_grad():
        for t in pipe.scheduler.timesteps:
            x = pipe.scheduler.step(pipe.unet(x, t).sample, t, x).prev_sample
    scale = float(expected.abs().max().clamp(min=1))
    assert float((x - expected).abs().max()) < 1e-4 * scale  # float32 betas in diffusers
    imported = diffcli.load(folder)
    original = ours.opened.network.state_dict()
    for key, value in imported.opened.network.state_dict().items():
        assert torch.equal(value, original[key]), key
    run_here(tiny_run, "sample", f"ckpt={folder}", "sampler=ddim", "steps=3", "n=4")
    run_here(tiny_run, "sample", "sampler=ddim", "steps=3", "n=4", "overwrite=true")
    np.testing.assert_array_equal(_images(folder / "samples" / "ddim-3"),
                                  _images(run / "samples" / "ddim-3"))
    assert "DDPMPipeline.from_pretrained" in (folder / "README.md").read_text()


def test_onnx_export_samples_as_torch(tiny_run: Path):
    pytest.importorskip("onnxruntime")
    from diffcli.diffusion.denoiser import Denoiser
    from diffcli.interop.onnx import onnx_predict

    run = _run_dir(tiny_run)
    proc = run_here(tiny_run, "export", "format=onnx")
    assert "max |difference|" in proc.stderr
    model = run / "export" / "onnx" / "model.onnx"
    ours = diffcli.load(run)
    onnx_den = Denoiser(lambda x, t: onnx_predict(model, x, t), ours.opened.schedule,
                        ours.opened.run.prediction)
    x_T = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    expected = _ddim_from(ours.opened.denoiser, x_T, 4)
    got = _ddim_from(onnx_den, x_T, 4)
    assert float((got - expected).abs().max()) < 1e-4 * float(expected.abs().max().clamp(min=1))


def test_what_cannot_be_exported_is_one_line(tmp_path: Path):
    run_here(tmp_path, "train", "dataset=swiss_roll", "model=mlp", "trainer.max_steps=2",
             "logger=none", "objective=ddpm")
    assert_one_line_error(run_here(tmp_path, "export", "format=diffusers", ok=False),
                          "format=diffusers", "UNet2DModel takes images")
    assert_one_line_error(run_here(tmp_path, "export", "format=keras", ok=False), "format")
    assert_one_line_error(run_here(tmp_path, "export", "format=diffusers", "sampler=heun",
                                   ok=False), "sampler=ddpm, ddim or dpmpp_2m", "Heun")


GOOGLE_STYLE = {  # google/ddpm-cifar10-32's UNet options, at a tiny width
    "sample_size": 8, "in_channels": 3, "out_channels": 3, "block_out_channels": [8, 16],
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "layers_per_block": 1,
    "attention_head_dim": None, "norm_num_groups": 4, "norm_eps": 1e-06,
    "downsample_padding": 0, "flip_sin_to_cos": False, "freq_shift": 1,
    "act_fn": "silu", "center_input_sample": False, "time_embedding_type": "positional"}


def test_a_diffusers_folder_samples_in_diffcli(tmp_path: Path):
    """A UNet2DModel + DDPMScheduler folder written by diffusers (google/ddpm-cifar10-32's
    conventions: asymmetric downsampling padding, eps 1e-6, sin-first shifted embedding):
    any diffcli sampler runs on it and DDIM matches diffusers' from the same noise; a pickled
    .bin alone is refused."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**GOOGLE_STYLE)
    for p in unet.parameters():
        p.data.normal_(0, 0.05)
    folder = tmp_path / "ddpm-tiny"
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                  beta_end=0.02).save_pretrained(folder / "scheduler")
    pipe = diffcli.load(folder)
    assert pipe.shape == (3, 8, 8)
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    expected = _ddim_from(pipe.opened.denoiser, x_T, 4)
    sched = DDIMScheduler.from_config(dict(DDPMScheduler.load_config(folder / "scheduler")),
                                      timestep_spacing="trailing", clip_sample=False)
    sched.set_timesteps(4)
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x).prev_sample
    assert float((x - expected).abs().max()) < 1e-4 * float(expected.abs().max().clamp(min=1))
    run_here(tmp_path, "sample", f"ckpt={folder}", "sampler=heun", "steps=2", "n=3")
    assert _images(folder / "samples" / "heun-2").shape == (3, 8, 8, 3)
    assert_one_line_error(run_here(tmp_path, "eval-fid", f"ckpt={folder}", "n=4",
                                   "extractor=standin", ok=False), "pass ref=")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(
        folder / "unet" / "diffusion_pytorch_model.bin")
    assert_one_line_error(run_here(tmp_path, "sample", f"ckpt={folder}", "n=2", ok=False),
                          "a .bin is a pickle")


def test_a_class_conditional_model_exports_its_unet_and_reads_back(tmp_path: Path):
    """No DDPMPipeline (it passes no labels): unet/ + scheduler/; diffcli reads the classes
    back and samples each class as the original."""
    run_here(tmp_path, "train", *TINY_UNET, "conditional=true", "trainer.max_steps=2",
             "logger=none", "objective=ddpm")
    run = _run_dir(tmp_path)
    run_here(tmp_path, "export", "format=diffusers", "sampler=dpmpp_2m")
    folder = run / "export" / "diffusers"
    assert not (folder / "model_index.json").exists()
    config = json.loads((folder / "unet" / "config.json").read_text())
    assert config["num_class_embeds"] == 11  # ten digits and the null label
    assert json.loads((folder / "scheduler" / "scheduler_config.json").read_text())[
        "_class_name"] == "DPMSolverMultistepScheduler"
    back, ours = diffcli.load(folder), diffcli.load(run)
    assert back.num_classes == 10 and back.class_names == ours.class_names
    a, b = (pipe.sample(4, sampler="ddim", steps=2, classes=[3, 7], guidance=2)
            for pipe in (back, ours))
    assert torch.equal(a, b)


def test_the_model_card_lists_the_runs_evaluations(tmp_path: Path):
    from diffcli.interop.model_card import eval_results

    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "fid-ddim-50-n1000.json").write_text(json.dumps(
        {"summary": {"fid": {"mean": 12.5, "best": 12.5}}, "n": 1000}))
    (tmp_path / "eval" / "nll-vlb-test-n100.json").write_text(json.dumps(
        {"results": {"vlb": {"bits_per_dim": 3.25}}, "n": 100}))
    (tmp_path / "eval" / "broken.json").write_text("{")
    assert eval_results(tmp_path) == [("fid-ddim-50-n1000.json", {"fid": 12.5, "n": 1000}),
                                      ("nll-vlb-test-n100.json",
                                       {"vlb bits/dim": 3.25, "n": 100})]


def test_a_latent_model_exports_its_autoencoder_as_autoencoderkl(tmp_path: Path):
    """unet/ + scheduler/ + vae/ (diffcli's KL autoencoder as AutoencoderKL, scaling_factor =
    the run's scale factor); read back, the folder decodes the same images."""
    common = ["dataset=digits", "logger=none", "dataset.batch_size=32"]
    run_here(tmp_path, "train", "task=autoencoder", *common, "autoencoder.base_channels=8",
             "autoencoder.groups=4", "autoencoder.z_channels=2", "trainer.max_steps=2",
             "module.eval_images=4", "callbacks.reconstructions=null", "runs_root=ae")
    ae = next(tmp_path.glob("ae/*/*/checkpoints/last.ckpt"))
    run_here(tmp_path, "train", f"latent={ae}", *common, "model.base_channels=8",
             "model.groups=4", "model.channel_mults=[1]", "trainer.max_steps=2",
             "callbacks.preview=null")
    run = _run_dir(tmp_path)
    run_here(tmp_path, "export", "format=diffusers")
    folder = run / "export" / "diffusers"
    ours = diffcli.load(run)
    vae = json.loads((folder / "vae" / "config.json").read_text())
    assert vae["_class_name"] == "AutoencoderKL" and vae["latent_channels"] == 2
    assert vae["scaling_factor"] == pytest.approx(ours.opened.run.latent.scale_factor)
    back = diffcli.load(folder)
    assert back.opened.run.latent.pretrained and back.shape == ours.shape == (1, 8, 8)
    a, b = (pipe.sample(3, sampler="ddim", steps=2, output="float") for pipe in (ours, back))
    assert float((a - b).abs().max()) < 1e-4
