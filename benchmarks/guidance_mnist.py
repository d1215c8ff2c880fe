"""Guidance on MNIST, measured: does a guided sample show the digit it was asked for?

1. ``diffcli train`` a class-conditional U-Net on the offline MNIST test split with
   classifier-free guidance training (``conditional=true``, 10% null labels), and a noise-aware
   classifier (``task=classifier``) with the same schedule - both through the real CLI;
2. sample ``--n`` images (classes 0-9 in equal numbers, DDIM ``--steps``) at several
   classifier-free guidance scales w, and with classifier guidance of scale s on the same
   network's unconditional branch (w = 0: the network trained with null labels is an
   unconditional model);
3. judge them with the separate MNIST classifier of ``benchmarks/mnist_judge.py``: accuracy =
   fraction labelled as the requested class, and FD-judge = Frechet distance of the judge's
   features to the real test images (lower is closer to real digits; comparable only within
   this table); also NFE per sample and images/s at equal steps (the cost of guidance).

Run: ``python benchmarks/mnist_judge.py`` once, then ``python benchmarks/guidance_mnist.py``
(``--train-steps``/``--classifier-steps`` set the recipes; ``--reuse`` keeps trained runs under
``benchmarks/out/guidance-mnist``). Prints a markdown table.
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
from diffcli.guided_run import Guidance, guide  # noqa: E402
from diffcli.restore import make_sampler, open_run  # noqa: E402

OUT = Path(__file__).resolve().parent / "out" / "guidance-mnist"
COMMON = ["dataset=mnist", f"dataset.root={DATA}", "dataset.split=test", "logger=none",
          "schedule=cosine", "dataset.batch_size=64"]




def train_runs(steps: int, classifier_steps: int, reuse: bool) -> tuple[Path, Path]:
    """The conditional diffusion run and the classifier run (trained unless reused)."""
    model, clf = OUT / "model" / "checkpoints" / "last.ckpt", OUT / "classifier" / "checkpoints" \
        / "last.ckpt"
    if not (reuse and model.is_file()):
        run_diffcli("train", *COMMON, "conditional=true", "model=unet", "model.base_channels=32",
                "model.channel_mults=[1,2,2]", "model.num_res_blocks=1",
                f"trainer.max_steps={steps}", "callbacks.preview=null",
                f"hydra.run.dir={OUT / 'model'}")
    if not (reuse and clf.is_file()):
        run_diffcli("train", "task=classifier", *COMMON, f"trainer.max_steps={classifier_steps}",
                f"hydra.run.dir={OUT / 'classifier'}")
    return model, clf


def settings(classifier: Path) -> list[tuple[str, Guidance]]:
    rows = [(f"classifier-free, w = {w:g}", Guidance(scale=w)) for w in (0.0, 1.0, 2.0, 3.0)]
    rows += [(f"classifier, s = {s:g} (w = 0)", Guidance(scale=0.0, classifier=str(classifier),
                                                       classifier_scale=s))
             for s in (1.0, 3.0, 10.0)]
    return rows


def measure(model: Path, classifier: Path, n: int, steps: int) -> list[dict]:
    judge = load_judge()
    images, _ = read_mnist_test()
    _, real = predict(judge, to_input(images))
    device = torch.device("cpu")
    rows = []
    for name, g in settings(classifier):
        opened = open_run(model, use_ema=True, device=device)
        sampler, _ = make_sampler({"_target_": "diffcli.diffusion.samplers.ddim.DDIM"},
                                  opened.schedule, steps=steps, clip_denoised=True)
        guided = guide(opened, g, device)
        labels = guided.labels(n)
        start = time.perf_counter()
        x = generate(sampler, guided.denoiser, opened.info.shape, list(range(n)), 250, device,
                     labels=labels)
        seconds = time.perf_counter() - start
        pred, feats = predict(judge, to_input(to_uint8(x)))
        rows.append({"setting": name, "accuracy": float((pred == labels).float().mean()),
                     "fd_judge": feature_distance(feats, real),
                     "nfe": opened.counter.rows // n, "images_per_s": n / seconds})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--classifier-steps", type=int, default=800)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    start = time.perf_counter()
    model, clf = train_runs(args.train_steps, args.classifier_steps, args.reuse)
    rows = measure(model, clf, args.n, args.steps)
    print(f"\n{args.n} samples (classes 0-9, {args.n // 10} each), DDIM {args.steps} steps, "
          f"EMA weights; model {args.train_steps} steps, classifier {args.classifier_steps} "
          f"steps; total {time.perf_counter() - start:.0f} s\n")
    print("| guidance | judge accuracy | FD-judge | NFE / sample | images/s |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['setting']} | {100 * r['accuracy']:.1f}% | {r['fd_judge']:.1f} | "
              f"{r['nfe']} | {r['images_per_s']:.1f} |")


if __name__ == "__main__":
    main()
