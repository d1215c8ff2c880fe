"""Sampling throughput (images/s) of the small U-Net, under inference mode, one sampler step = one
network evaluation. Prints a markdown table. Run: `python benchmarks/sample_throughput.py`.

Measures the network as `diffcli sample` runs it (DDIM, linear schedule, fp32 on CPU; bf16
autocast added on CUDA when available). Untrained weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256])
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; DDIM {args.steps} steps (NFE)\n")
    print("| data | params | batch | images/s | ms per network call |")
    print("| --- | --- | --- | --- | --- |")
    for name, ch, size, kw in CASES + (CUDA_CASES if device.type == "cuda" else []):
        net = UNet(in_channels=ch, **kw).to(device).eval()
        params = sum(p.numel() for p in net.parameters())
        for batch in args.batch:
            ips = images_per_second(net, (ch, size, size), batch, args.steps, device,
                                    bf16=device.type == "cuda")
            ms = 1000 * batch / ips / args.steps
            print(f"| {name} | {params:,} | {batch} | {ips:.1f} | {ms:.1f} |", flush=True)


if __name__ == "__main__":
    main()
