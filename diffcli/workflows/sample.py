"""`diffcli sample`: checkpoint -> network + schedule -> sampler -> PNG, .npz and JSON."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from diffcli.diffusion.samplers import Denoiser, Sampler, SamplerStep
from diffcli.diffusion.samplers.base import randn_like
from diffcli.errors import DiffcliError
from diffcli.workflows.common import (
    LoadedRun,
    build_datamodule,
    build_net,
    find_latest_checkpoint,
    load_checkpoint,
    pick_device,
)

console = Console(stderr=True)


@dataclass
class CountingNet:
    """Wraps a network to count its evaluations (NFE), one per batch call."""

    net: nn.Module
    calls: int = 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        return self.net(x, t)


def _restore(run: LoadedRun, use_ema: bool, device: torch.device) -> tuple[nn.Module, str, tuple]:
    """Rebuild the trained network from the checkpoint alone; returns (net, kind, data_shape)."""
    cfg = run.config
    dm = build_datamodule(cfg.dataset)
    net = build_net(cfg.model, dm.kind, dm.data_shape)
    prefix = "ema_net." if use_ema and any(k.startswith("ema_net.") for k in run.state_dict) \
        else "net."
    try:
        net.load_state_dict(run.weights(prefix))
    except RuntimeError as e:
        raise DiffcliError(f"{run.path}: weights do not fit the configured network "
                           f"({str(e).splitlines()[0]})") from None
    return net.to(device).eval(), dm, prefix.rstrip(".")


def _draw(sampler: Sampler, den: Denoiser, shape: tuple, n: int, batch: int, seed: int,
          device: torch.device) -> Tensor:
    """n samples; sample i uses its own generator seeded ``seed + i`` (batch-size independent)."""
    steps = len(sampler.timesteps(den.schedule))
    out = []
    cols = [TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*cols, console=console, transient=True) as bar:
        task = bar.add_task("", total=steps * math.ceil(n / batch))
        for start in range(0, n, batch):
            idx = range(start, min(n, start + batch))
            gens = [torch.Generator().manual_seed(seed + i) for i in idx]
            noise = randn_like(torch.empty(len(gens), *shape, device=device), gens)

            def advance(_: SamplerStep) -> None:
                bar.advance(task)

            out.append(sampler.sample(den, noise, generator=gens, callback=advance).cpu())
    return torch.cat(out)


def _save_images(x: Tensor, out_dir: Path) -> None:
    from torchvision.utils import make_grid, save_image

    imgs = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (N, C, H, W)
    np.savez_compressed(out_dir / "samples.npz", images=imgs.permute(0, 2, 3, 1).numpy())
    grid = make_grid(imgs.float() / 255, nrow=math.ceil(math.sqrt(len(x))), padding=1, pad_value=1)
    scale = max(1, 256 // max(x.shape[-1], 1) // 2)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    save_image(grid, out_dir / "grid.png")


def _save_points(x: Tensor, data: Tensor, out_dir: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    np.savez_compressed(out_dir / "samples.npz", points=x.numpy())
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(data[:, 0], data[:, 1], s=2, c="0.75", label="data")
    ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:red", label="samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "scatter.png")
    plt.close(fig)


def sample(cfg: DictConfig) -> Path:
    """Sample from a trained run; returns the output folder."""
    roots = [Path(cfg.runs_root), Path("multirun")]
    ckpt = Path(cfg.ckpt) if cfg.ckpt else find_latest_checkpoint(roots)
    if not cfg.ckpt:
        console.print(f"using the newest run's checkpoint: {ckpt}")
    run = load_checkpoint(ckpt)
    device = pick_device(cfg.device)
    net, dm, weights = _restore(run, cfg.use_ema, device)
    counter = CountingNet(net)
    schedule = instantiate(run.config.schedule)
    den = Denoiser(counter, schedule, run.config.prediction)
    clip = dm.kind == "image" if cfg.clip_denoised is None else bool(cfg.clip_denoised)
    extra = {"clip_denoised": clip} | ({"steps": cfg.steps} if cfg.steps is not None else {})
    try:
        sampler: Sampler = instantiate(cfg.sampler, **extra)
        steps = len(sampler.timesteps(schedule))
    except ValueError as e:
        raise DiffcliError(str(e)) from None
    n = cfg.n or (64 if dm.kind == "image" else 2000)
    name = HydraConfig.get().runtime.choices.get("sampler") or type(sampler).__name__.lower()
    out_dir = ckpt.parent.parent / "samples" / f"{name}-{steps}"
    out_dir.mkdir(parents=True, exist_ok=True)
    x = _draw(sampler, den, tuple(dm.data_shape), n, cfg.batch_size, cfg.seed, device)
    title = f"{name}, {steps} steps, seeds {cfg.seed}..{cfg.seed + n - 1}"
    if dm.kind == "image":
        _save_images(x, out_dir)
    else:
        _save_points(x, dm.data, out_dir, title)
    nfe = counter.calls // math.ceil(n / cfg.batch_size)  # network evaluations per sample
    meta = {"sampler": name, "steps": steps, "nfe": nfe,
            "n": n, "seeds": [cfg.seed, cfg.seed + n - 1], "checkpoint": str(ckpt),
            "global_step": run.global_step, "weights": weights, "clip_denoised": clip}
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2))
    picture = "grid.png" if dm.kind == "image" else "scatter.png"
    console.print(f"[green]wrote[/] {n} samples ({name}, {steps} steps, {nfe} NFE per sample, "
                  f"{weights} weights) to {out_dir}/ : {picture}, samples.npz, meta.json")
    return out_dir
