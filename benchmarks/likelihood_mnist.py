"""L_simple vs L_hybrid vs L_vlb on MNIST: bits/dim, sample quality, and fast DDPM sampling.

Trains three U-Nets on the offline MNIST test split through the real CLI (same net, schedule,
steps and seed): ``loss=simple`` (fixed variances), ``model.learn_sigma=true loss=hybrid`` and
``model.learn_sigma=true loss=vlb`` (Nichol & Dhariwal 2021). For each:

* ``diffcli eval-nll`` bits/dim with its 95% interval on ``--n`` test images (the VLB over
  ``--terms`` terms, one per geometric stratum of t: an estimate of the full bound);
* FD-judge of ``--samples`` DDPM samples at ``--fast`` respaced steps and at all T steps: the
  Frechet distance in the features of the MNIST judge (``benchmarks/mnist_judge.py``), lower
  is better - the FID proxy of this table. Improved DDPM's Fig. 8: with learned variances,
  few-step DDPM is close to its T-step quality; with fixed variances it is not.

Run: ``python benchmarks/mnist_judge.py`` once, then ``python benchmarks/likelihood_mnist.py``
(``--reuse`` keeps trained runs under ``benchmarks/out/likelihood-mnist``). Prints a markdown
table. The papers' CIFAR-10 figures are the reference: DDPM (L_simple) <= 3.70 bits/dim,
Improved DDPM (L_vlb) 2.94.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_judge import (  # noqa: E402
    DATA,
    feature_distance,
    load_judge,
    predict,
    read_mnist_test,
    run_diffcli,
    to_input,
)

from diffcli.diffusion.generate import generate, to_uint8  # noqa: E402
from diffcli.restore import make_sampler, open_run  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "likelihood-mnist"
COMMON = ["dataset=mnist", f"dataset.root={DATA}", "dataset.split=test", "logger=none",
          "schedule=cosine", "dataset.batch_size=64", "model=unet", "model.base_channels=32",
          "model.channel_mults=[1,2,2]", "callbacks.preview=null"]
VARIANTS = {"L_simple": ["loss=simple"],
            "L_hybrid": ["model.learn_sigma=true", "loss=hybrid"],
            "L_vlb": ["model.learn_sigma=true", "loss=vlb"]}




def train(name: str, steps: int, reuse: bool) -> Path:
    ckpt = OUT / name / "checkpoints" / "last.ckpt"
    if not (reuse and ckpt.is_file()):
        run_diffcli("train", *COMMON, *VARIANTS[name], f"trainer.max_steps={steps}",
                f"hydra.run.dir={OUT / name}")
    return ckpt


def nll(ckpt: Path, n: int, terms: int) -> dict:
    out = OUT / f"{ckpt.parent.parent.name}-nll.json"
    run_diffcli("eval-nll", f"ckpt={ckpt}", f"n={n}", f"steps={terms}", f"out={out}")
    return json.loads(out.read_text())["results"]["vlb"]


def fd_judge(ckpt: Path, steps: int, n: int, real: torch.Tensor) -> float:
    judge = load_judge()
    opened = open_run(ckpt, use_ema=True, device=torch.device("cpu"))
    sampler, _ = make_sampler({"_target_": "diffcli.diffusion.samplers.ddpm.DDPM",
                               "grid": "linspace"}, opened.schedule, steps=steps,
                              clip_denoised=True)
    x = generate(sampler, opened.denoiser, opened.info.shape, list(range(n)), 250,
                 torch.device("cpu"))
    _, feats = predict(judge, to_input(to_uint8(x)))
    return feature_distance(feats, real)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=800)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--terms", type=int, default=50)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--fast", type=int, default=25)
    parser.add_argument("--full", type=int, default=250)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    images, _ = read_mnist_test()
    _, real = predict(load_judge(), to_input(images))
    rows = []
    for name in VARIANTS:
        ckpt = train(name, args.train_steps, args.reuse)
        vlb = nll(ckpt, args.n, args.terms)
        fast = fd_judge(ckpt, args.fast, args.samples, real)
        full = fd_judge(ckpt, args.full, args.samples, real) if args.full else float("nan")
        rows.append((name, vlb, fast, full))
        print(json.dumps({"loss": name, "bpd": vlb["bits_per_dim"], "fd_fast": fast,
                          "fd_full": full}), flush=True)
    print(f"\nMNIST test split, cosine T=1000, {args.train_steps} steps, batch 64; bits/dim: VLB "
          f"over {args.terms} stratified terms on {args.n} images; FD-judge of "
          f"{args.samples} DDPM samples; total {time.perf_counter() - start:.0f} s\n")
    print(f"| loss | bits/dim (95% interval) | FD-judge, DDPM {args.fast} steps | "
          f"FD-judge, DDPM {args.full} steps |")
    print("| --- | ---: | ---: | ---: |")
    for name, vlb, fast, full in rows:
        print(f"| {name} | {vlb['bits_per_dim']:.3f} ({vlb['ci95_low']:.3f}-"
              f"{vlb['ci95_high']:.3f}) | {fast:.1f} | {full:.1f} |")


if __name__ == "__main__":
    main()
