"""`diffcli sample`: checkpoint -> network + schedule -> sampler -> PNG, .npz and JSON.

Three steps: :func:`resolve` (which checkpoint, sampler and seeds; everything checked before any
work), :func:`draw` (the samples, sharded across ``torchrun`` processes) and :func:`write` (one
new folder, all or nothing).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from torch import Tensor

from diffcli.api import draw_batches
from diffcli.checkpoint import LoadedRun
from diffcli.components import build_datamodule, plain
from diffcli.diffusion.generate import Trajectory, compact_seeds
from diffcli.diffusion.samplers import Sampler
from diffcli.errors import DiffcliError
from diffcli.files import OutputFolder, dumps_json
from diffcli.guided_run import Guidance, GuidedRun, forward_rows, guide
from diffcli.restore import (
    OpenedRun,
    autocast,
    check_precision,
    make_sampler,
    open_run,
    pick_device,
    require_diffusion,
    sampler_name,
    settle_sampler,
)
from diffcli.runs import run_dir_of, run_to_use
from diffcli.workflows.sample_files import ImageSink, PointSink

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


def sampler_choice() -> str | None:
    """The sampler option chosen on the command line (e.g. "dpmpp_2m"), outside Hydra None."""
    try:
        return HydraConfig.get().runtime.choices.get("sampler")
    except ValueError:
        return None


def guidance_keys(cfg: DictConfig) -> Guidance:
    """The guidance keys of a sampling command's config."""
    interval = cfg.get("guidance_interval")
    return Guidance(scale=cfg.get("guidance"), classes=plain(cfg.get("classes")),
                    classifier=cfg.get("classifier"), classifier_scale=cfg.get("classifier_scale"),
                    interval=None if interval is None else [float(v) for v in interval],
                    rescale=float(cfg.get("guidance_rescale") or 0.0),
                    prompt=plain(cfg.get("prompt")), guide=cfg.get("guide"))


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
    note: str | None = None  # n rounded up to a multiple of the classes (GuidedRun.even_seeds)
    sampler_notes: list[str] = field(default_factory=list)  # auto's pick, grid adaptations


def resolve(cfg: DictConfig, device: torch.device, run: LoadedRun) -> Request:
    """Network, sampler and seeds of ``cfg`` for the checkpoint ``run`` (read once, by the
    caller); every input checked."""
    ckpt = run.path
    require_diffusion(run)
    kind = run.data_info().kind
    seeds = parse_seeds(cfg.seeds, cfg.n or (64 if kind == "image" else 2000), cfg.seed)
    opened = open_run(run, use_ema=bool(cfg.use_ema), device=device, compile=bool(cfg.compile),
                      batch_size=min(int(cfg.batch_size), len(seeds)),
                      rows_per_item=forward_rows(cfg.get("guidance")))
    clip = kind == "image" if cfg.clip_denoised is None else bool(cfg.clip_denoised)
    sampler, steps = make_sampler(cfg.sampler, opened.schedule, run=opened.run, steps=cfg.steps,
                                  clip_denoised=clip)
    check_precision(str(cfg.precision), device)
    guided = guide(opened, guidance_keys(cfg), device)
    seeds, note = guided.even_seeds(seeds, given=cfg.seeds is not None)
    labels = guided.labels(len(seeds))
    name = sampler_name(sampler_choice(), sampler)
    sampler, sampler_notes = settle_sampler(sampler, opened.denoiser)
    folder = OutputFolder(run_dir_of(ckpt) / "samples" / f"{name}-{steps}{guided.tag}",
                          overwrite=bool(cfg.overwrite), kind="samples")
    return Request(opened, sampler, name, steps, seeds, clip, device, folder, guided, labels, note,
                   sampler_notes)


def draw(req: Request, cfg: DictConfig, rank: int, world: int,
         trajectory: Trajectory | None) -> Iterator[Tensor]:
    """The samples, batch by batch in seed order (B, *shape) float32 CPU: this process's
    seeds are every ``world``-th; rank 0 yields every process's batch j together, the others
    yield nothing."""
    mine = req.seeds[rank::world]
    labels = None if req.labels is None else req.labels[rank::world]
    batch_size = int(cfg.batch_size)
    batches = _autocast_each(
        draw_batches(req.sampler, req.opened, mine, batch_size, req.device, trajectory,
                     show=rank == 0, denoiser=req.guided.denoiser, labels=labels),
        str(cfg.precision), req.device)
    if world == 1:
        yield from batches
    else:
        yield from _gathered(batches, len(req.seeds), rank, world, batch_size)


def _autocast_each(batches: Iterator[Tensor], precision: str,
                   device: torch.device) -> Iterator[Tensor]:
    """``batches``, each drawn under ``precision``'s autocast (and written outside it)."""
    while True:
        with autocast(precision, device):
            x = next(batches, None)
        if x is None:
            return
        yield x


def write(req: Request, cfg: DictConfig, batches: Iterable[Tensor],
          trajectory: Trajectory | None, world: int) -> Path:
    """Pictures, samples.npz, meta.json (and trajectory.npz) into one new folder, each batch
    written as it is drawn (:mod:`diffcli.workflows.sample_files`)."""
    seeds, name, steps = req.seeds, req.name, req.steps
    span = f"seeds {seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else f"seed {seeds[0]}"
    rows = None if req.labels is None else math.ceil(len(seeds) / len(req.guided.classes or [1]))
    image = req.opened.info.kind == "image"
    labels = req.labels if req.guided.tokens is None else req.guided.indices(len(seeds))
    with req.folder as tmp:  # all or nothing: the folder appears only once complete
        if image:
            sink: ImageSink | PointSink = ImageSink(tmp, seeds, req.opened.info.shape, labels,
                                                    per_row=rows)
        else:  # the training points, drawn behind the samples
            data = build_datamodule(req.opened.run.config["dataset"]).data
            sink = PointSink(tmp, seeds, data, f"{name}, {steps} steps, {span}{_guided(req)}",
                             req.labels)
        with sink:
            for x in batches:
                sink.add(x)
            sink.close()
        if trajectory is not None:
            trajectory.save(tmp / "trajectory.npz")
        nfe = req.opened.counter.rows // len(seeds[0::world])  # evaluations per sample
        (tmp / "meta.json").write_text(dumps_json(_meta(req, cfg, nfe, world)))
    picture = "grid.png, images/" if image else "scatter.png"
    console.print(f"[green]wrote[/] {len(seeds)} samples ({name}, {steps} steps, {nfe} NFE per "
                  f"sample, {req.opened.weights} weights, {span}{_guided(req)}) to "
                  f"{req.folder.path}/ : "
                  f"{picture}, samples.npz, meta.json" + (", trajectory.npz" if trajectory else ""))
    return req.folder.path


def _meta(req: Request, cfg: DictConfig, nfe: int, world: int) -> dict:
    """meta.json of a sampling call."""
    meta = {"sampler": req.name, "sampler_config": OmegaConf.to_container(cfg.sampler),
            "steps": req.steps, "nfe": nfe, "n": len(req.seeds),
            "seeds": compact_seeds(req.seeds), "checkpoint": str(req.opened.ckpt),
            "global_step": req.opened.run.global_step, "weights": req.opened.weights,
            "clip_denoised": req.clip, "precision": str(cfg.precision), "processes": world,
            "sampler_notes": req.sampler_notes,
            **req.guided.meta}
    if req.guided.class_names is not None and req.guided.classes is not None \
            and req.guided.tokens is None:
        meta["class_names"] = [req.guided.class_names[c] for c in req.guided.classes]
    if req.guided.tokens is not None:  # samples.npz: labels = the prompt number of each image
        meta["prompts"] = list(req.guided.meta["prompts"])
    return meta


def sample(cfg: DictConfig, run: LoadedRun | None = None) -> Path:
    """Sample from a trained run (``run``: its checkpoint, when the command's check read it);
    returns the output folder. An autoencoder's "samples" are its reconstructions."""
    rank, world = _init_distributed()
    device = pick_device(cfg.device)
    run = run_to_use(cfg.ckpt, cfg.runs_root, run)  # read once, handed on
    if run.kind.encodes:
        from diffcli.workflows.reconstruct import reconstruct

        return reconstruct(cfg, run, device)
    cfg.ckpt = str(run.path)
    if world > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
    req = resolve(cfg, device, run)
    if rank == 0:
        for line in [req.note] * bool(req.note) + req.sampler_notes:
            console.print(f"[yellow]note[/]: {line}")
    trajectory = Trajectory(keep=cfg.trajectory) if cfg.trajectory else None
    batches = draw(req, cfg, rank, world, trajectory)
    if rank != 0:
        for _ in batches:  # this rank's share, sent to rank 0
            pass
        return req.folder.final
    return write(req, cfg, batches, trajectory, world)


def _init_distributed() -> tuple[int, int]:
    """(rank, world size): under ``torchrun`` the seeds are sharded across its processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def _gathered(batches: Iterator[Tensor], n: int, rank: int, world: int,
              batch_size: int) -> Iterator[Tensor]:
    """Rank r draws seeds[r::world]; its batch j holds seeds[world * (j * B + i) + r], so
    batch j of every rank together is the contiguous block of seeds
    [j * B * world, (j + 1) * B * world): rank 0 interleaves and yields it (no rank holds more
    than a batch)."""
    import torch.distributed as dist

    rounds = math.ceil(math.ceil(n / world) / batch_size)  # rank 0 draws the most
    for _ in range(rounds):
        x = next(batches, None)  # None: this rank has drawn all of its seeds
        parts: list | None = [None] * world if rank == 0 else None
        dist.gather_object(x, parts, dst=0)
        if rank == 0:
            got = [p for p in parts if p is not None]
            block = torch.empty(sum(len(p) for p in got), *got[0].shape[1:], dtype=got[0].dtype)
            for r, part in enumerate(got):
                block[r::world] = part
            yield block
    dist.barrier()
    dist.destroy_process_group()  # all ranks, before any of them exits (gloo aborts otherwise)


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
