"""`diffcli sample`: checkpoint -> network + schedule -> sampler -> PNG, .npz and JSON."""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

from diffcli.components import build
from diffcli.diffusion.samplers import Denoiser, Sampler, SamplerStep
from diffcli.diffusion.samplers.base import randn_like
from diffcli.errors import DiffcliError
from diffcli.files import OutputFolder
from diffcli.workflows.common import (
    DataInfo,
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


def _restore(run: LoadedRun, use_ema: bool,
             device: torch.device) -> tuple[nn.Module, DataInfo, str]:
    """Rebuild the trained network from the checkpoint alone; returns (net, data info, weights)."""
    dm = run.data_info()
    net = build_net(run.config.model, dm.kind, dm.shape)
    prefix = "ema_net." if use_ema and any(k.startswith("ema_net.") for k in run.state_dict) \
        else "net."
    try:
        net.load_state_dict(run.weights(prefix))
    except RuntimeError as e:
        raise DiffcliError(f"{run.path}: weights do not fit the configured network "
                           f"({str(e).splitlines()[0]})") from None
    return net.to(device).eval(), dm, prefix.rstrip(".")


def parse_seeds(spec: str | int | list | None, n: int, seed: int) -> list[int]:
    """Seeds from ``seeds=`` ("0-999", "0,5,7", "3-5,9" or a list), else ``seed .. seed+n-1``."""
    if spec is None:
        return list(range(seed, seed + n))
    parts = spec if isinstance(spec, list | tuple) else str(spec).split(",")
    seeds: list[int] = []
    try:
        for part in (str(p).strip() for p in parts):
            lo, _, hi = part.partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise DiffcliError(f"bad seeds={spec!r}: use a range like 0-999 or a list 1,5,7") from None
    if not seeds:
        raise DiffcliError(f"seeds={spec!r} selects no seed")
    return seeds


@dataclass
class Trajectory:
    """Records x_t and the predicted x0 at every step for the first ``keep`` samples."""

    keep: int
    t: list = field(default_factory=list)
    x_t: list = field(default_factory=list)
    x0: list = field(default_factory=list)

    def __call__(self, step: SamplerStep) -> None:
        self.t.append(step.t)
        self.x_t.append(step.x_t[: self.keep].float().cpu())
        self.x0.append(step.x0[: self.keep].float().cpu())

    def save(self, path: Path) -> None:
        np.savez_compressed(path, t=np.array(self.t), x_t=torch.stack(self.x_t).numpy(),
                            x0=torch.stack(self.x0).numpy())


def _init_distributed() -> tuple[int, int]:
    """(rank, world size): under ``torchrun`` the seeds are sharded across its processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _gather_shards(x: Tensor, n: int, rank: int, world: int) -> Tensor:
    """Reassemble on rank 0 the samples that rank r drew for seeds[r::world]. (n, ...)"""
    import torch.distributed as dist

    parts: list = [None] * world if rank == 0 else None
    dist.gather_object(x, parts, dst=0)
    dist.barrier()
    dist.destroy_process_group()  # all ranks, before any of them exits (gloo aborts otherwise)
    if rank != 0:
        return x
    full = torch.empty(n, *x.shape[1:], dtype=x.dtype)
    for r, part in enumerate(parts):
        full[r::world] = part
    return full


def _draw(sampler: Sampler, den: Denoiser, shape: tuple, seeds: list[int], batch: int,
          device: torch.device, trajectory: Trajectory | None = None,
          show: bool = True) -> Tensor:
    """One sample per seed, each from its own generator: batch-size independent. (N, *shape)"""
    steps = len(sampler.timesteps(den.schedule))
    out = []
    cols = [TextColumn("sampling"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*cols, console=console, transient=True, disable=not show) as bar:
        task = bar.add_task("", total=steps * math.ceil(len(seeds) / batch))
        for start in range(0, len(seeds), batch):
            gens = [torch.Generator().manual_seed(s) for s in seeds[start:start + batch]]
            noise = randn_like(torch.empty(len(gens), *shape, device=device), gens)
            record = trajectory if start == 0 else None

            def advance(step: SamplerStep, record: Trajectory | None = record) -> None:
                bar.advance(task)
                if record is not None:
                    record(step)

            out.append(sampler.sample(den, noise, generator=gens, callback=advance).float().cpu())
    x = torch.cat(out)
    check_finite_samples(x)
    return x


def check_finite_samples(x: Tensor) -> None:
    """Refuse samples with NaN/inf entries (a broken network) instead of writing black images."""
    bad = ~torch.isfinite(x.flatten(1)).all(dim=1)
    if bool(bad.any()):
        raise DiffcliError(f"sampling produced non-finite values in {int(bad.sum())} of "
                           f"{len(x)} samples; nothing was written (the network's weights are "
                           "broken: check the training run)")


def _save_images(x: Tensor, seeds: list[int], out_dir: Path) -> None:
    from torchvision.io import write_png
    from torchvision.utils import make_grid, save_image

    imgs = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (N, C, H, W)
    np.savez_compressed(out_dir / "samples.npz", images=imgs.permute(0, 2, 3, 1).numpy(),
                        seeds=np.array(seeds))
    (out_dir / "images").mkdir(exist_ok=True)
    for img, seed in zip(imgs, seeds, strict=True):
        write_png(img, str(out_dir / "images" / f"{seed:06d}.png"))
    grid = make_grid(imgs.float() / 255, nrow=math.ceil(math.sqrt(len(x))), padding=1, pad_value=1)
    scale = max(1, 256 // max(x.shape[-1], 1) // 2)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    save_image(grid, out_dir / "grid.png")


def _save_points(x: Tensor, seeds: list[int], data: Tensor, out_dir: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    np.savez_compressed(out_dir / "samples.npz", points=x.numpy(), seeds=np.array(seeds))
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
    rank, world = _init_distributed()
    device = pick_device(cfg.device)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    net, dm, weights = _restore(run, cfg.use_ema, device)
    counter = CountingNet(torch.compile(net) if cfg.compile else net)
    schedule = build("schedule", run.config.schedule, source=str(ckpt))
    den = Denoiser(counter, schedule, run.config.prediction)
    clip = dm.kind == "image" if cfg.clip_denoised is None else bool(cfg.clip_denoised)
    extra = {"clip_denoised": clip} | ({"steps": cfg.steps} if cfg.steps is not None else {})
    sampler: Sampler = build("sampler", cfg.sampler, **extra)
    try:
        steps = len(sampler.timesteps(schedule))
    except ValueError as e:
        raise DiffcliError(str(e)) from None
    seeds = parse_seeds(cfg.seeds, cfg.n or (64 if dm.kind == "image" else 2000), cfg.seed)
    name = HydraConfig.get().runtime.choices.get("sampler") or type(sampler).__name__.lower()
    folder = OutputFolder(ckpt.parent.parent / "samples" / f"{name}-{steps}",
                          overwrite=bool(cfg.overwrite))
    trajectory = Trajectory(keep=cfg.trajectory) if cfg.trajectory else None
    mine = seeds[rank::world]  # each process draws every world-th seed
    with _precision(str(cfg.precision), device):
        x = _draw(sampler, den, dm.shape, mine, cfg.batch_size, device,
                  trajectory, show=rank == 0)
    if world > 1:
        x = _gather_shards(x, len(seeds), rank, world)
        if rank != 0:
            return folder.final
    span = f"seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
    nfe = counter.calls // math.ceil(len(mine) / cfg.batch_size)  # evaluations per sample
    meta = {"sampler": name, "sampler_config": OmegaConf.to_container(cfg.sampler),
            "steps": steps, "nfe": nfe, "n": len(seeds), "seeds": _compact(seeds),
            "checkpoint": str(ckpt), "global_step": run.global_step, "weights": weights,
            "clip_denoised": clip, "precision": str(cfg.precision), "processes": world}
    data = None if dm.kind == "image" else build_datamodule(run.config.dataset).data
    with folder as tmp:  # all or nothing: the folder appears only once complete
        if data is None:
            _save_images(x, seeds, tmp)
        else:  # the training points, drawn behind the samples
            _save_points(x, seeds, data, tmp, f"{name}, {steps} steps, {span}")
        if trajectory is not None:
            trajectory.save(tmp / "trajectory.npz")
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    out_dir = folder.path
    picture = "grid.png, images/" if dm.kind == "image" else "scatter.png"
    console.print(f"[green]wrote[/] {len(seeds)} samples ({name}, {steps} steps, {nfe} NFE per "
                  f"sample, {weights} weights, {span}) to {out_dir}/ : {picture}, samples.npz, "
                  "meta.json" + (", trajectory.npz" if trajectory else ""))
    return out_dir


def _compact(seeds: list[int]) -> str:
    """"0-999" for a contiguous range, else a comma list."""
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


@contextlib.contextmanager
def _precision(precision: str, device: torch.device):  # noqa: ANN202
    """bf16 autocast on CUDA when asked ("bf16"); fp32 otherwise (bf16 on CPU is very slow)."""
    if precision == "32":
        yield
        return
    if precision != "bf16":
        raise DiffcliError(f"precision={precision!r}: use 32 or bf16")
    if device.type != "cuda":
        raise DiffcliError("precision=bf16 is for CUDA devices; on CPU use precision=32")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yield
