"""Latent diffusion and text-to-image from the command line, on tiny runs trained here.

Runs (a few steps each, in this process, on the bundled 8x8 digits): two KL-f4 autoencoders
(``task=autoencoder``, seeds 0 and 1), a text-to-image U-Net trained on the first one's cached
latents with the small text encoder and captions from the template, and a pixel-space model.
Then: sample with prompts, reconstructions, rFID, latent NLL and noise-viz work with no extra
flags; a changed autoencoder, a resume against another one and every bad input are one line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_bad_inputs import run_in_process
from test_conditional_cli import assert_refused, train_runs

DIGITS = ["dataset=digits", "logger=none", "dataset.batch_size=32"]
AE = ["train", "task=autoencoder", *DIGITS, "autoencoder.base_channels=8", "autoencoder.groups=4",
      "autoencoder.z_channels=2", "trainer.max_steps=3", "module.eval_images=8",
      "callbacks.reconstructions.every_n_steps=2"]
LDM = [*DIGITS, "text_encoder=small", "text_encoder.width=16", "text_encoder.depth=1",
       "model.base_channels=8", "model.groups=4", "model.channel_mults=[1]",
       "trainer.max_steps=2", "callbacks.preview=null", "latent.cache=true"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    cwd = tmp_path_factory.mktemp("latent")
    out = train_runs(cwd, {"ae": AE, "ae2": [*AE, "seed=1"],
                           "pixel": ["train", *DIGITS, "model.base_channels=8", "model.groups=4",
                                     "model.channel_mults=[1]", "trainer.max_steps=1",
                                     "callbacks.preview=null", "objective=ddpm"]})
    moved = cwd / "ae-copy.ckpt"  # the LDM is trained on this file, later replaced
    shutil.copy(out["ae"], moved)
    out |= train_runs(cwd, {"ldm": ["train", f"latent={moved}", *LDM, "objective=ddpm"],
                            "flow": ["train", "experiment=flow_t2i_mnist", f"latent={moved}",
                                     *LDM, "dataset.image_size=8", "model.transformer_levels=[0]"]})
    out["ae_copy"] = moved
    return out


def _ok(args: list[str], runs, monkeypatch, capsys) -> list[str]:
    code, lines = run_in_process(args, runs["cwd"], monkeypatch, capsys)
    assert code in (0, None), lines
    return lines


def test_the_autoencoder_run_writes_reconstruction_grids_and_metrics(runs, monkeypatch, capsys):
    run_dir = runs["ae"].parent.parent
    grids = sorted((run_dir / "progress").glob("recon-step-*.png"))
    assert [p.name for p in grids] == ["recon-step-0000002.png"]
    lines = _ok(["sample", f"ckpt={runs['ae']}", "n=6"], runs, monkeypatch, capsys)
    out = run_dir / "samples" / "reconstructions"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["n"] == 6 and meta["psnr"] > 0 and -1 <= meta["ssim"] <= 1
    data = np.load(out / "samples.npz")
    assert data["images"].shape == data["originals"].shape == (6, 8, 8, 1)
    assert "PSNR" in " ".join(lines)
    width, height = Image.open(out / "grid.png").size
    assert width > height  # one row of inputs above one row of reconstructions


def test_the_latent_run_records_its_autoencoder_and_scale(runs):
    from diffcli.checkpoint import load_checkpoint
    from diffcli.nets.latent import file_sha256

    run = load_checkpoint(runs["ldm"])
    assert run.latent is not None and run.latent.shape == (2, 2, 2)
    assert run.latent.source == str(runs["ae_copy"].resolve())
    assert run.latent.sha256 == file_sha256(runs["ae_copy"])
    assert run.latent.scale_factor > 0 and run.data_info().shape == (1, 8, 8)
    assert not any(k.startswith("latent") for k in run.state_dict)  # the autoencoder is not copied
    assert list((runs["cwd"] / "outputs" / "latent-cache").glob("digits-*-ae*.pt"))


def test_prompted_samples_are_decoded_images_with_one_row_per_prompt(runs, monkeypatch, capsys):
    _ok(["sample", f"ckpt={runs['ldm']}", "sampler=ddim", "steps=2", "n=4", "guidance=4",
         "prompt=[a handwritten digit seven,a handwritten digit one]"], runs, monkeypatch, capsys)
    out = runs["ldm"].parent.parent / "samples" / "ddim-2-w4"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["prompts"] == ["a handwritten digit seven", "a handwritten digit one"]
    assert meta["nfe"] == 4  # conditional and empty-prompt halves
    data = np.load(out / "samples.npz")
    assert data["images"].shape == (4, 8, 8, 1) and data["labels"].tolist() == [0, 0, 1, 1]


def test_evaluations_and_pictures_of_latent_and_autoencoder_runs(runs, monkeypatch, capsys):
    lines = _ok(["eval-fid", f"ckpt={runs['ae']}", "n=16", "ref_n=16", "extractor=standin",
                 "batch_size=8", "cache=false"], runs, monkeypatch, capsys)
    record = json.loads(next((runs["ae"].parent.parent / "eval").glob("rfid-n16*.json"))
                        .read_text())
    assert record["summary"]["fid"]["mean"] >= 0 and record["generated"]["psnr"] > 0
    assert any("PSNR" in ln for ln in lines)
    _ok(["eval-nll", f"ckpt={runs['ldm']}", "n=4", "steps=2", "batch_size=4"], runs,
        monkeypatch, capsys)
    record = json.loads(next((runs["ldm"].parent.parent / "eval").glob("nll-vlb-*.json"))
                        .read_text())
    assert record["space"] == "latent" and record["latent_shape"] == [2, 2, 2]
    _ok(["noise-viz", f"ckpt={runs['ldm']}", "steps=2", "num_images=1", "image_size=8",
         "sampler=ddim", "reverse_columns=2", "prompt=a handwritten digit three", "guidance=2"],
        runs, monkeypatch, capsys)
    viz = runs["ldm"].parent.parent / "viz"
    assert (viz / "reverse.png").is_file() and (viz / "forward-latent.png").is_file()


def test_a_changed_or_other_autoencoder_is_refused(runs, monkeypatch, capsys):
    cwd = runs["cwd"]
    other = [(["train", f"latent={runs['ae2']}", *LDM, "trainer.max_steps=3",
               f"ckpt_path={runs['ldm']}", "objective=ddpm"], "another autoencoder", 1)]
    assert_refused(other, cwd, monkeypatch, capsys)
    saved = runs["ae_copy"].read_bytes()
    try:
        shutil.copy(runs["ae2"], runs["ae_copy"])
        code, lines = run_in_process(["sample", f"ckpt={runs['ldm']}", "n=2", "steps=2",
                                      "sampler=ddim"], cwd, monkeypatch, capsys)
        assert code == 1 and len(lines) == 1 and "changed since" in lines[0], lines
        runs["ae_copy"].unlink()
        code, lines = run_in_process(["sample", f"ckpt={runs['ldm']}", "n=2", "steps=2",
                                      "sampler=ddim"], cwd, monkeypatch, capsys)
        assert code == 1 and len(lines) == 1 and "is missing" in lines[0], lines
    finally:
        runs["ae_copy"].write_bytes(saved)


def _captioned_folder(root: Path, lines: list[str], images: int = 2) -> Path:
    root.mkdir()
    for i in range(images):
        Image.new("L", (8, 8), color=40 * i).save(root / f"{i}.png")
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_bad_latent_and_caption_inputs_are_one_line(runs, monkeypatch, capsys, tmp_path):
    no_text = _captioned_folder(tmp_path / "no-text", ['{"file_name": "0.png", "text": "a"}',
                                                       '{"file_name": "1.png"}'])
    missing = _captioned_folder(tmp_path / "missing", ['{"file_name": "0.png", "text": "a"}'])
    folder = ["train", "text_encoder=small", "dataset=imagefolder", "dataset.image_size=8",
              "logger=none"]
    cases = [
        (["train", f"latent={runs['pixel']}", *DIGITS], "not an autoencoder", 2),
        (["train", f"latent={runs['ldm']}", *DIGITS], "not an autoencoder", 2),
        (["train", "latent.pretrained=/no/such/vae", *DIGITS], "no such folder", 2),
        (["train", "latent=/no/such.ckpt", *DIGITS], "no such autoencoder checkpoint", 2),
        ([*folder, f"dataset.root={no_text}"], 'line 2 (1.png) has no "text"', 1),
        ([*folder, f"dataset.root={missing}"], "1.png has no caption", 1),
        (["train", "text_encoder=small", "conditional=true", *DIGITS], "pick one", 2),
        (["sample", f"ckpt={runs['ldm']}", "classes=3"], "prompt=", 2),
        (["sample", f"ckpt={runs['ldm']}", "guidance=3"], "needs a prompt", 2),
        (["sample", f"ckpt={runs['pixel']}", "prompt=a cat"], "not text-conditional", 2),
        (["sample", f"ckpt={runs['ae']}", "prompt=a cat"], "takes no prompt", 1),
    ]
    assert_refused(cases, runs["cwd"], monkeypatch, capsys)


def test_latent_auto_takes_the_newest_autoencoder_and_odd_latents_train(runs, monkeypatch,
                                                                         capsys):
    """latent=auto picks the newest autoencoder run (ae2); its 2x2 latents, which a 3-level
    U-Net cannot halve twice, are padded by the U-Net instead of refused."""
    args = ["train", "latent=auto", f"runs_root={runs['cwd']}", *DIGITS,
            "model.channel_mults=[1,2,2]", f"hydra.run.dir={runs['cwd'] / 'odd'}",
            "trainer.max_steps=2", "callbacks.preview=null"]
    code, lines = run_in_process(args, runs["cwd"], monkeypatch, capsys)
    text = " ".join(lines)
    assert code in (0, None) and str(runs["ae2"]) in text.replace(" ", ""), lines
    assert (runs["cwd"] / "odd" / "checkpoints" / "last.ckpt").is_file()


def test_latents_the_unet_levels_do_not_halve_train_and_sample(runs, monkeypatch, capsys):
    """2x2 latents through a 3-level U-Net (multiples of 4), as 28x28 MNIST at f4 gives 7x7:
    the U-Net pads them, trains and samples; diffusers and ONNX, which do not pad, refuse."""
    keep = [a for a in LDM if not a.startswith(("model.channel_mults", "text_encoder"))]
    args = ["train", f"latent={runs['ae']}", *keep, "model.channel_mults=[1,2,2]"]
    _ok(args, runs, monkeypatch, capsys)
    ckpt = max(runs["cwd"].glob("outputs/*/*/checkpoints/last.ckpt"),
               key=lambda p: p.stat().st_mtime)
    _ok(["sample", f"ckpt={ckpt}", "n=3", "steps=2", "sampler=ddim"], runs, monkeypatch, capsys)
    images = np.load(next(ckpt.parent.parent.glob("samples/ddim-2/samples.npz")))["images"]
    assert images.shape == (3, 8, 8, 1)
    for fmt in ("diffusers", "onnx"):
        code, lines = run_in_process(["export", f"ckpt={ckpt}", f"format={fmt}"], runs["cwd"],
                                     monkeypatch, capsys)
        assert code == 1 and "pads its 2x2 inputs to multiples of 4" in lines[-1], lines


def test_a_latent_cache_that_cannot_be_written_is_one_warning_and_training_goes_on(
        runs, tmp_path: Path, monkeypatch, capsys):
    """A full disk under the cache: one warning line naming the file; the run trains from the
    moments it encoded and leaves no partial cache file."""
    import errno
    import os

    from diffcli.files import atomic_write

    def full(path, write):  # noqa: ANN001, ANN202 - the cache's atomic write meets ENOSPC
        if "latent-cache" not in str(path):
            return atomic_write(path, write)
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("diffcli.checkpoint.atomic_write", full)
    code, lines = run_in_process(["train", f"latent={runs['ae']}", *LDM], tmp_path, monkeypatch,
                                 capsys)
    assert code in (0, None), lines
    warned = [ln for ln in lines if ln.startswith("warning: latent cache")]
    assert len(warned) == 1 and "No space left on device" in warned[0], lines
    assert not list(tmp_path.glob("outputs/latent-cache/*")) and os.path.isdir(tmp_path / "outputs")
    assert list(tmp_path.glob("outputs/*/*/checkpoints/last.ckpt"))


READS = {  # command line -> the runs whose checkpoint it reads ({name}: a copy of that run)
    "sample": (["sample", "ckpt={pixel}", "n=2", "steps=2"], ["pixel"]),
    "sample-latent": (["sample", "ckpt={ldm}", "n=2", "steps=2", "prompt=a"], ["ldm", "ae"]),
    "noise-viz": (["noise-viz", "reverse=true", "ckpt={pixel}", "steps=2", "num_images=1",
                   "image_size=8", "schedules=[linear]"], ["pixel"]),
    "export": (["export", "ckpt={pixel}", "format=safetensors"], ["pixel"]),
    "eval-nll": (["eval-nll", "ckpt={pixel}", "n=2", "steps=2", "method=vlb"], ["pixel"]),
    "eval-fid": (["eval-fid", "ckpt={pixel}", "n=4", "ref_n=8", "steps=2", "extractor=standin",
                  "metrics=[fid]", "cache=false", "batch_size=4"], ["pixel"]),
    "train-resume": (["train", "ckpt_path={pixel}", *DIGITS, "model.base_channels=8",
                      "model.groups=4", "model.channel_mults=[1]", "trainer.max_steps=2",
                      "callbacks.preview=null", "objective=ddpm", "hydra.run.dir={here}/resumed"],
                     ["pixel"]),
}


@pytest.mark.parametrize("name", list(READS))
def test_each_command_reads_each_checkpoint_once(name, runs, tmp_path, monkeypatch, capsys):
    """``torch.load`` runs once per checkpoint file in one command: what its check read is
    handed to its run (and to Lightning's restore); a latent model's autoencoder is read once
    too (redesign, issue 33)."""
    import os

    import torch

    import diffcli.checkpoint

    copies = {"pixel": tmp_path / "pixel", "ldm": tmp_path / "ldm"}
    for key, folder in copies.items():
        shutil.copytree(runs[key].parent.parent, folder)
    files = {"pixel": copies["pixel"] / "checkpoints" / "last.ckpt",
             "ldm": copies["ldm"] / "checkpoints" / "last.ckpt", "ae": runs["ae_copy"]}
    args, read = READS[name]
    args = [a.format(here=tmp_path, **files) for a in args]
    loads: dict[Path, int] = {}
    reads: list[Path] = []
    torch_load, read_checkpoint = torch.load, diffcli.checkpoint.read_checkpoint

    def counted_load(f, *a, **k):  # noqa: ANN001, ANN002, ANN003, ANN202
        if isinstance(f, str | os.PathLike):
            loads[Path(f).resolve()] = loads.get(Path(f).resolve(), 0) + 1
        return torch_load(f, *a, **k)

    def counted_read(path):  # noqa: ANN001, ANN202
        reads.append(Path(path).resolve())
        return read_checkpoint(path)

    monkeypatch.setattr(torch, "load", counted_load)
    monkeypatch.setattr(diffcli.checkpoint, "read_checkpoint", counted_read)
    code, lines = run_in_process(args, tmp_path, monkeypatch, capsys)
    assert code in (0, None), lines
    expected = {files[k].resolve(): 1 for k in read}
    assert loads == expected, lines
    assert sorted(reads) == sorted(expected)


def test_the_flow_text_to_image_preset_trains_and_follows_prompts(runs, monkeypatch, capsys):
    """experiment=flow_t2i_mnist (SD3's recipe at our scale) on the tiny latents: a flow model
    that samples with prompts and guidance."""
    from diffcli.checkpoint import load_checkpoint

    run = load_checkpoint(runs["flow"])
    assert run.continuous.name == "flow" and run.continuous.t_sampling == "logit_normal"
    assert run.config["dataset"]["name"] == "digits" and run.latent is not None
    lines = _ok(["sample", f"ckpt={runs['flow']}", "prompt=[a handwritten digit seven]",
                 "guidance=3", "sampler=euler", "steps=3", "n=2"], runs, monkeypatch, capsys)
    out = runs["flow"].parent.parent / "samples"
    meta = json.loads(next(out.glob("*/meta.json")).read_text())
    assert meta["prompts"] == ["a handwritten digit seven"] and meta["nfe"] == 6, lines
