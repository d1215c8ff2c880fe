"""Sampling throughput (images/s) of the small U-Net, under inference mode, one sampler step = one
network evaluation. Run: `python -m benchmarks run sample_throughput` (writes
docs/results/sample_throughput.json and the table in docs/samplers.md).

Measures the network as `diffcli sample` runs it (DDIM, linear schedule, fp32 on CPU; bf16
autocast added on CUDA when available). Untrained weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from benchmarks.core import Benchmark, markdown_table  # noqa: E402
from diffcli.diffusion.samplers import DDIM, Denoiser  # noqa: E402
from diffcli.diffusion.schedules import linear_schedule  # noqa: E402
from diffcli.nets.unet import UNet  # noqa: E402

CASES = [  # (name, channels, size, UNet kwargs)
    ("digits 8x8 (default)", 1, 8, {}),
    ("digits 16x16", 1, 16, {}),
    ("MNIST 28x28", 1, 28, {}),
    ("RGB 32x32", 3, 32, {}),
]
CUDA_CASES = [  # only on a GPU: the 35.7M DDPM CIFAR-10 net (experiment=ddpm_cifar10)
    ("DDPM CIFAR-10 net 32x32", 3, 32,
     dict(base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
          attention_resolutions=(16,), image_size=32, groups=32)),
]


def images_per_second(net: torch.nn.Module, shape: tuple, batch: int, steps: int,
                      device: torch.device, bf16: bool) -> float:
    den = Denoiser(net, linear_schedule(), "eps")
    noise = torch.randn(batch, *shape, device=device)
    ctx = (torch.autocast("cuda", dtype=torch.bfloat16) if bf16
           else torch.autocast("cpu", enabled=False))
    with ctx:
        DDIM(steps=2).sample(den, noise)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        DDIM(steps=steps).sample(den, noise)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch / (time.perf_counter() - t0)


def measure(settings: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """images/s of each case of ``settings`` (``cases``: names of :data:`CASES`; ``batches``,
    ``steps``) on this machine's device; rows for the table."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(int(settings["seed"]))
    cases = [c for c in CASES + (CUDA_CASES if device.type == "cuda" else [])
             if c[0] in settings["cases"] or device.type == "cuda"]
    rows = []
    for name, ch, size, kw in cases:
        net = UNet(in_channels=ch, **kw).to(device).eval()
        params = sum(p.numel() for p in net.parameters())
        for batch in settings["batches"]:
            ips = images_per_second(net, (ch, size, size), batch, settings["steps"], device,
                                    bf16=device.type == "cuda")
            rows.append({"data": name, "params": params, "batch": batch, "images_per_s": ips,
                         "ms_per_call": 1000 * batch / ips / settings["steps"]})
            print(json.dumps(rows[-1]), flush=True)
    return {"device": device.type, "rows": rows}


def table(result: Mapping[str, Any]) -> str:
    return markdown_table(
        ["data", "params", "batch", "images/s", "ms per network call"], "lrrrr",
        [[r["data"], f"{r['params']:,}", r["batch"], f"{r['images_per_s']:.1f}",
          f"{r['ms_per_call']:.1f}"] for r in result["rows"]])


BENCHMARK = Benchmark(
    name="sample_throughput", title="sampling images/s of the small U-Net (DDIM, fp32 on CPU)",
    preset={"steps": 20, "batches": [64, 256], "seed": 0,
            "cases": [c[0] for c in CASES]},
    smoke={"steps": 2, "batches": [2], "cases": [CASES[0][0]]},
    run=measure, tables={"cpu": table})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    args = ap.parse_args()
    result = measure({**BENCHMARK.preset, "steps": args.steps, "batches": args.batch}, Path("."))
    print(table(result))


if __name__ == "__main__":
    main()
