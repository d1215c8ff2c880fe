"""Pixel vs latent diffusion, measured: training and sampling speed and peak memory.

The same U-Net (the preset's ``unet``: base 64, mults [1, 2], one ResBlock per level, no
attention) at the same image size, once on pixels (C x S x S) and once on the latents of a KL-f4
autoencoder (4 x S/4 x S/4; the preset's ``autoencoder``, a copy of
``conf/autoencoder/kl_f4.yaml``; random weights: speed does not depend on them). Training =
forward + backward + Adam step of L_simple (eps prediction, linear schedule) at batch
``batch``; for latent diffusion once with the encoder run on every batch (``latent.cache=false``)
and once from cached moments (``latent.cache=true``). Sampling = DDIM ``steps`` steps of a
batch, plus the decoder for latents. Peak memory: CUDA's max allocated on a GPU; on the CPU the
peak resident set size of a fresh process running only that case, minus the same process before
it built anything.

Run: ``python -m benchmarks run latent_throughput`` (about 3 minutes on 2 CPU cores; writes
docs/results/latent_throughput.json).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as diffcli sets it (cli/app.py)

import torch  # noqa: E402

from benchmarks.core import Benchmark  # noqa: E402
from diffcli.components import build_autoencoder  # noqa: E402
from diffcli.diffusion.denoiser import Denoiser  # noqa: E402
from diffcli.diffusion.generate import generate  # noqa: E402
from diffcli.diffusion.losses import diffusion_loss  # noqa: E402
from diffcli.diffusion.samplers.ddim import DDIM  # noqa: E402
from diffcli.diffusion.schedules import linear_schedule  # noqa: E402
from diffcli.nets.latent import LatentCodec  # noqa: E402
from diffcli.nets.unet import UNet  # noqa: E402

CASES = ("pixel", "latent (encode every batch)", "latent (cached)")
LABELS = {"pixel": "pixel", "latent (encode every batch)": "latent, encoder on every batch",
          "latent (cached)": "latent, `latent.cache=true`"}
KL_F4 = {  # conf/autoencoder/kl_f4.yaml, pinned
    "_target_": "diffcli.nets.autoencoder.KLAutoencoder", "z_channels": 4, "base_channels": 64,
    "channel_mults": [1, 2, 2], "num_res_blocks": 1, "mid_attention": True, "groups": 32,
    "dropout": 0.0, "downsample_padding": 0}
UNET = {"base_channels": 64, "channel_mults": [1, 2], "num_res_blocks": 1, "groups": 8,
        "dropout": 0.0, "attention_resolutions": [], "mid_attention": None, "num_heads": 1,
        "resblock_updown": False, "use_scale_shift_norm": False}


def peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)


def build(case: str, s: Mapping[str, Any], device: torch.device):
    """(U-Net, codec or None, the shape the U-Net sees)."""
    shape = (s["channels"], s["size"], s["size"])
    codec = None
    if case != "pixel":
        codec = LatentCodec(build_autoencoder(dict(s["autoencoder"]), shape), 1.0).to(device)
        shape = codec.latent_shape
    net = UNet(data_shape=shape, **s["unet"]).to(device)
    return net, codec, shape


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def schedule(s: Mapping[str, Any]):
    return linear_schedule(**s["schedule"])


def train_rate(case: str, net, codec, s: Mapping[str, Any], device: torch.device) -> float:
    """Training images/s over ``iters`` steps after two warm-up steps."""
    sched = schedule(s)
    opt = torch.optim.Adam(net.parameters(), lr=s["lr"])
    x = torch.rand(s["batch"], s["channels"], s["size"], s["size"], device=device) * 2 - 1
    moments = codec.moments(x) if codec is not None else None

    def step() -> None:
        if codec is None:
            x0 = x
        elif case == "latent (cached)":
            x0 = codec.from_moments(moments)
        else:
            x0 = codec.encode(x)
        t = torch.randint(0, sched.num_timesteps, (len(x0),), device=device)
        loss = diffusion_loss(net, sched, x0, t, torch.randn_like(x0), s["prediction"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(s["iters"]):
        step()
    sync(device)
    return s["iters"] * s["batch"] / (time.perf_counter() - start)


@torch.no_grad()
def sample_rate(net, codec, shape, s: Mapping[str, Any], device: torch.device) -> float:
    """Sampling images/s: DDIM ``steps`` steps of one batch (and the decoder)."""
    net.eval()
    den = Denoiser(net, schedule(s), s["prediction"])
    sampler = DDIM(steps=s["steps"], eta=0.0, grid=s["grid"], clip_denoised=codec is None)
    seeds = list(range(s["batch"]))
    generate(sampler, den, shape, seeds[:2], 2, device)  # warm-up
    sync(device)
    start = time.perf_counter()
    z = generate(sampler, den, shape, seeds, s["batch"], device)
    if codec is not None:
        codec.decode(z.to(device))
    sync(device)
    return s["batch"] / (time.perf_counter() - start)


def one(case: str, s: Mapping[str, Any]) -> dict[str, Any]:
    """One case's row, measured in this (fresh) process."""
    device = torch.device(s["device"] if s["device"] != "auto" else
                          "cuda" if torch.cuda.is_available() else "cpu")
    base = peak_mb(device)
    torch.manual_seed(s["seed"])
    net, codec, shape = build(case, s, device)
    row = {"case": case, "shape": list(shape), "device": device.type,
           "unet_params": sum(p.numel() for p in net.parameters()),
           "train_images_per_s": train_rate(case, net, codec, s, device),
           "peak_train_mb": peak_mb(device) - (0 if device.type == "cuda" else base)}
    row["sample_images_per_s"] = sample_rate(net, codec, shape, s, device)
    return row


def measure(settings: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Each case in a fresh process (its own peak memory); rows for the table."""
    rows = []
    for case in CASES:
        cmd = [sys.executable, "-m", "benchmarks.latent_throughput", case,
               json.dumps(dict(settings))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"{case} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    return {"torch_threads": torch.get_num_threads(), "steps": settings["steps"], "rows": rows}


def table(result: Mapping[str, Any]) -> str:
    lines = ["| space | U-Net input | train images/s | peak train memory (MiB) | "
             f"sample images/s (DDIM {result['steps']}, + decode) |",
             "| --- | --- | ---: | ---: | ---: |"]
    lines += [f"| {LABELS[r['case']]} | {'x'.join(map(str, r['shape']))} | "
              f"{r['train_images_per_s']:.0f} | {r['peak_train_mb']:.0f} | "
              f"{r['sample_images_per_s']:.1f} |" for r in result["rows"]]
    return "\n".join(lines)


BENCHMARK = Benchmark(
    name="latent_throughput", title="pixel vs latent diffusion: train / sample images/s, memory",
    preset={"size": 32, "channels": 3, "batch": 64, "iters": 10, "steps": 50, "device": "cpu",
            "unet": UNET, "autoencoder": KL_F4, "lr": 1e-4, "prediction": "eps",
            "grid": "trailing",
            "schedule": {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
            "seed": 0, "seeds": list(range(64))},
    smoke={"size": 8, "batch": 2, "iters": 1, "steps": 2, "seeds": [0, 1],
           "unet": {**UNET, "base_channels": 8},
           "autoencoder": {**KL_F4, "base_channels": 8, "groups": 8}},
    run=measure, tables={"cpu": table})


if __name__ == "__main__":  # child mode: one case, its row as JSON on the last line
    print(json.dumps(one(sys.argv[1], json.loads(sys.argv[2]))))
