"""Training throughput (images/s) and peak memory of diffusion U-Nets: ours vs diffusers'.

One training step = noising + forward + L_simple (MSE to the noise) + backward + Adam step
(lr 2e-4), on random 32x32x3 images with uniform integer t in [0, 1000). Prints a markdown
table. Run: `python benchmarks/train_throughput.py [--device cpu] [--batch 16] [--steps 3]`.

Rows: `ddpm_cifar10` (the 35.7M DDPM CIFAR-10 net) and `small`, each as our
`diffcli.nets.unet.UNet` and as diffusers' `UNet2DModel` built from a config of the same
layout and parameter count (no download; skipped when diffusers is not installed). Every
row runs in a fresh subprocess (hidden `--one` mode) so memory figures are isolated; the
memory baseline is taken after imports and one step of a tiny net (see `run_one`).
Defaults: on CUDA, batch 128, fp32 and bf16 autocast, with and without channels_last and
torch.compile, 20 timed steps after 5 warm-up (compilation happens in the warm-up); on CPU,
fp32 eager only (bf16 is emulated and very slow on CPUs without bf16 instructions), batch
16, 3 timed steps after 1 warm-up. Pass `--precision`, `--channels-last`, `--compile` to
choose the toggles explicitly.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from diffcli.diffusion.schedules import linear_schedule  # noqa: E402
from diffcli.nets.unet import UNet  # noqa: E402

NETS = {  # name -> (our UNet kwargs, diffusers UNet2DModel kwargs); all 32x32x3
    "ddpm_cifar10": (
        dict(in_channels=3, base_channels=128, channel_mults=(1, 2, 2, 2), num_res_blocks=2,
             attention_resolutions=(16,), image_size=32, dropout=0.1, groups=32, num_heads=1),
        dict(sample_size=32, in_channels=3, out_channels=3,
             block_out_channels=(128, 256, 256, 256), layers_per_block=2,
             down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
             norm_num_groups=32, dropout=0.1, attention_head_dim=None),  # None: one head
    ),
    "small": (
        dict(in_channels=3, base_channels=32, channel_mults=(1, 2, 2), num_res_blocks=1,
             attention_levels=(1,), image_size=32, groups=8),
        dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
             layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
             up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
             attention_head_dim=None),
    ),
}
TINY = (  # primes each implementation's code paths before the memory baseline (not a row)
    dict(in_channels=3, base_channels=8, channel_mults=(1, 2), attention_levels=(1,), groups=8),
    dict(sample_size=32, in_channels=3, out_channels=3, block_out_channels=(8, 16),
         layers_per_block=1, down_block_types=("DownBlock2D", "AttnDownBlock2D"),
         up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8,
         attention_head_dim=None),
)
IMPLS = ("diffcli", "diffusers")


def build(net: str, impl: str) -> torch.nn.Module:
    """Our UNet or diffusers' UNet2DModel for row ``net`` (or ``"tiny"``), random init."""
    ours, theirs = TINY if net == "tiny" else NETS[net]
    if impl == "diffcli":
        return UNet(**ours)
    from diffusers import UNet2DModel

    return UNet2DModel(**theirs)


def trainer(spec: dict, net: str, batch: int):
    """Build ``net`` + Adam for ``spec``; return ``(params, step)``, ``step()`` one train step."""
    device = torch.device(spec["device"])
    fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    x0 = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    eps, t = torch.randn_like(x0), torch.randint(0, 1000, (batch,), device=device)
    abar = linear_schedule().alphas_cumprod.to(device, torch.float32)[t][:, None, None, None]
    module = build(net, spec["impl"]).to(device, memory_format=fmt).train()
    opt = torch.optim.Adam(module.parameters(), lr=2e-4)
    model = torch.compile(module) if spec["compile"] and net != "tiny" else module
    call = (lambda x, s: model(x, s).sample) if spec["impl"] == "diffusers" else model

    def step() -> None:
        xt = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16"):
            out = call(xt, t)
            assert out.shape == x0.shape, (tuple(out.shape), tuple(x0.shape))
            loss = F.mse_loss(out.float(), eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return sum(p.numel() for p in module.parameters()), step


def run_one(spec: dict) -> dict:
    """Child mode: time ``spec['steps']`` training steps of one row; measure peak memory.

    A tiny net of the same implementation first trains one step, so that the memory
    baseline already holds the one-time costs (library code pages, allocator and kernel
    caches: 50-200 MiB on CPU, varying from run to run) and the figure is the row's own.
    """
    cuda = spec["device"] == "cuda"
    torch.manual_seed(0)
    trainer(spec, "tiny", 2)[1]()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    params, step = trainer(spec, spec["net"], spec["batch"])
    for _ in range(spec["warmup"]):
        step()
    if cuda:
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    if cuda:
        torch.cuda.synchronize()
    sec = (time.perf_counter() - t0) / spec["steps"]
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda else
            (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
    flops = step_flops(spec) if spec.get("flops") else 0.0
    return {"params": params, "ms": 1000 * sec, "ips": spec["batch"] / sec, "peak_mib": peak,
            "tflops": flops / sec / 1e12}


def step_flops(spec: dict) -> float:
    """Model FLOPs of one training step (forward + backward, counted by
    ``torch.utils.flop_counter`` on the eager network: matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    _, step = trainer({**spec, "compile": False}, spec["net"], spec["batch"])
    with FlopCounterMode(display=False) as counter:
        step()
    return float(counter.get_total_flops())


def machine(device: str) -> str:
    """One line on the CPU, threads, versions and GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        import diffusers

        dv = diffusers.__version__
    except ImportError:
        dv = "not installed"
    gpu = f"; GPU: {torch.cuda.get_device_name()}" if device == "cuda" else ""
    return (f"CPU: {cpu} ({os.cpu_count()} logical cores), torch threads "
            f"{torch.get_num_threads()}; torch {torch.__version__}; diffusers {dv}{gpu}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--nets", nargs="+", choices=list(NETS), default=list(NETS))
    ap.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    ap.add_argument("--batch", type=int, help="default: 128 on CUDA, 16 on CPU")
    ap.add_argument("--steps", type=int, help="timed steps; default: 20 on CUDA, 3 on CPU")
    ap.add_argument("--warmup", type=int, help="untimed steps; default: 5 on CUDA, 1 on CPU")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"],
                    help="default: fp32 bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--channels-last", nargs="+", choices=["off", "on"],
                    help="default: both on CUDA, off on CPU")
    ap.add_argument("--compile", nargs="+", choices=["off", "on"],
                    help="default: both on CUDA, off on CPU")
    ap.add_argument("--peak-tflops", type=float,
                    help="the accelerator's dense bf16 peak for the MFU column; default 989 "
                         "on H100/H200 (SXM), none elsewhere")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # child mode: JSON row spec
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    both = ["off", "on"] if cuda else ["off"]
    precisions = args.precision or (["fp32", "bf16"] if cuda else ["fp32"])
    layouts = [s == "on" for s in args.channels_last or both]
    compiles = [s == "on" for s in args.compile or both]
    batch = args.batch if args.batch is not None else (128 if cuda else 16)
    steps = args.steps if args.steps is not None else (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if batch < 1 or steps < 1 or warmup < 0:
        ap.error("need --batch >= 1, --steps >= 1, --warmup >= 0")
    impls = list(args.impl)
    print(machine(device))
    if "diffusers" in impls:
        try:
            import diffusers  # noqa: F401
        except ImportError:
            impls.remove("diffusers")
            print("note: diffusers not installed (pip install -e '.[bench]'); rows skipped")
    mem = ("torch.cuda.max_memory_allocated" if cuda else
           "process peak RSS (ru_maxrss) increase over the baseline after imports and a "
           "tiny priming step")
    print(f"device {device}; {steps} timed steps after {warmup} warm-up; one fresh process "
          f"per row; peak memory = {mem}\n")
    peak_tflops = args.peak_tflops
    if peak_tflops is None and cuda and any(g in torch.cuda.get_device_name()
                                            for g in ("H100", "H200")):
        peak_tflops = 989.4
    if peak_tflops:
        print(f"model FLOPs per step counted by torch.utils.flop_counter (forward + backward); "
              f"MFU = model FLOP/s / {peak_tflops:g} TFLOP/s (dense bf16 peak)\n")
    print("| network | implementation | params | batch | precision | channels_last | compile "
          "| images/s | ms/step | peak memory | TFLOP/s | MFU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    for net, prec, cl, comp, impl in itertools.product(args.nets, precisions, layouts,
                                                       compiles, impls):
        spec = dict(net=net, impl=impl, device=device, batch=batch, steps=steps,
                    warmup=warmup, precision=prec, channels_last=cl, compile=comp,
                    flops=bool(peak_tflops))
        proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)],
                              capture_output=True, text=True, env=env)
        row = f"| {net} | {impl} | "
        flags = f"| {batch} | {prec} | {'yes' if cl else 'no'} | {'yes' if comp else 'no'} |"
        if proc.returncode:
            err = (proc.stderr.strip().splitlines() or ["?"])[-1][:120].replace("|", "/")
            print(f"{row}? {flags} failed: {err} | | | | |", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        mfu = (f"{r['tflops']:.1f} | {100 * r['tflops'] / peak_tflops:.1f}%" if peak_tflops
               else "- | -")
        print(f"{row}{r['params']:,} {flags} {r['ips']:.1f} | {r['ms']:.1f} | "
              f"{r['peak_mib']:.0f} MiB | {mfu} |", flush=True)


if __name__ == "__main__":
    main()
