"""`diffcli noise-viz`: config -> images, schedules (+ a trained run) -> explanatory pictures.

Writes ``forward.png`` (images noised by q(x_t | x_0) under each schedule, or at the noise
levels of a continuous objective: ``objective=edm|flow`` or a run trained with one),
``schedules.png`` (alpha-bar, beta and log-SNR curves), ``noise-levels.png`` (every objective's
training and sampling noise levels over ln sigma) and, from a checkpoint, ``reverse.png`` (a
sampler's x_t and x0 estimates); ``gif=true`` adds ``forward.gif`` / ``reverse.gif``. This module
and :mod:`diffcli.workflows.objective_pictures` read the config; the drawing lives in
:mod:`diffcli.viz`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from torch import Tensor

from diffcli.checkpoint import LoadedRun
from diffcli.components import build
from diffcli.diffusion.schedules import NoiseSchedule
from diffcli.errors import DiffcliError
from diffcli.files import staged_files
from diffcli.restore import sampler_name
from diffcli.runs import run_dir_of, run_to_use
from diffcli.viz import (
    evenly_spaced,
    forward_frames,
    forward_grid,
    plot_forward_grid,
    plot_reverse,
    plot_schedules,
    reverse_frames,
    save_gif,
)
from diffcli.workflows.objective_pictures import (
    Drawn,
    draw_noise_levels,
    draw_objective_forward,
    drawn_objective,
    level_title,
    reverse_levels,
)

if TYPE_CHECKING:
    from diffcli.diffusion.samplers import Denoiser, Sampler

# Data and checkpoint code (torchvision, Lightning) is imported where it is used, so that bad
# schedules or timesteps are reported before those seconds of imports.
console = Console(stderr=True, soft_wrap=True)  # a log line stays one line
DEFAULT_FRACTIONS = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0)  # timesteps: null -> these x T, T-1 at most


@dataclass
class Reverse:
    """Everything the reverse picture needs, checked before anything is drawn."""

    ckpt: Path
    sampler: Sampler
    denoiser: Denoiser
    shape: tuple[int, ...]
    device: torch.device
    name: str
    global_step: int
    guided: Any = None  # a GuidedRun of one class (guidance keys given), else None
    unguided: Denoiser | None = None  # what it is compared with: w = 0 / no classifier
    opened: Any = None  # the OpenedRun (latent models: its codec decodes the pictures)

    def decode(self, z: Tensor) -> Tensor:
        """Latents (..., c, h, w) as images (..., C, H, W) for a latent model; else z."""
        if self.opened is None or self.opened.codec is None:
            return z
        lead = z.shape[:-3]
        x = self.opened.decode(z.reshape(-1, *z.shape[-3:]))
        return x.reshape(*lead, *x.shape[-3:])


def _as_list(value: object) -> list:
    """A config value that may be one item or a list, as a plain list."""
    if isinstance(value, ListConfig | list | tuple):
        return list(value)
    return [value]


def build_schedules(names: object, num_timesteps: object,
                    conf_dir: Path) -> list[NoiseSchedule]:
    """The ``<conf_dir>/schedule`` options ``names`` (e.g. [linear, cosine]), each with
    T = num_timesteps."""
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, int) or num_timesteps < 2:
        raise DiffcliError(f"num_timesteps must be an integer >= 2, got {num_timesteps!r}")
    folder = conf_dir / "schedule"
    options = sorted(p.stem for p in folder.glob("*.yaml"))
    names = _as_list(names)
    if not names:
        raise DiffcliError(f"schedules is empty; choose some of: {', '.join(options)}")
    schedules = []
    for name in names:
        if str(name) not in options:
            raise DiffcliError(f"unknown schedule {name!r}; choose from: {', '.join(options)} "
                               "(e.g. schedules=[linear,cosine])")
        conf = OmegaConf.load(folder / f"{name}.yaml")
        schedules.append(build("schedule", conf, source=str(folder / f"{name}.yaml"),
                               num_timesteps=num_timesteps))
    return schedules


def check_timesteps(timesteps: object, num_timesteps: int) -> list[int]:
    """The configured timesteps as ints in [0, T-1]; null gives 0, .1T, .25T, .5T, .75T, T-1."""
    last = num_timesteps - 1
    if timesteps is None:
        return sorted({min(round(f * num_timesteps), last) for f in DEFAULT_FRACTIONS})
    values = _as_list(timesteps)
    if not values:
        raise DiffcliError(f"timesteps is empty; give some in [0, {last}], e.g. [0,250,{last}]")
    for t in values:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t <= last:
            raise DiffcliError(f"timestep {t!r} is out of range: timesteps must be integers in "
                               f"[0, {last}] (num_timesteps={num_timesteps})")
    return values


def _load_image_files(image: object, size: int) -> Tensor:
    """The files of ``image=`` resized and center-cropped to size x size. (N, C, S, S) in [-1, 1]"""
    from functools import partial

    from PIL import Image, UnidentifiedImageError

    from diffcli.data.vision import decode_image, resize_short_side_center_crop

    paths = [Path(str(p)).expanduser() for p in _as_list(image)]
    images = []
    for path in paths:
        if not path.is_file():
            raise DiffcliError(f"image file not found: {path}")
        try:
            with Image.open(path) as im:
                gray = im.mode in ("1", "L", "LA", "I", "F") or im.mode.startswith("I;16")
        except (OSError, UnidentifiedImageError, ValueError) as e:
            raise DiffcliError(f"cannot read image {path} ({str(e).splitlines()[0]})") from None
        prepare = partial(resize_short_side_center_crop, size=size)
        pixels = decode_image(path, 1 if gray else 3, prepare)
        images.append(pixels.float() / 127.5 - 1)
    if len({im.shape[0] for im in images}) > 1:  # mixed grayscale and colour: all to RGB
        images = [im.expand(3, -1, -1) for im in images]
    return torch.stack(images)


def _load_dataset_images(cfg: DictConfig) -> Tensor:
    """``num_images`` images (or ``indices``) of the configured dataset. (N, C, S, S) in [-1, 1]"""
    from diffcli.data.registry import POINT_DATASETS, build_dataset

    ds = cfg.dataset
    if ds.name in POINT_DATASETS:
        raise DiffcliError(f"dataset={ds.name} is 2-D point data; noise-viz draws images: use "
                           "dataset=digits (or mnist, cifar10, ...) or image=<path to a png/jpg>")
    dataset = build_dataset(
        ds.name, root=ds.get("root"), split=ds.get("split", "train"),
        image_size=ds.get("image_size"), download=bool(ds.get("download", False)),
        channels=int(ds.get("channels", 3)))
    indices = (_as_list(cfg.indices) if cfg.indices is not None
               else list(range(_positive(cfg.num_images, "num_images"))))
    bad = [i for i in indices if isinstance(i, bool) or not isinstance(i, int)
           or not 0 <= i < len(dataset)]
    if bad:
        raise DiffcliError(f"indices {bad} are not in [0, {len(dataset) - 1}] "
                           f"(dataset={ds.name} has {len(dataset)} images)")
    return torch.stack([dataset[i] for i in indices]).float()


def _positive(value: object, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DiffcliError(f"{key} must be a positive integer, got {value!r}")
    return value


def load_images(cfg: DictConfig) -> Tensor:
    """The clean images x0 to noise: ``image=`` files, else the dataset's. (N, C, S, S)"""
    if cfg.image is not None:
        return _load_image_files(cfg.image, _positive(cfg.image_size, "image_size"))
    return _load_dataset_images(cfg)


def prepare_reverse(cfg: DictConfig, run: LoadedRun | None = None) -> Reverse | None:
    """The checkpoint (``ckpt=``, or the newest run's with ``reverse=true``; ``run``: already
    read from it), its network and the sampler, or None when no reverse picture is asked for."""
    if not cfg.ckpt and not cfg.reverse:
        return None
    from diffcli.guided_run import forward_rows, guide
    from diffcli.restore import make_sampler, open_run, pick_device
    from diffcli.workflows.draw_samples import guidance_keys, sampler_choice

    run = run_to_use(cfg.ckpt, cfg.runs_root, run)
    ckpt = run.path
    device = pick_device(str(cfg.device))
    opened = open_run(run, use_ema=bool(cfg.use_ema), device=device,
                      batch_size=_positive(cfg.num_images, "num_images"),
                      rows_per_item=forward_rows(cfg.get("guidance")))
    if opened.info.kind != "image":
        raise DiffcliError(f"{ckpt} was trained on 2-D points; noise-viz draws images: use a run "
                           "trained on images (e.g. dataset=digits)")
    sampler, _ = make_sampler(cfg.sampler, opened.schedule, steps=cfg.steps,
                              clip_denoised=True, run=opened.run)
    rev = Reverse(ckpt, sampler, opened.denoiser, opened.sample_shape, device,
                  sampler_name(sampler_choice(), sampler), opened.run.global_step,
                  opened=opened)
    keys = guidance_keys(cfg)
    if keys.used:
        rev.guided = guide(opened, keys, device)
        rev.guided.classes = rev.guided.classes[:1]  # one class, next to the unguided process
        unguided = dataclasses.replace(keys, scale=0.0, classifier=None, classifier_scale=None,
                                       classes=None, guide=None)
        unguided = dataclasses.replace(unguided, prompt=None)
        rev.unguided = guide(opened, unguided, device).denoiser
    return rev


def output_dir(reverse: Reverse | None) -> Path:
    """``<run dir>/viz`` of the checkpoint, else this command's Hydra run dir."""
    if reverse is None:
        return Path(HydraConfig.get().runtime.output_dir)
    ckpt = reverse.ckpt.resolve()
    run_dir = run_dir_of(ckpt)
    return run_dir / "viz"


def draw_forward(cfg: DictConfig, x0: Tensor, schedules: list[NoiseSchedule], names: list[str],
                 timesteps: list[int], out: Path, drawn: Drawn | None = None) -> list[Path]:
    """forward.png, schedules.png and (gif=true) forward.gif; with ``drawn`` (a continuous
    objective) forward.png and forward.gif show it, at its own noise levels."""
    gen = torch.Generator().manual_seed(int(cfg.seed))
    noise = torch.randn(x0.shape, generator=gen)
    T = schedules[0].num_timesteps
    if drawn is not None:
        gif = _positive(cfg.gif_frames, "gif_frames") if cfg.gif else None
        return [*draw_objective_forward(x0, noise, drawn.objective, drawn.sigmas, out,
                                        drawn.whose, gif),
                plot_schedules(schedules, out / "schedules.png", labels=names,
                               title=f"noise schedules of the DDPM chain, T = {T}")]
    grid = forward_grid(x0, schedules, timesteps, noise)
    abar = torch.stack([s.alphas_cumprod[timesteps] for s in schedules])
    title = (r"forward process $x_t = \sqrt{\bar\alpha_t}\, x_0 + \sqrt{1 - \bar\alpha_t}\,"
             rf"\epsilon$, T = {T}, the same $\epsilon$ in every row")
    written = [plot_forward_grid(grid, names, timesteps, abar, out / "forward.png", title=title),
               plot_schedules(schedules, out / "schedules.png", labels=names,
                              marks=[(t + 1) / T for t in timesteps],
                              title=f"noise schedules, T = {T} (dotted: the columns of "
                                    "forward.png)")]
    if cfg.gif:
        frames = evenly_spaced(_positive(cfg.gif_frames, "gif_frames"), T)
        written.append(save_gif(forward_frames(x0, schedules, names, frames, noise),
                                out / "forward.gif"))
    return written


def draw_reverse(cfg: DictConfig, rev: Reverse, out: Path) -> list[Path]:
    """reverse.png (x_t and predicted x0 at evenly spaced steps) and (gif=true) reverse.gif."""
    from diffcli.diffusion.generate import Trajectory, generate

    n = _positive(cfg.num_images, "num_images")
    seeds = list(range(int(cfg.seed), int(cfg.seed) + n))
    runs = [(rev.denoiser, None, None)]
    if rev.guided is not None:  # the same seeds unguided, then guided towards one class
        runs = [(rev.unguided, None, "unguided"),
                (rev.guided.denoiser, rev.guided.labels(n), _guided_name(rev.guided))]
    trajs, finals = [], []
    for denoiser, labels, _ in runs:
        trajs.append(Trajectory(keep=n))
        finals.append(generate(rev.sampler, denoiser, rev.shape, seeds, n, rev.device,
                               trajectory=trajs[-1], labels=labels))
    t = trajs[0].t
    x_t = rev.decode(torch.cat([torch.stack(tr.x_t) for tr in trajs], dim=1))  # (K, runs N, ...)
    x0 = rev.decode(torch.cat([torch.stack(tr.x0) for tr in trajs], dim=1))
    finals = [rev.decode(f) for f in finals]
    names = [f"{name}\nseed {s}" for _, _, name in runs for s in seeds] if len(runs) > 1 else None
    cols = evenly_spaced(_positive(cfg.reverse_columns, "reverse_columns"), len(t))
    title = f"reverse process: {rev.name}, {len(t)} steps, checkpoint at step {rev.global_step}"
    if rev.opened is not None and rev.opened.codec is not None:
        title += " (latents, shown decoded)"
    continuous = rev.opened.run.continuous if rev.opened is not None else None
    levels = None
    if continuous is not None:
        title += f", objective={continuous.name}"
        levels = reverse_levels(continuous, rev.opened.schedule, [t[c] for c in cols])
    written = [plot_reverse([t[c] for c in cols], x_t[cols], x0[cols], out / "reverse.png",
                            title=title, total_steps=len(t), steps=cols, final=torch.cat(finals),
                            row_names=names, levels=levels)]
    if cfg.gif:
        written.append(save_gif(reverse_frames(t, x_t, x0), out / "reverse.gif"))
    return written


def draw_latent_forward(cfg: DictConfig, rev: Reverse, timesteps: list[int], out: Path) -> Path:
    """forward-latent.png of a latent diffusion run: its own images noised in pixel space and in
    its latent space (z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps, shown decoded, D(z_t / s)),
    one row each, under the run's schedule (Rombach et al. 2022)."""
    from diffcli.components import build_datamodule
    from diffcli.diffusion.process import q_sample

    opened = rev.opened
    schedule = opened.schedule
    T = schedule.num_timesteps
    ts = sorted({min(T - 1, round(t * (T - 1) / max(1, int(cfg.num_timesteps) - 1)))
                 for t in timesteps})
    x0, _ = build_datamodule(opened.run.config["dataset"]).head(_positive(cfg.num_images,
                                                                          "num_images"))
    gen = torch.Generator().manual_seed(int(cfg.seed))
    z0 = opened.codec.encode_batches(x0)
    t = torch.tensor(ts).repeat(len(x0))  # (N * K,) image-major
    pixels = q_sample(schedule, x0.repeat_interleave(len(ts), 0), t,
                      torch.randn((len(t), *x0.shape[1:]), generator=gen))
    latents = q_sample(schedule, z0.repeat_interleave(len(ts), 0), t,
                       torch.randn((len(t), *z0.shape[1:]), generator=gen))
    rows = torch.stack([pixels, opened.decode(latents)]).reshape(2, len(x0), len(ts),
                                                                 *x0.shape[1:])
    abar = schedule.alphas_cumprod[ts].repeat(2, 1)
    shape = "x".join(map(str, z0.shape[1:]))
    continuous, where = opened.run.continuous, f"{schedule.name} T = {T}"
    if continuous is not None:  # its sampling lattice's noise levels, not indices
        where = f"objective={continuous.name}, on its sampling lattice"
    return plot_forward_grid(rows, ["pixel space", f"latent {shape}\n(decoded)"], ts, abar,
                             out / "forward-latent.png",
                             title=f"noise in pixel space vs in the autoencoder's latent space "
                                   f"(decoded), {where}",
                             column_titles=None if continuous is None else [
                                 level_title(continuous, float(schedule.sigmas[t])) for t in ts])


def _run_objective(rev: Reverse | None) -> Drawn | None:
    """The continuous objective (EDM, flow) of the run drawn, else None."""
    objective = None if rev is None or rev.opened is None else rev.opened.run.continuous
    if objective is None:
        return None
    folder = run_dir_of(rev.ckpt.resolve())
    return Drawn(objective, None, f"run {folder.parent.name}/{folder.name} (objective="
                 f"{objective.name}, step {rev.global_step}), ", "this run")


def _guided_name(guided: Any) -> str:
    """"class 7 (seven), w=3" for the rows of the guided process."""
    if "prompts" in guided.meta:
        return f'"{guided.meta["prompts"][0]}", w={guided.meta["guidance"]:g}'
    c = guided.classes[0]
    name = f"class {c}"
    if guided.class_names and guided.class_names[c] != str(c):
        name += f" ({guided.class_names[c]})"
    parts = [f"w={guided.meta['guidance']:g}"] if "guidance" in guided.meta else []
    if "classifier_scale" in guided.meta:
        parts.append(f"s={guided.meta['classifier_scale']:g}")
    return f"{name}, {', '.join(parts)}"


def _drop_empty_run_dir() -> None:
    """Remove this command's Hydra run dir if it is empty, then ``<runs_root>/noise-viz`` if that
    is left empty."""
    with contextlib.suppress(OSError, ValueError):
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        run_dir.rmdir()  # only succeeds when empty
        if run_dir.parent.name == "noise-viz":
            run_dir.parent.rmdir()


def noise_viz(cfg: DictConfig, conf_dir: Path, run: LoadedRun | None = None) -> Path:
    """Draw the pictures; returns the folder they were written to. ``conf_dir`` is the config
    tree (its ``schedule/`` options are the rows); ``run``: the checkpoint of the reverse
    process, when the command's check read it. Hydra's run dir is removed again when it stays
    empty (after bad input, or when the pictures went to <run>/viz)."""
    try:
        return _noise_viz(cfg, conf_dir, run)
    finally:
        _drop_empty_run_dir()


def _noise_viz(cfg: DictConfig, conf_dir: Path, run: LoadedRun | None) -> Path:
    schedules = build_schedules(cfg.schedules, cfg.num_timesteps, conf_dir)
    names = [str(n) for n in _as_list(cfg.schedules)]
    timesteps = check_timesteps(cfg.timesteps, int(cfg.num_timesteps))
    x0 = load_images(cfg)
    rev = prepare_reverse(cfg, run)  # every input is checked before anything is written
    drawn = drawn_objective(cfg, _run_objective(rev), tuple(x0.shape[1:]))
    out = output_dir(rev)
    if drawn is None:
        console.print(f"noising {len(x0)} image(s) of {tuple(x0.shape[1:])} with "
                      f"{', '.join(names)} at t = {timesteps}", soft_wrap=True)
    else:
        console.print(f"noising {len(x0)} image(s) of {tuple(x0.shape[1:])} with "
                      f"objective={drawn.objective.name} at its own noise levels", soft_wrap=True)
    with staged_files(out) as tmp:  # the pictures join out/ together, once all are drawn
        written = draw_forward(cfg, x0, schedules, names, timesteps, tmp, drawn)
        written.append(draw_noise_levels(
            cfg, schedules, names, conf_dir, drawn and drawn.objective,
            drawn.legend if drawn else "", tmp))
        if rev is not None:
            written += draw_reverse(cfg, rev, tmp)
            if rev.opened.codec is not None:
                written.append(draw_latent_forward(cfg, rev, timesteps, tmp))
    console.print(f"[green]wrote[/] {', '.join(p.name for p in written)} to {out}/",
                  soft_wrap=True)
    return out
