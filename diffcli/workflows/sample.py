"""`diffcli sample`: checkpoint -> network + schedule -> sampler -> PNG, .npz and JSON.

Three steps: :func:`resolve` (which checkpoint, sampler and seeds; everything checked before any
work), :func:`draw` (the samples, sharded across ``torchrun`` processes) and :func:`write` (one
new folder, all or nothing).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import Tensor

from diffcli.api import draw as draw_samples
from diffcli.components import plain
from diffcli.diffusion.generate import Trajectory, compact_seeds, to_uint8
from diffcli.diffusion.samplers import Sampler
from diffcli.errors import DiffcliError
from diffcli.files import OutputFolder, dumps_json
from diffcli.guide import Guidance, GuidedRun, guide
from diffcli.runs import (
    OpenedRun,
    autocast,
    build_datamodule,
    check_precision,
    checkpoint_of,
    find_latest_checkpoint,
    load_checkpoint,
    make_sampler,
    open_run,
    pick_device,
    run_dir_of,
    run_roots,
    sampler_name,
)

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line


MAX_SEEDS = 10_000_000  # one call; more is a mistake or a job for several calls


def parse_seeds(spec: str | int | list | None, n: int, seed: int) -> list[int]:
    """Seeds from ``seeds=`` ("0-999", "0,5,7", "3-5,9" or a list), else ``seed .. seed+n-1``;
    at most :data:`MAX_SEEDS`, counted before any list is made."""
    if spec is None:
        ranges = [(seed, seed + n - 1)]
    else:
        parts = spec if isinstance(spec, list | tuple) else str(spec).split(",")
        ranges = []
        try:
            for part in (str(p).strip() for p in parts):
                lo, _, hi = part.partition("-")
                ranges.append((int(lo), int(hi) if hi else int(lo)))
        except ValueError:
            raise DiffcliError(f"bad seeds={spec!r}: use a range like 0-999 or a list 1,5,7") \
                from None
        if not ranges or any(hi < lo for lo, hi in ranges):
            raise DiffcliError(f"seeds={spec!r} selects no seed (a range is low-high)")
    count = sum(hi - lo + 1 for lo, hi in ranges)
    if count > MAX_SEEDS:
        raise DiffcliError(f"{count:,} seeds asked for; one call draws at most {MAX_SEEDS:,} "
                           "(split the range over several calls or processes)")
    if any(lo < 0 for lo, _ in ranges):
        raise DiffcliError(f"seeds must be >= 0, got {spec if spec is not None else seed}")
    return [s for lo, hi in ranges for s in range(lo, hi + 1)]


def check_memory(n: int, shape: tuple[int, ...], batch_size: int) -> None:
    """Refuse, in one line, a call whose samples (float32 + uint8 copies) or one batch's noise
    alone would not fit in the memory available now."""
    per_item = 5 * math.prod(shape)  # bytes: float32 + uint8
    need = n * per_item + min(batch_size, n) * 4 * math.prod(shape) * 8
    try:
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > 0.8 * free:
        raise DiffcliError(f"{n:,} samples of shape {tuple(shape)} with batch_size={batch_size} "
                           f"need about {need / 2**30:.1f} GiB, but {free / 2**30:.1f} GiB is "
                           "free: draw fewer per call (n=, seeds=) or lower batch_size")


def sampler_choice() -> str | None:
    """The sampler option chosen on the command line (e.g. "dpmpp_2m"), outside Hydra None."""
    try:
        return HydraConfig.get().runtime.choices.get("sampler")
    except ValueError:
        return None


def checkpoint_to_use(ckpt: str | None, runs_root: str) -> Path:
    """``ckpt=`` as given (a run folder: its last.ckpt), else the newest run's last.ckpt (said
    on the console)."""
    if ckpt:
        return checkpoint_of(str(ckpt))
    found = find_latest_checkpoint(run_roots(runs_root))
    console.print(f"using the newest run's checkpoint: {found}")
    return found


def guidance_keys(cfg: DictConfig) -> Guidance:
    """The guidance keys of a sampling command's config."""
    interval = cfg.get("guidance_interval")
    return Guidance(scale=cfg.get("guidance"), classes=plain(cfg.get("classes")),
                    classifier=cfg.get("classifier"), classifier_scale=cfg.get("classifier_scale"),
                    interval=None if interval is None else [float(v) for v in interval],
                    rescale=float(cfg.get("guidance_rescale") or 0.0),
                    prompt=plain(cfg.get("prompt")))


@dataclass
class Request:
    """A sampling call, resolved and checked: what to draw and where it goes."""

    opened: OpenedRun
    sampler: Sampler
    name: str
    steps: int
    seeds: list[int]
    clip: bool
    device: torch.device
    folder: OutputFolder
    guided: GuidedRun
    labels: Tensor | None  # (N,) each seed's class; None: unconditional


def resolve(cfg: DictConfig, device: torch.device) -> Request:
    """Checkpoint, network, sampler and seeds of ``cfg``; every input checked."""
    ckpt = checkpoint_to_use(cfg.ckpt, cfg.runs_root)
    opened = open_run(ckpt, use_ema=bool(cfg.use_ema), device=device, compile=bool(cfg.compile))
    kind = opened.info.kind
    clip = kind == "image" if cfg.clip_denoised is None else bool(cfg.clip_denoised)
    sampler, steps = make_sampler(cfg.sampler, opened.schedule, run=opened.run, steps=cfg.steps,
                                  clip_denoised=clip)
    seeds = parse_seeds(cfg.seeds, cfg.n or (64 if kind == "image" else 2000), cfg.seed)
    check_precision(str(cfg.precision), device)
    check_memory(len(seeds), opened.info.shape, int(cfg.batch_size))
    guided = guide(opened, guidance_keys(cfg), device)
    labels = guided.labels(len(seeds))
    name = sampler_name(sampler_choice(), sampler)
    folder = OutputFolder(run_dir_of(ckpt) / "samples" / f"{name}-{steps}{guided.tag}",
                          overwrite=bool(cfg.overwrite), kind="samples")
    return Request(opened, sampler, name, steps, seeds, clip, device, folder, guided, labels)


def draw(req: Request, cfg: DictConfig, rank: int, world: int,
         trajectory: Trajectory | None) -> Tensor | None:
    """This process's seeds (every ``world``-th), gathered on rank 0 (None elsewhere)."""
    mine = req.seeds[rank::world]
    labels = None if req.labels is None else req.labels[rank::world]
    with autocast(str(cfg.precision), req.device):
        x = draw_samples(req.sampler, req.opened, mine, int(cfg.batch_size), req.device,
                         trajectory, show=rank == 0, denoiser=req.guided.denoiser, labels=labels)
    if world > 1:
        x = _gather_shards(x, len(req.seeds), rank, world)
    return x if rank == 0 else None


def write(req: Request, cfg: DictConfig, x: Tensor, trajectory: Trajectory | None,
          world: int) -> Path:
    """Pictures, samples.npz, meta.json (and trajectory.npz) into one new folder."""
    seeds, name, steps = req.seeds, req.name, req.steps
    span = f"seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
    nfe = req.opened.counter.rows // len(seeds[0::world])  # evaluations per sample
    meta = {"sampler": name, "sampler_config": OmegaConf.to_container(cfg.sampler),
            "steps": steps, "nfe": nfe, "n": len(seeds), "seeds": compact_seeds(seeds),
            "checkpoint": str(req.opened.ckpt), "global_step": req.opened.run.global_step,
            "weights": req.opened.weights, "clip_denoised": req.clip,
            "precision": str(cfg.precision), "processes": world, **req.guided.meta}
    if req.guided.class_names is not None and req.guided.classes is not None \
            and req.guided.tokens is None:
        meta["class_names"] = [req.guided.class_names[c] for c in req.guided.classes]
    rows = None if req.labels is None else math.ceil(len(seeds) / len(req.guided.classes or [1]))
    image = req.opened.info.kind == "image"
    data = None if image else build_datamodule(req.opened.run.config["dataset"]).data
    labels = req.labels if req.guided.tokens is None else req.guided.indices(len(seeds))
    if req.guided.tokens is not None:  # samples.npz: labels = the prompt number of each image
        meta["prompts"] = list(req.guided.meta["prompts"])
    with req.folder as tmp:  # all or nothing: the folder appears only once complete
        if data is None:
            _save_images(x, seeds, tmp, labels, per_row=rows)
        else:  # the training points, drawn behind the samples
            _save_points(x, seeds, data, tmp, f"{name}, {steps} steps, {span}{_guided(req)}",
                         req.labels)
        if trajectory is not None:
            trajectory.save(tmp / "trajectory.npz")
        (tmp / "meta.json").write_text(dumps_json(meta))
    picture = "grid.png, images/" if image else "scatter.png"
    console.print(f"[green]wrote[/] {len(seeds)} samples ({name}, {steps} steps, {nfe} NFE per "
                  f"sample, {req.opened.weights} weights, {span}{_guided(req)}) to "
                  f"{req.folder.path}/ : "
                  f"{picture}, samples.npz, meta.json" + (", trajectory.npz" if trajectory else ""))
    return req.folder.path


def sample(cfg: DictConfig) -> Path:
    """Sample from a trained run; returns the output folder."""
    rank, world = _init_distributed()
    device = pick_device(cfg.device)
    ckpt = checkpoint_to_use(cfg.ckpt, cfg.runs_root)
    if load_checkpoint(ckpt).task == "autoencoder":
        from diffcli.workflows.reconstruct import reconstruct

        return reconstruct(cfg, ckpt, device)
    cfg.ckpt = str(ckpt)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    req = resolve(cfg, device)
    trajectory = Trajectory(keep=cfg.trajectory) if cfg.trajectory else None
    x = draw(req, cfg, rank, world, trajectory)
    if x is None:
        return req.folder.final
    return write(req, cfg, x, trajectory, world)


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


def _guided(req: Request) -> str:
    """", classes 0-9, guidance 3" for messages and titles ("" when unconditional)."""
    meta = req.guided.meta
    if req.guided.classes is None:
        return ""
    if "prompts" in meta:
        shown = "; ".join(f'"{p}"' for p in meta["prompts"][:3])
        more = f" (+{len(meta['prompts']) - 3})" if len(meta["prompts"]) > 3 else ""
        return f", prompt {shown}{more}, guidance {meta['guidance']:g}"
    text = f", classes {compact_seeds(req.guided.classes)}"
    if "guidance" in meta:
        text += f", guidance {meta['guidance']:g}"
    if "classifier_scale" in meta:
        text += f", classifier scale {meta['classifier_scale']:g}"
    return text


def _extra_arrays(labels: Tensor | None) -> dict[str, np.ndarray]:
    return {} if labels is None else {"labels": labels.numpy()}


def _save_images(x: Tensor, seeds: list[int], out_dir: Path, labels: Tensor | None = None,
                 per_row: int | None = None) -> None:
    """samples.npz, images/<seed>.png and grid.png (``per_row`` images a row: one row per
    class for class-conditional samples)."""
    from torchvision.io import write_png
    from torchvision.utils import make_grid, save_image

    imgs = to_uint8(x)  # (N, C, H, W)
    np.savez_compressed(out_dir / "samples.npz", images=imgs.permute(0, 2, 3, 1).numpy(),
                        seeds=np.array(seeds), **_extra_arrays(labels))
    (out_dir / "images").mkdir(exist_ok=True)
    for img, seed in zip(imgs, seeds, strict=True):
        write_png(img, str(out_dir / "images" / f"{seed:06d}.png"))
    nrow = per_row or math.ceil(math.sqrt(len(x)))
    grid = make_grid(imgs.float() / 255, nrow=nrow, padding=1, pad_value=1)
    scale = max(1, 256 // max(x.shape[-1], 1) // 2)
    grid = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    save_image(grid, out_dir / "grid.png")


def _save_points(x: Tensor, seeds: list[int], data: Tensor, out_dir: Path, title: str,
                 labels: Tensor | None = None) -> None:
    """samples.npz and scatter.png: the samples (coloured by class when labelled) over the
    training points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    np.savez_compressed(out_dir / "samples.npz", points=x.numpy(), seeds=np.array(seeds),
                        **_extra_arrays(labels))
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.scatter(data[:, 0], data[:, 1], s=2, c="0.75", label="data")
    if labels is None:
        ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:red", label="samples")
    for c in ([] if labels is None else sorted(set(labels.tolist()))):
        pick = labels == c
        ax.scatter(x[pick, 0], x[pick, 1], s=2, label=f"class {c}")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / "scatter.png")
    plt.close(fig)


