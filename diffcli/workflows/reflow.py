"""`diffcli train objective=flow reflow=<flow run>`: rectified flow's reflow (Liu et al. 2023).

Reflow (Sec. 2.2 and 3, "Flow straight and fast") trains a new flow on pairs (z, x) where
x = ODE(z) is what a trained flow draws from the noise z: the loss of the linear path is taken
with that z as the noise, so the flow learns the coupling's nearly straight paths and few-step
sampling improves. Here the pairs are drawn once, at the start of training, from the run
``reflow.ckpt`` with diffcli's own sampling (seeds 0..n-1: pair i is (the noise of seed i,
what ``diffcli sample seeds=i`` draws with the same sampler and steps, unquantized)), by a
deterministic sampler, and cached under ``<runs_root>/reflow-cache/`` in a file named after
the source's SHA-256 and the settings, so that a resumed or requeued run reuses them. The
network starts from the source's weights (``reflow.init``; false: a fresh one).

Refused in one line before any folder exists (:func:`check_reflow`): another objective than
flow, a source that is not a flow model, or whose data (dataset, image size, channels),
latent space or conditioning differs from this run's; class- and text-conditional models and
latent diffusion are not reflowed here (the pairs would depend on a guidance scale and on the
latent space's scale factor).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from torch import Tensor

from diffcli.checkpoint import LoadedRun, atomic_torch_save
from diffcli.components import build, option, plain
from diffcli.console import progress
from diffcli.data.datamodule import DiffusionDataModule
from diffcli.data.pairs import CoupledSamples
from diffcli.diffusion.generate import generate_batches, num_steps, seed_generators, seed_noise
from diffcli.diffusion.samplers import DDPM, Restart, Sampler
from diffcli.errors import DiffcliError
from diffcli.nets.latent import file_sha256
from diffcli.restore import make_sampler, open_run
from diffcli.runs import checkpoint_of
from diffcli.tasks import DIFFUSION, task_named
from diffcli.workflows.schemas import UsageError

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line
CACHE_FORMAT = 1
SAME_DATA = ("name", "image_size", "channels")  # dataset keys that set what a sample is


@dataclass(frozen=True)
class Reflow:
    """The ``reflow`` keys: the source run, how many pairs, the sampler (a ``conf/sampler``
    option) and its steps, the generation batch, the source's EMA weights, and whether the
    network starts from the source's weights."""

    ckpt: str
    n: int = 10_000
    sampler: str = "dpmpp_2m"
    steps: int = 32
    batch_size: int = 256
    use_ema: bool = True
    init: bool = True

    def __post_init__(self) -> None:
        for key in ("n", "steps", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"reflow.{key}={value!r} must be an integer >= 1")
        for key in ("use_ema", "init"):
            if not isinstance(getattr(self, key), bool):
                raise UsageError(f"reflow.{key}={getattr(self, key)!r} must be true or false")

    @property
    def source(self) -> Path:
        """The checkpoint ``ckpt`` names (a run folder: its last.ckpt)."""
        return checkpoint_of(str(self.ckpt))

    def pairs_settings(self) -> dict[str, Any]:
        """What the pairs depend on (not the batch size, nor init): the cache's key."""
        return {"n": self.n, "sampler": self.sampler, "steps": self.steps,
                "use_ema": self.use_ema}


def reflow_settings(node: Any) -> Reflow | None:
    """The ``reflow`` node as :class:`Reflow`; None when ``reflow.ckpt`` is null (no reflow).
    Unknown keys are refused by Hydra before this."""
    node = plain(node) or {}
    if not node.get("ckpt"):
        return None
    known = {f.name for f in fields(Reflow)}
    return Reflow(**{k: v for k, v in node.items() if k in known and v is not None})


def comparable(node: Any) -> dict[str, Any] | None:
    """The ``reflow`` node as a resumed run must match it: None without reflow (and in runs
    from before the key), else the settings that change the pairs, the source resolved."""
    settings = reflow_settings(node)
    if settings is None:
        return None
    return {"ckpt": str(settings.source.resolve()), **settings.pairs_settings()}


def adds_noise(sampler: Sampler) -> bool:
    """Whether ``sampler`` draws noise after x_T, so that x is not a function of z: DDPM,
    Restart, DDIM and the SDE solver with eta > 0, Heun / Euler with s_churn > 0."""
    if isinstance(sampler, DDPM | Restart):
        return True
    return bool(getattr(sampler, "eta", 0) or getattr(sampler, "s_churn", 0))


def objective_name(node: Any) -> str:
    """The name ("ddpm", "edm", "flow") of the objective a config node builds; "ddpm" for
    none (runs from before objectives)."""
    return "ddpm" if not plain(node) else str(build("objective", node).name)


def check_reflow(cfg: Any, read: Any) -> Reflow | None:
    """Everything reflow refuses before the run folder exists, one line each (exit 2); ``read``
    reads the source checkpoint (the command's reader: once per process)."""
    settings = reflow_settings(cfg.get("reflow"))
    if settings is None:
        return None
    objective, task = objective_name(cfg.get("objective")), task_named(cfg.get("task"))
    if objective != "flow" or task is not DIFFUSION:
        raise UsageError(f"reflow trains a rectified flow on the (noise, sample) pairs of "
                         f"reflow.ckpt: it needs task=diffusion objective=flow (this run: "
                         f"task={task.name} objective={objective})")
    if cfg.get("conditional") or cfg.get("text_encoder") is not None or _latent_on(cfg):
        raise UsageError("reflow trains an unconditional pixel or point flow: drop "
                         "conditional=true, text_encoder= and latent= from this run")
    if not settings.source.exists():
        raise UsageError(f"reflow.ckpt={settings.ckpt}: no such checkpoint or run folder")
    check_source(read(settings.source), cfg, settings)
    check_sampler(settings)
    return settings


def _latent_on(cfg: Any) -> bool:
    node = plain(cfg.get("latent")) or {}
    return bool(node.get("ckpt") or node.get("pretrained"))


def check_source(run: LoadedRun, cfg: Any, settings: Reflow) -> None:
    """The source is a flow model of this run's data, unconditional, in pixel or point space;
    with ``reflow.init`` its network is this run's."""
    where = f"reflow.ckpt={settings.ckpt}"
    trained = f"task={run.task}" if not run.kind.generates else \
        f"objective={run.objective().name}"
    if trained != "objective=flow":
        raise UsageError(f"{where} was trained with {trained}; reflow needs a flow model "
                         "(diffcli train objective=flow)")
    if run.num_classes is not None or run.text_encoder is not None or run.latent is not None:
        what = "latent diffusion" if run.latent is not None else "conditional"
        raise UsageError(f"{where} is a {what} model; reflow draws unconditional pixel or point "
                         "pairs only")
    mine, theirs = plain(cfg.get("dataset")) or {}, run.config.get("dataset") or {}
    diffs = [f"dataset.{k}: {theirs.get(k)} -> {mine.get(k)}" for k in SAME_DATA
             if theirs.get(k) != mine.get(k)]
    if diffs:
        raise UsageError(f"{where} was trained on other data ({', '.join(diffs)}, the source's "
                         "first); reflow its samples with the same dataset settings")
    if settings.init and run.config.get("model") != plain(cfg.get("model")):
        raise UsageError(f"{where} has another network than model= here, so reflow.init=true "
                         "cannot start from its weights: use the same model settings or "
                         "reflow.init=false (a fresh network)")


def check_sampler(settings: Reflow) -> Sampler:
    """``reflow.sampler`` (a ``conf/sampler`` option) with ``reflow.steps``: a deterministic
    one (the pairs are a coupling only when x is a function of z)."""
    try:
        node = option("sampler", settings.sampler)
    except DiffcliError as e:
        raise UsageError(f"reflow.{e}") from None
    sampler: Sampler = build("sampler", node, where="reflow.sampler", steps=settings.steps)
    if adds_noise(sampler):
        raise UsageError(f"reflow.sampler={settings.sampler} adds noise while sampling, so x is "
                         "not a function of z: use a deterministic one (dpmpp_2m, dpmpp_3m, "
                         "heun, euler, unipc, ddim)")
    return sampler


def cache_path(folder: Path, sha: str, settings: Reflow) -> Path:
    """``<folder>/<source SHA-256>-<settings hash>.pt``."""
    key = json.dumps(settings.pairs_settings(), sort_keys=True)
    return folder / f"{sha[:16]}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.pt"


def read_pairs(path: Path, sha: str, settings: Reflow) -> tuple[Tensor, Tensor] | None:
    """(x, noise) from the cache at ``path`` when it holds the pairs of this source and these
    settings; None otherwise (they are then drawn again)."""
    if not path.is_file():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - an unreadable cache is drawn again
        return None
    ok = isinstance(blob, dict) and blob.get("source_sha256") == sha and \
        blob.get("settings") == settings.pairs_settings() and \
        all(isinstance(blob.get(k), Tensor) for k in ("x", "noise")) and \
        blob["x"].shape == blob["noise"].shape and len(blob["x"]) == settings.n
    return (blob["x"], blob["noise"]) if ok else None


def generation_device(accelerator: str) -> torch.device:
    """Where the pairs are drawn: this rank's GPU unless training runs on the CPU."""
    if accelerator == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def draw_pairs(run: LoadedRun, settings: Reflow, device: torch.device) -> tuple[Tensor, Tensor]:
    """x (n, *shape) drawn by the source's ODE from the noise of seeds 0..n-1, and that noise
    (n, *shape), float32 on the CPU; a progress bar over the sampler's steps. Images are drawn
    as ``diffcli sample`` draws them (x0 clipped to [-1, 1] at each step)."""
    opened = open_run(run, use_ema=settings.use_ema, device=device,
                      batch_size=settings.batch_size)
    node = option("sampler", settings.sampler)
    sampler, _ = make_sampler(node, opened.schedule, steps=settings.steps,
                              clip_denoised=opened.info.kind == "image", run=run)
    seeds, shape = list(range(settings.n)), tuple(opened.sample_shape)
    batches = -(-settings.n // settings.batch_size)
    total = num_steps(sampler, opened.denoiser) * batches
    with progress("reflow pairs", total, console, unit="steps") as bar:
        x = torch.cat(list(generate_batches(sampler, opened.denoiser, shape, seeds,
                                            settings.batch_size, device, on_step=bar.advance)))
    noise = seed_noise(seed_generators(seeds), shape, torch.device("cpu"))  # what x came from
    return x, noise.float()


def reflow_pairs(run: LoadedRun, settings: Reflow, folder: Path,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """The (x, noise) pairs of ``run``: from the cache in ``folder`` when it has them, else
    drawn now (:func:`draw_pairs`) and written there atomically (a cache that cannot be
    written is a warning: training goes on)."""
    sha = file_sha256(settings.source)
    path = cache_path(folder, sha, settings)
    pairs = read_pairs(path, sha, settings)
    if pairs is not None:
        console.print(f"reflow: reusing {settings.n} pairs of {settings.ckpt} from {path}")
        return pairs
    x, noise = draw_pairs(run, settings, device)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({"format": CACHE_FORMAT, "source": str(settings.source.resolve()),
                           "source_sha256": sha, "settings": settings.pairs_settings(),
                           "x": x, "noise": noise}, path)
    except OSError as e:
        console.print(f"warning: reflow cache: could not write {path} ({e.strerror or e}); "
                      "training goes on with the pairs drawn")
    else:
        console.print(f"reflow: drew {settings.n} pairs of {settings.ckpt} with "
                      f"{settings.sampler}, {settings.steps} steps into {path}")
    return x, noise


def pairs_datamodule(dm: DiffusionDataModule, run: LoadedRun, settings: Reflow, folder: Path,
                     accelerator: str) -> DiffusionDataModule:
    """A datamodule of ``Coupled(x, noise)`` batches over the source's pairs, fed as ``dm``
    (batch size, workers); no flips, which would break the coupling. The pairs must have the
    data's shape."""
    if tuple(run.sample_shape) != tuple(dm.data_shape):
        raise DiffcliError(f"reflow.ckpt={settings.ckpt} draws samples of shape "
                           f"{tuple(run.sample_shape)}, this run's data has "
                           f"{tuple(dm.data_shape)}: use the source's dataset settings")
    if dm.random_flip:
        console.print("[yellow]note[/]: reflow: dataset.random_flip is not applied (a flipped "
                      "sample is not the one its noise was paired with)")
    x, noise = reflow_pairs(run, settings, folder, generation_device(accelerator))
    return DiffusionDataModule(CoupledSamples(x, noise), dm.batch_size, dm.num_workers,
                               kind=dm.kind)


def start_from_source(module: Any, run: LoadedRun, settings: Reflow) -> None:
    """``reflow.init``: the module's network and its EMA copy take the source's weights (its
    EMA weights with ``reflow.use_ema``)."""
    if not settings.init:
        return
    weights, _ = run.network_weights(settings.use_ema)
    for net in (module.net, module.ema_net):
        if net is not None:
            net.load_state_dict(weights)


def reflow_data(cfg: Any, dm: DiffusionDataModule, module: Any, read: Any,
                resumed: bool) -> DiffusionDataModule:
    """The datamodule a run trains on: ``dm``, or with ``reflow.ckpt`` the source's pairs (drawn
    or from the cache); a run that does not resume starts from the source's weights (``reflow.
    init``). ``read`` reads the source checkpoint (the command's reader)."""
    settings = reflow_settings(cfg.get("reflow"))
    if settings is None:
        return dm
    run = read(settings.source)
    if not resumed:
        start_from_source(module, run, settings)
    accelerator = str(cfg.trainer.get("accelerator") or "auto")
    return pairs_datamodule(dm, run, settings, Path(str(cfg.runs_root)) / "reflow-cache",
                            accelerator)


__all__ = ["Reflow", "adds_noise", "cache_path", "check_reflow", "check_sampler",
           "check_source", "comparable", "draw_pairs", "pairs_datamodule", "read_pairs",
           "reflow_data", "reflow_pairs", "reflow_settings", "start_from_source"]
