"""Pixel vs latent diffusion, measured: training and sampling speed and peak memory.

The same U-Net width (``--base`` channels, ``--mults``, one ResBlock per level, no attention)
at the same image size, once on pixels (C x S x S) and once on the latents of a KL-f4
autoencoder (4 x S/4 x S/4; ``conf/autoencoder/kl_f4.yaml``, random weights: speed does not
depend on them). Training = forward + backward + Adam step of L_simple at batch ``--batch``;
for latent diffusion once with the encoder run on every batch (``latent.cache=false``) and once
from cached moments (``latent.cache=true``). Sampling = DDIM ``--steps`` steps of a batch,
plus the decoder for latents. Peak memory: CUDA's max allocated on a GPU; on the CPU the peak
resident set size of a fresh process running only that case, minus the same process before it
built anything.

Run: ``python benchmarks/latent_throughput.py`` (about 3 minutes on 2 CPU cores with the
defaults); ``--device cuda`` on a GPU. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from omegaconf import OmegaConf

from diffcli.cli import CONF_DIR
from diffcli.components import build_autoencoder
from diffcli.diffusion.denoiser import Denoiser
from diffcli.diffusion.generate import generate
from diffcli.diffusion.losses import diffusion_loss
from diffcli.diffusion.samplers.ddim import DDIM
from diffcli.diffusion.schedules import linear_schedule
from diffcli.nets.latent import LatentCodec
from diffcli.nets.unet import UNet

CASES = ("pixel", "latent (encode every batch)", "latent (cached)")


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)


def build(case: str, args: argparse.Namespace, device: torch.device):
    """(U-Net, codec or None, the shape the U-Net sees)."""
    shape = (args.channels, args.size, args.size)
    codec = None
    if case != "pixel":
        node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "autoencoder" / "kl_f4.yaml"))
        codec = LatentCodec(build_autoencoder(node, shape), 1.0).to(device)
        shape = codec.latent_shape
    net = UNet(data_shape=shape, base_channels=args.base, channel_mults=args.mults,
               num_res_blocks=1, groups=8).to(device)
    return net, codec, shape


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(case: str, net, codec, args, device: torch.device) -> float:
    """Training images/s over ``--iters`` steps after two warm-up steps."""
    schedule = linear_schedule()
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.rand(args.batch, args.channels, args.size, args.size, device=device) * 2 - 1
    moments = codec.moments(x) if codec is not None else None

    def step() -> None:
        if codec is None:
            x0 = x
        elif case == "latent (cached)":
            x0 = codec.from_moments(moments)
        else:
            x0 = codec.encode(x)
        t = torch.randint(0, schedule.num_timesteps, (len(x0),), device=device)
        loss = diffusion_loss(net, schedule, x0, t, torch.randn_like(x0))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.iters):
        step()
    sync(device)
    return args.iters * args.batch / (time.perf_counter() - start)


@torch.no_grad()
def sample_rate(net, codec, shape, args, device: torch.device) -> float:
    """Sampling images/s: DDIM ``--steps`` steps of one batch (and the decoder)."""
    net.eval()
    den = Denoiser(net, linear_schedule())
    sampler = DDIM(steps=args.steps, clip_denoised=codec is None)
    seeds = list(range(args.batch))
    generate(sampler, den, shape, seeds[:2], 2, device)  # warm-up
    sync(device)
    start = time.perf_counter()
    z = generate(sampler, den, shape, seeds, args.batch, device)
    if codec is not None:
        codec.decode(z.to(device))
    sync(device)
    return args.batch / (time.perf_counter() - start)


def one(case: str, args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    base = peak_mb(device)
    torch.manual_seed(0)
    net, codec, shape = build(case, args, device)
    row = {"case": case, "shape": list(shape),
           "unet_params": sum(p.numel() for p in net.parameters()),
           "train_images_per_s": train_rate(case, net, codec, args, device),
           "peak_train_mb": peak_mb(device) - (0 if device.type == "cuda" else base)}
    row["sample_images_per_s"] = sample_rate(net, codec, shape, args, device)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--base", type=int, default=64)
    parser.add_argument("--mults", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--one", choices=CASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:  # a fresh process per case: its own peak memory
        print(json.dumps(one(args.one, args)))
        return
    rows = []
    for case in CASES:
        cmd = [sys.executable, __file__, "--one", case, *sys.argv[1:]]
        rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                              text=True).stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.channels}x{args.size}x{args.size} images, U-Net base {args.base} mults "
          f"{args.mults}, batch {args.batch}, {args.device}, torch threads "
          f"{torch.get_num_threads()}; sampling DDIM {args.steps} steps\n")
    print("| space | U-Net input | U-Net params | train images/s | peak train memory (MiB) | "
          "sample images/s |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['unet_params']:,} | "
              f"{r['train_images_per_s']:.0f} | {r['peak_train_mb']:.0f} | "
              f"{r['sample_images_per_s']:.1f} |")


if __name__ == "__main__":
    main()
