"""Training throughput (images/s) and peak memory of diffusion networks: ours vs diffusers'.

One training step = noising + forward + L_simple (MSE to the noise) + backward + Adam step
(the preset's ``lr``), on random 32x32x3 images with uniform integer t in [0, 1000) of the
preset's linear schedule.

Rows: ``ddpm_cifar10`` (the 35.7M DDPM CIFAR-10 net) and ``small``, each as our
``diffcli.nets.unet.UNet`` and as diffusers' ``UNet2DModel`` built from a config of the same
layout and parameter count; ``dit_s2`` (DiT-S/2, Peebles & Xie 2023, class-conditional over 10
labels: 256 tokens of 32x32x3) as our ``diffcli.nets.dit.DiT`` and diffusers'
``DiTTransformer2DModel`` of the same configuration (the one ``diffcli export format=diffusers``
writes, :func:`diffcli.interop.dit_diffusers.diffusers_dit_config`; diffusers keeps one copy of
the time and label embedding per block, so it has more parameters for the same function). All
are pinned in the preset's ``networks``; no download; the
diffusers rows are skipped, and the result says so, when diffusers is not installed: ``pip
install -e '.[bench]'``). Every row runs in a fresh subprocess so memory figures are isolated;
the memory baseline is taken after imports and one step of a tiny net (see ``run_one``).

Run: ``python -m benchmarks run train_throughput`` (the CPU preset: fp32 eager, batch 16, 3
timed steps after 1 warm-up; writes docs/results/train_throughput.json). On a GPU,
``python -m benchmarks.train_throughput --device cuda [--precision fp32 bf16] [--channels-last
off on] [--compile off on]`` prints the table for the CUDA settings (batch 128, 20 timed steps
after 5 warm-up, compilation in the warm-up, TFLOP/s and MFU) without writing a result.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import itertools
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from benchmarks.core import Benchmark  # noqa: E402
from diffcli.diffusion.schedules import linear_schedule  # noqa: E402
from diffcli.nets.dit import DiT  # noqa: E402
from diffcli.nets.unet import UNet  # noqa: E402

NETS = {  # name -> implementation -> kwargs (our UNet, diffusers' UNet2DModel); all 32x32x3
    "ddpm_cifar10": {
        "diffcli": dict(in_channels=3, base_channels=128, channel_mults=[1, 2, 2, 2],
                        num_res_blocks=2, attention_resolutions=[16], image_size=32,
                        dropout=0.1, groups=32, num_heads=1),
        "diffusers": dict(sample_size=32, in_channels=3, out_channels=3,
                          block_out_channels=[128, 256, 256, 256], layers_per_block=2,
                          down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                            "DownBlock2D"],
                          up_block_types=["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
                          norm_num_groups=32, dropout=0.1, attention_head_dim=None),  # one head
    },
    "small": {
        "diffcli": dict(in_channels=3, base_channels=32, channel_mults=[1, 2, 2],
                        num_res_blocks=1, attention_levels=[1], image_size=32, groups=8),
        "diffusers": dict(sample_size=32, in_channels=3, out_channels=3,
                          block_out_channels=[32, 64, 64], layers_per_block=1,
                          down_block_types=["DownBlock2D", "AttnDownBlock2D", "DownBlock2D"],
                          up_block_types=["UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
                          norm_num_groups=8, attention_head_dim=None),
    },
    "dit_s2": {
        "diffcli": dict(in_channels=3, image_size=32, patch_size=2, hidden_size=384, depth=12,
                        num_heads=6, num_classes=10),
        "diffusers": dict(sample_size=32, in_channels=3, out_channels=3, patch_size=2,
                          num_layers=12, num_attention_heads=6, attention_head_dim=64,
                          num_embeds_ada_norm=10, norm_type="ada_norm_zero",
                          norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True,
                          activation_fn="gelu-approximate"),
    },
    "tiny_dit": {  # primes the transformers' code paths (not a row)
        "diffcli": dict(in_channels=3, image_size=32, patch_size=2, hidden_size=32, depth=1,
                        num_heads=2, num_classes=10),
        "diffusers": dict(sample_size=32, in_channels=3, out_channels=3, patch_size=2,
                          num_layers=1, num_attention_heads=2, attention_head_dim=16,
                          num_embeds_ada_norm=10, norm_type="ada_norm_zero",
                          norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True,
                          activation_fn="gelu-approximate"),
    },
    "tiny": {  # primes each implementation's code paths before the memory baseline (not a row)
        "diffcli": dict(in_channels=3, base_channels=8, channel_mults=[1, 2],
                        attention_levels=[1], groups=8),
        "diffusers": dict(sample_size=32, in_channels=3, out_channels=3,
                          block_out_channels=[8, 16], layers_per_block=1,
                          down_block_types=["DownBlock2D", "AttnDownBlock2D"],
                          up_block_types=["AttnUpBlock2D", "UpBlock2D"], norm_num_groups=8,
                          attention_head_dim=None),
    },
}
IMPLS = ("diffcli", "diffusers")
NAMES = {"ddpm_cifar10": "DDPM CIFAR-10 (32x32x3)", "small": "small (32x32x3)",
         "dit_s2": "DiT-S/2, 10 classes (32x32x3)"}
IMPL_NAMES = {"diffcli": "diffcli `UNet`", "diffusers": "diffusers `UNet2DModel`"}
DIT_NAMES = {"diffcli": "diffcli `DiT`", "diffusers": "diffusers `DiTTransformer2DModel`"}


def is_dit(net: str) -> bool:
    return net.startswith(("dit", "tiny_dit"))


def prime(net: str) -> str:
    """The tiny net that primes ``net``'s code paths before the memory baseline."""
    return "tiny_dit" if is_dit(net) else "tiny"


def build(kwargs: Mapping[str, Any], impl: str, dit: bool = False) -> torch.nn.Module:
    """Our UNet / DiT or diffusers' UNet2DModel / DiTTransformer2DModel from ``kwargs``, random
    init."""
    if impl == "diffcli":
        return DiT(**kwargs) if dit else UNet(**kwargs)
    from diffusers import DiTTransformer2DModel, UNet2DModel

    return DiTTransformer2DModel(**kwargs) if dit else UNet2DModel(**kwargs)


def caller(model: torch.nn.Module, impl: str, dit: bool, y: torch.Tensor) -> Any:
    """``f(x, t) -> prediction`` for either implementation (class labels ``y`` for DiTs)."""
    if impl == "diffcli":
        return (lambda x, s: model(x, s, y)) if dit else model
    if dit:
        return lambda x, s: model(x, timestep=s, class_labels=y).sample
    return lambda x, s: model(x, s).sample


def trainer(spec: dict, net: str, batch: int):
    """Build ``net`` + Adam for ``spec``; return ``(params, step)``, ``step()`` one train step."""
    device = torch.device(spec["device"])
    fmt = torch.channels_last if spec["channels_last"] else torch.contiguous_format
    x0 = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    eps = torch.randn_like(x0)
    t = torch.randint(0, spec["schedule"]["num_timesteps"], (batch,), device=device)
    abar = linear_schedule(**spec["schedule"]).alphas_cumprod.to(device, torch.float32)
    abar = abar[t][:, None, None, None]
    y = torch.randint(0, 10, (batch,), device=device)
    module = build(spec["networks"][net][spec["impl"]], spec["impl"], is_dit(net))
    module = module.to(device, memory_format=fmt).train()
    opt = torch.optim.Adam(module.parameters(), lr=spec["lr"])
    model = torch.compile(module) if spec["compile"] and not net.startswith("tiny") else module
    call = caller(model, spec["impl"], is_dit(net), y)

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
    torch.manual_seed(spec["seed"])
    trainer(spec, prime(spec["net"]), 2)[1]()
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




def diffusers_version() -> str | None:
    """diffusers' version, None when it is not installed (found without importing it)."""
    if importlib.util.find_spec("diffusers") is None:
        return None
    return importlib.metadata.version("diffusers")


def one_row(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Run one row's spec in a fresh process; its numbers, or its one-line error."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.train_throughput", "--one",
                           json.dumps(dict(spec))], capture_output=True, text=True,
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    keys = ("net", "impl", "batch", "precision", "channels_last", "compile")
    row = {k: spec[k] for k in keys}
    if proc.returncode:
        return {**row, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:120]}
    return {**row, **json.loads(proc.stdout.strip().splitlines()[-1])}


def measure(settings: Mapping[str, Any], workdir: Path) -> dict[str, Any]:
    """Every row of ``settings`` (nets x precisions x channels_last x compile x impls), each
    in a fresh process; the diffusers rows are skipped, and the result says so, when
    diffusers is not installed."""
    device = settings["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    impls, skipped = list(settings["impls"]), None
    version = diffusers_version()
    if "diffusers" in impls and version is None:
        impls.remove("diffusers")
        skipped = "diffusers not installed (pip install -e '.[bench]'): its rows were skipped"
        print(f"note: {skipped}", flush=True)
    peak = settings["peak_tflops"]
    rows = []
    for net, prec, cl, comp, impl in itertools.product(
            settings["nets"], settings["precisions"], settings["channels_last"],
            settings["compile"], impls):
        spec = dict(net=net, impl=impl, device=device, batch=settings["batch"],
                    steps=settings["steps"], warmup=settings["warmup"], precision=prec,
                    channels_last=cl, compile=comp, flops=bool(peak), seed=settings["seed"],
                    lr=settings["lr"], schedule=settings["schedule"],
                    networks={k: settings["networks"][k] for k in (net, prime(net))})
        rows.append(one_row(spec))
        print(json.dumps(rows[-1]), flush=True)
    return {"device": device, "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
            "diffusers": version, "skipped": skipped, "peak_tflops": peak, "rows": rows}


def table(result: Mapping[str, Any]) -> str:
    """The markdown table; precision / channels_last / compile columns only where they vary,
    TFLOP/s and MFU only with a peak."""
    rows, peak = result["rows"], result["peak_tflops"]
    varied = [k for k in ("precision", "channels_last", "compile")
              if len({r[k] for r in rows}) > 1]
    head = ["network", "implementation", "params", *varied, "images/s", "ms/step",
            "peak memory", *(["TFLOP/s", "MFU"] if peak else [])]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    for r in rows:
        flags = [("yes" if r[k] else "no") if isinstance(r[k], bool) else str(r[k])
                 for k in varied]
        impl_names = DIT_NAMES if is_dit(r["net"]) else IMPL_NAMES
        cells = [NAMES.get(r["net"], r["net"]), impl_names[r["impl"]]]
        if "error" in r:
            cells += ["?", *flags, f"failed: {r['error'].replace('|', '/')}", "", "",
                      *(["", ""] if peak else [])]
        else:
            cells += [f"{r['params']:,}", *flags, f"{r['ips']:.1f}",
                      f"{r['ms']:.0f}" if r["ms"] >= 100 else f"{r['ms']:.1f}",
                      f"{r['peak_mib']:.0f} MiB",
                      *([f"{r['tflops']:.{1 if r['tflops'] >= 1 else 3}f}",
                         f"{100 * r['tflops'] / peak:.1f}%"] if peak
                        else [])]
        lines.append("| " + " | ".join(cells) + " |")
    if result["skipped"]:
        lines += ["", f"({result['skipped']}.)"]
    return "\n".join(lines)


PRESET = {  # the CPU table: fp32 eager (bf16 is emulated and very slow on CPUs without it)
    "device": "cpu", "nets": ["ddpm_cifar10", "small", "dit_s2"], "impls": list(IMPLS), "batch": 16,
    "steps": 3, "warmup": 1, "precisions": ["fp32"], "channels_last": [False],
    "compile": [False], "peak_tflops": None, "lr": 2e-4, "seed": 0, "seeds": [0],
    "schedule": {"num_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02},
    "networks": NETS,
}
CUDA = {"device": "cuda", "batch": 128, "steps": 20, "warmup": 5, "precisions": ["fp32", "bf16"],
        "channels_last": [False, True], "compile": [False, True]}

BENCHMARK = Benchmark(
    name="train_throughput", title="training images/s and peak memory, diffcli vs diffusers",
    preset=PRESET,
    smoke={"nets": ["small", "tiny_dit"], "batch": 2, "steps": 1, "warmup": 0,
           "peak_tflops": 1.0},
    run=measure, tables={"cpu": table})


def main() -> None:
    """The CUDA settings (or others) from the command line; prints the table, writes nothing."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"],
                    default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--nets", nargs="+", choices=list(NAMES))
    ap.add_argument("--impl", nargs="+", choices=IMPLS)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--steps", type=int, help="timed steps")
    ap.add_argument("--warmup", type=int, help="untimed steps")
    ap.add_argument("--precision", nargs="+", choices=["fp32", "bf16"])
    ap.add_argument("--channels-last", nargs="+", choices=["off", "on"])
    ap.add_argument("--compile", nargs="+", choices=["off", "on"])
    ap.add_argument("--peak-tflops", type=float,
                    help="dense bf16 peak for the MFU column; default 989.4 on H100/H200")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        ap.error("--device cuda: CUDA is not available")
    s = {**PRESET, **(CUDA if cuda else {})}
    given = {"nets": args.nets, "impls": args.impl, "batch": args.batch, "steps": args.steps,
             "warmup": args.warmup, "precisions": args.precision,
             "channels_last": args.channels_last and [v == "on" for v in args.channels_last],
             "compile": args.compile and [v == "on" for v in args.compile],
             "peak_tflops": args.peak_tflops}
    s.update({k: v for k, v in given.items() if v is not None})
    if s["peak_tflops"] is None and cuda and any(g in torch.cuda.get_device_name()
                                                 for g in ("H100", "H200")):
        s["peak_tflops"] = 989.4
    if s["batch"] < 1 or s["steps"] < 1 or s["warmup"] < 0:
        ap.error("need --batch >= 1, --steps >= 1, --warmup >= 0")
    print(table(measure(s, Path("."))))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:  # child mode: one row's spec as JSON
        print(json.dumps(run_one(json.loads(sys.argv[2]))))
    else:
        main()
