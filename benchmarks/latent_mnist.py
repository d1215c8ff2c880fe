"""Text-to-image latent diffusion on MNIST, measured: does "a handwritten digit seven" give a 7?

Three commands of the README, run through the real CLI:

1. ``diffcli train task=autoencoder`` - a KL-f4 autoencoder of the offline MNIST test split at
   32x32 (latents 4x8x8);
2. ``diffcli train latent=<it> latent.cache=true text_encoder=small`` - a U-Net with
   cross-attention on those latents, captioned by the template "a handwritten digit {word}",
   10% empty prompts (classifier-free guidance training);
3. ``diffcli sample prompt=[...] guidance=W`` - ``--n`` images, one tenth per prompt
   "a handwritten digit zero" .. "nine";

then the separate MNIST classifier of ``benchmarks/mnist_judge.py`` judges each image: prompt
accuracy = fraction showing the asked digit; FD-judge = Frechet distance of its features to
the real test images (lower is closer to real digits). Also the autoencoder's reconstruction
PSNR / SSIM (``diffcli sample ckpt=<autoencoder>``).

Run: ``python benchmarks/mnist_judge.py`` once, then ``python benchmarks/latent_mnist.py``
(``--ae-steps`` / ``--ldm-steps`` set the recipes; ``--reuse`` keeps trained runs under
``benchmarks/out/latent-mnist``). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_judge import (
    DATA,
    feature_distance,
    load_judge,
    predict,
    read_mnist_test,
    run_diffcli,  # noqa: E402
    to_input,
)

from diffcli.data.captions import number_word  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "latent-mnist"
DATASET = ["dataset=mnist", f"dataset.root={DATA}", "dataset.split=test",
           "dataset.image_size=32", "logger=none", "dataset.batch_size=64"]
PROMPTS = [f"a handwritten digit {number_word(str(d))}" for d in range(10)]


def train_autoencoder(steps: int, reuse: bool) -> Path:
    ckpt = OUT / "autoencoder" / "checkpoints" / "last.ckpt"
    if not (reuse and ckpt.is_file()):
        run_diffcli("train", "task=autoencoder", *DATASET, "autoencoder=kl_f4",
                    "autoencoder.base_channels=32", "autoencoder.groups=8",
                    "optimizer.lr=1e-3", f"trainer.max_steps={steps}",
                    f"hydra.run.dir={OUT / 'autoencoder'}")
    return ckpt


def train_ldm(autoencoder: Path, steps: int, reuse: bool) -> Path:
    ckpt = OUT / "ldm" / "checkpoints" / "last.ckpt"
    if not (reuse and ckpt.is_file()):
        run_diffcli("train", f"latent={autoencoder}", "latent.cache=true",
                    f"runs_root={OUT}", "text_encoder=small", *DATASET, "schedule=cosine",
                    "model.base_channels=64", "model.channel_mults=[1,2]",
                    "model.num_res_blocks=2", "model.transformer_levels=[0,1]",
                    "optimizer.lr=5e-4", f"trainer.max_steps={steps}", "callbacks.preview=null",
                    f"hydra.run.dir={OUT / 'ldm'}")
    return ckpt


def sample(ckpt: Path, n: int, steps: int, guidance: float) -> Path:
    prompts = "[" + ",".join(PROMPTS) + "]"
    run_diffcli("sample", f"ckpt={ckpt}", f"prompt={prompts}", f"guidance={guidance:g}",
                f"n={n}", "sampler=ddim", f"steps={steps}", "overwrite=true")
    return ckpt.parent.parent / "samples" / f"ddim-{steps}-w{guidance:g}" / "samples.npz"


def judge_samples(npz: Path) -> dict:
    data = np.load(npz)
    images = torch.from_numpy(data["images"]).permute(0, 3, 1, 2).float()  # (N, 1, 32, 32)
    small = F.interpolate(images, size=(28, 28), mode="bilinear", antialias=True)
    asked = torch.from_numpy(data["labels"])  # index of the prompt = the digit asked for
    judge = load_judge()
    pred, feats = predict(judge, to_input(small.round().clamp(0, 255).to(torch.uint8)))
    real_images, _ = read_mnist_test()
    _, real = predict(judge, to_input(real_images))
    per_digit = [float((pred[asked == d] == d).float().mean()) for d in range(10)]
    return {"accuracy": float((pred == asked).float().mean()), "per_digit": per_digit,
            "fd_judge": feature_distance(feats, real)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ae-steps", type=int, default=1300)
    parser.add_argument("--ldm-steps", type=int, default=2500)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 4.0])
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    ae = train_autoencoder(args.ae_steps, args.reuse)
    run_diffcli("sample", f"ckpt={ae}", "n=1000", "overwrite=true")
    recon = json.loads((ae.parent.parent / "samples" / "reconstructions" / "meta.json")
                       .read_text())
    ldm = train_ldm(ae, args.ldm_steps, args.reuse)
    rows = []
    for w in args.guidance:
        t0 = time.perf_counter()
        npz = sample(ldm, args.n, args.steps, w)
        rows.append({"guidance": w, **judge_samples(npz), "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nautoencoder KL-f4 ({args.ae_steps} steps): reconstruction PSNR "
          f"{recon['psnr']:.2f} dB, SSIM {recon['ssim']:.4f} on {recon['n']} images; LDM "
          f"{args.ldm_steps} steps; {args.n} samples, DDIM {args.steps} steps; total "
          f"{time.perf_counter() - start:.0f} s\n")
    print("| guidance w | prompt accuracy | worst digit | FD-judge | sampling s |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        worst = int(np.argmin(r["per_digit"]))
        print(f"| {r['guidance']:g} | {100 * r['accuracy']:.1f}% | {worst} "
              f"({100 * r['per_digit'][worst]:.0f}%) | {r['fd_judge']:.1f} | "
              f"{r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
