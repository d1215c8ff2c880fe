"""Text-to-image latent diffusion on MNIST, measured: does "a handwritten digit seven" give a 7?

The README's commands, run through the real CLI with every setting pinned in the preset:

1. ``diffcli train task=autoencoder`` - a KL-f4 autoencoder of the offline MNIST test split at
   32x32 (latents 4x8x8); ``diffcli sample ckpt=<it>``: its reconstructions of the first
   ``recon_n`` test images, with PSNR / SSIM;
2. ``diffcli train latent=<it> latent.cache=true text_encoder=small`` - a U-Net with
   cross-attention on those latents, captioned by the template "a handwritten digit {word}",
   10% empty prompts (classifier-free guidance training);
3. ``diffcli sample prompt=[...] guidance=W`` - ``n`` images, one tenth per prompt
   "a handwritten digit zero" .. "nine", for each W of ``guidance``;

then the separate MNIST classifier of ``benchmarks/mnist_judge.py`` judges each image (resized
32 -> 28): prompt accuracy = fraction showing the asked digit; FD-judge = Frechet distance of
its features to the 10,000 real 28x28 test images' (lower is closer to real digits). For scale
it also judges the real test digits after the same 28 -> 32 -> 28 resizing, and the
autoencoder's reconstructions of them.

Run: ``python -m benchmarks run mnist_judge`` once (the judge's weights), then
``python -m benchmarks run latent_mnist`` (writes docs/results/latent_mnist.json and the tables
in docs/latent.md; runs go under ``benchmarks/out/latent_mnist``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.core import Benchmark, composed, finished_before, mark_finished
from benchmarks.likelihood_mnist import judge_for, judge_sha256
from benchmarks.mnist_judge import (
    DATA,
    feature_distance,
    predict,
    read_mnist_test,
    run_diffcli,
    to_input,
)
from benchmarks.mnist_judge import PRESET as JUDGE
from benchmarks.mnist_judge import training as judge_training
from diffcli.data.captions import number_word

PROMPTS = [f"a handwritten digit {number_word(str(d))}" for d in range(10)]
DATASET = ["dataset=mnist", "dataset.split=test", "dataset.image_size=32",
           "dataset.batch_size=64", "dataset.random_flip=false", "dataset.num_workers=0",
           "seed=0", "logger=none", "trainer.precision=32", "trainer.accumulate_grad_batches=1",
           "trainer.gradient_clip_val=1.0", "optimizer=adam", "optimizer.betas=[0.9,0.999]",
           "optimizer.eps=1e-8", "optimizer.weight_decay=0.0",
           # a constant learning rate after a 100-step warm-up (the recipe of the table)
           "lr_scheduler=warmup", "lr_scheduler.warmup_steps=100"]
AUTOENCODER = [
    "task=autoencoder", *DATASET, "autoencoder=kl_f4", "autoencoder.z_channels=4",
    "autoencoder.base_channels=32", "autoencoder.channel_mults=[1,2,2]",
    "autoencoder.num_res_blocks=1", "autoencoder.mid_attention=true", "autoencoder.groups=8",
    "autoencoder.dropout=0.0", "autoencoder.downsample_padding=0",
    "module.l1_weight=1.0", "module.l2_weight=0.0", "module.kl_weight=1e-6",
    "module.perceptual_weights=null", "module.disc_start=null", "module.ema_decay=null",
    "optimizer.lr=1e-3", "trainer.max_steps=1300",
]
LDM = [
    *DATASET, "latent.cache=true", "latent.sample=true", "latent.scale_factor=null",
    "text_encoder=small", "text_encoder.vocab_size=4096", "text_encoder.max_length=16",
    "text_encoder.width=128", "text_encoder.depth=2", "text_encoder.heads=4",
    "dataset.caption='a handwritten digit {word}'",
    "schedule=cosine", "schedule.num_timesteps=1000", "schedule.s=0.008",
    "schedule.max_beta=0.999",
    "model=unet", "model.base_channels=64", "model.channel_mults=[1,2]",
    "model.num_res_blocks=2", "model.dropout=0.0", "model.groups=8",
    "model.attention_resolutions=[]", "model.attention_levels=null", "model.mid_attention=null",
    "model.resblock_updown=false", "model.use_scale_shift_norm=false",
    "model.transformer_levels=[0,1]", "model.transformer_resolutions=[]",
    "model.transformer_depth=1", "model.transformer_heads=4", "model.mid_transformer=null",
    "model.learn_sigma=false", "loss=simple",
    "module.prediction=eps", "module.min_snr_gamma=null", "module.ema_sigma_rel=null",
    "module.ema_decay=0.995", "module.ema_warmup=true", "module.cond_drop_prob=0.1",
    "optimizer.lr=5e-4", "trainer.max_steps=2500", "callbacks.preview=null",
    "callbacks.fid_proxy=null",
]
# an autoencoder's `diffcli sample` reconstructs and ignores the sampler; it is pinned so that
# a move of the default sampler cannot stale the result
RECONSTRUCT = ["n=1000", "batch_size=256", "use_ema=true", "overwrite=true", "sampler=dpmpp_3m"]
SAMPLE = ["prompt=[" + ",".join(PROMPTS) + "]", "n=500", "seed=0", "batch_size=256",
          "sampler=ddim", "steps=50", "sampler.eta=0.0", "sampler.grid=trailing",
          "sampler.dynamic_threshold=null", "clip_denoised=null", "use_ema=true",
          "precision=32", "guidance_rescale=0.0", "guidance_interval=null", "overwrite=true"]
COMMANDS = {"autoencoder": "train", "ldm": "train", "reconstruct": "sample", "sample": "sample"}


def overrides(settings: Mapping[str, Any], stage: str) -> list[str]:
    """Stage ``stage``'s pinned overrides plus the smoke run's ``tiny`` ones (later wins)."""
    return [*settings["stages"][stage], *settings["tiny"].get(stage, [])]


def resolve(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings, each stage's overrides replaced by the config they compose."""
    stages = {stage: composed(COMMANDS[stage], overrides(settings, stage))
              for stage in settings["stages"]}
    return {**{k: v for k, v in settings.items() if k not in ("stages", "tiny")},
            "stages": stages, "judge": judge_training(JUDGE)}


def judged(images: np.ndarray, asked: torch.Tensor, judge: torch.nn.Module,
           real: torch.Tensor) -> dict[str, Any]:
    """Judge uint8 images (N, 32, 32, 1) resized to 28x28 against the digits ``asked`` (N,):
    accuracy, accuracy per digit (None: none asked) and FD-judge to the ``real`` features."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    small = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True)
    pred, feats = predict(judge, to_input(small.round().clamp(0, 255).to(torch.uint8)))
    per_digit = [float((pred[asked == d] == d).float().mean()) if (asked == d).any() else None
                 for d in range(10)]
    return {"n": len(x), "accuracy": float((pred == asked).float().mean()),
            "per_digit": per_digit, "fd_judge": feature_distance(feats, real)}


def train(settings: Mapping[str, Any], stage: str, run_dir: Path, *extra: str) -> Path:
    args = ["train", *overrides(settings, stage), f"dataset.root={DATA}", *extra,
            f"hydra.run.dir={run_dir}"]
    if not finished_before(run_dir, args):
        run_diffcli(*args)
        mark_finished(run_dir, args)
    return run_dir / "checkpoints" / "last.ckpt"


def measure(settings: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Train the autoencoder, reconstruct, train the latent U-Net, sample each guidance scale;
    judge the real digits, the reconstructions and the samples."""
    judge = judge_for(settings)
    images, labels = read_mnist_test()
    _, real = predict(judge, to_input(images))
    ae = train(settings, "autoencoder", workdir / "autoencoder")
    run_diffcli("sample", f"ckpt={ae}", *overrides(settings, "reconstruct"))
    recon_dir = ae.parent.parent / "samples" / "reconstructions"
    recon = json.loads((recon_dir / "meta.json").read_text())
    npz = np.load(recon_dir / "samples.npz")
    truth = labels[:len(npz["images"])]
    rows = [{"what": "real", **judged(npz["originals"], truth, judge, real)},
            {"what": "reconstructions", **judged(npz["images"], truth, judge, real)}]
    ldm = train(settings, "ldm", workdir / "ldm", f"latent.ckpt={ae}", f"runs_root={workdir}")
    args = overrides(settings, "sample")
    for w in settings["guidance"]:
        t0 = time.perf_counter()
        out = sample(ldm, args, w)
        drawn, meta = np.load(out / "samples.npz"), json.loads((out / "meta.json").read_text())
        asked = torch.from_numpy(drawn["labels"]).long()
        rows.append({"what": "samples", "guidance": w, "steps": meta["steps"], "nfe": meta["nfe"],
                     **judged(drawn["images"], asked, judge, real),
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    return {"reconstruction": {"n": recon["n"], "psnr": recon["psnr"], "ssim": recon["ssim"],
                               "steps": recon["global_step"]},
            "rows": rows, "judge_sha256": judge_sha256(settings)}


def sample(ckpt: Path, args: Sequence[str], guidance: float) -> Path:
    """``diffcli sample`` of ``ckpt`` at guidance scale ``guidance``; its output folder."""
    run_diffcli("sample", f"ckpt={ckpt}", *args, f"guidance={guidance:g}")
    return ckpt.parent.parent / "samples" / f"ddim-{value(args, 'steps')}-w{guidance:g}"


def value(args: Sequence[str], key: str) -> str:
    """The value the last ``key=...`` of ``args`` gives."""
    return [a.split("=", 1)[1] for a in args if a.startswith(f"{key}=")][-1]


def reconstruction_table(result: Mapping[str, Any]) -> str:
    r = result["reconstruction"]
    return "\n".join(["| autoencoder | training steps | images | PSNR (dB) | SSIM |",
                      "| --- | ---: | ---: | ---: | ---: |",
                      f"| KL-f4, latents 4x8x8 | {r['steps']} | {r['n']} | {r['psnr']:.2f} | "
                      f"{r['ssim']:.4f} |"])


def _label(row: Mapping[str, Any]) -> str:
    if row["what"] == "real":
        return "real test digits (28 -> 32 -> 28)"
    if row["what"] == "reconstructions":
        return "their autoencoder reconstructions"
    w = row["guidance"]
    return f"samples, w = {w:g}" + (" (conditional, no guidance)" if w == 1 else "")


def prompt_table(result: Mapping[str, Any]) -> str:
    """Judge accuracy (of the asked digit: the prompt's, or the real label), worst digit,
    FD-judge, and for samples the network evaluations per image and the sampling time."""
    lines = ["| images | n | accuracy (judge) | worst digit | FD-judge | NFE / sample | "
             "sampling s |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["rows"]:
        seen = [(a, d) for d, a in enumerate(r["per_digit"]) if a is not None]
        acc, worst = min(seen)
        sampled = r["what"] == "samples"
        nfe = r["nfe"] if sampled else "-"
        secs = f"{r['seconds']:.0f}" if sampled else "-"
        lines.append(f"| {_label(r)} | {r['n']} | {100 * r['accuracy']:.1f}% | {worst} "
                     f"({100 * acc:.0f}%) | {r['fd_judge']:.1f} | {nfe} | {secs} |")
    return "\n".join(lines)


BENCHMARK = Benchmark(
    name="latent_mnist", title="latent text-to-image on MNIST: reconstructions, prompt accuracy",
    preset={"stages": {"autoencoder": AUTOENCODER, "ldm": LDM, "reconstruct": RECONSTRUCT,
                       "sample": SAMPLE},
            "tiny": {}, "guidance": [1.0, 4.0], "seeds": [0], "judge_epochs": None},
    smoke={"tiny": {"autoencoder": ["trainer.max_steps=2", "lr_scheduler.warmup_steps=1",
                                    "dataset.batch_size=8", "autoencoder.base_channels=8"],
                    "ldm": ["trainer.max_steps=2", "lr_scheduler.warmup_steps=1",
                            "dataset.batch_size=8", "model.base_channels=8",
                            "model.channel_mults=[1]", "model.num_res_blocks=1",
                            "model.transformer_levels=[0]", "text_encoder.width=16",
                            "text_encoder.depth=1",
                            "latent.cache=false"],  # encoding all 10,000 images: seconds
                    "reconstruct": ["n=20"], "sample": ["n=20", "steps=2"]},
           "guidance": [4.0], "judge_epochs": 0},
    run=measure, tables={"reconstructions": reconstruction_table, "prompts": prompt_table},
    resolve=resolve)
