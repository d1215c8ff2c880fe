"""Rebuilding a trained run from its checkpoint, written once: the network (EMA weights when
asked), its latent space, the schedule, the sampler, the device and precision.

The checkpoint is read and validated by :mod:`diffcli.checkpoint` (once: functions here take
the :class:`~diffcli.checkpoint.LoadedRun`, or a path they read once) and built through
:mod:`diffcli.components`. Plain dicts and typed arguments only: no Hydra here.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffcli.checkpoint import DataInfo, LoadedRun, load_checkpoint, read_autoencoder
from diffcli.components import build, build_autoencoder, build_net
from diffcli.diffusion.generate import CountingNet
from diffcli.diffusion.samplers import Denoiser, Sampler
from diffcli.diffusion.samplers.auto import Auto, objective_of
from diffcli.diffusion.schedules import NoiseSchedule
from diffcli.errors import DiffcliError, user_errors
from diffcli.nets.latent import LatentCodec, file_sha256, load_pretrained_autoencoder


def pick_device(name: str) -> torch.device:
    """"auto" -> cuda when available, else cpu."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DiffcliError(f"device={name} asked for, but no CUDA device is available")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    """"32" anywhere, "bf16" on CUDA only (bf16 on CPU is very slow); else one line."""
    if precision not in ("32", "bf16"):
        raise DiffcliError(f"precision={precision!r}: use 32 or bf16")
    if precision == "bf16" and device.type != "cuda":
        raise DiffcliError("precision=bf16 is for CUDA devices; on CPU use precision=32")


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """bf16 autocast on CUDA for "bf16"; nothing for "32" (checked by :func:`check_precision`)."""
    check_precision(precision, device)
    if precision == "32":
        yield
        return
    with torch.autocast("cuda", dtype=torch.bfloat16):
        yield


def _load_weights(net: nn.Module, run: LoadedRun, use_ema: bool, what: str = "network") -> str:
    """Load the EMA weights (when asked and present) or the trained ones into ``net``; returns
    the prefix used ("ema_net" or "net")."""
    weights, prefix = run.network_weights(use_ema)
    try:
        net.load_state_dict(weights)
    except RuntimeError as e:
        raise DiffcliError(f"{run.path}: weights do not fit the configured {what} "
                           f"({str(e).splitlines()[0]})") from None
    return prefix


def restore_net(run: LoadedRun, use_ema: bool,
                device: torch.device) -> tuple[nn.Module, DataInfo, str]:
    """Rebuild the trained network from the checkpoint alone: (net in eval mode on ``device``,
    data info, "ema_net" or "net" - the weights used). A latent model's net is built for its
    latent shape, a text-to-image model's with its text encoder."""
    info = run.data_info()
    net = build_net(run.config["model"], run.sample_shape, num_classes=run.num_classes,
                    text_encoder_cfg=run.text_encoder)
    weights = _load_weights(net, run, use_ema)
    return net.to(device).eval(), info, weights


def restore_autoencoder(run: LoadedRun, device: torch.device,
                        use_ema: bool = True) -> nn.Module:
    """The trained autoencoder of ``run`` (EMA weights when present), frozen, on ``device``."""
    net = build_autoencoder(run.config["autoencoder"], run.data_info().shape)
    _load_weights(net, run, use_ema, what="autoencoder")
    return net.to(device).eval().requires_grad_(False)


def open_codec(run: LoadedRun, device: torch.device) -> LatentCodec | None:
    """The latent space a latent diffusion ``run`` was trained in (None for pixel models):
    its autoencoder, checked to be the very file it was trained with, and its scale factor."""
    latent = run.latent
    if latent is None:
        return None
    source = Path(latent.source)
    if latent.pretrained:
        try:
            ae, sha = load_pretrained_autoencoder(source, run.data_info().shape)
        except ValueError as e:
            raise DiffcliError(f"{run.path} was trained in the latent space of {source}, which "
                               f"cannot be loaded now: {e}") from None
    else:
        if not source.is_file():
            raise DiffcliError(f"{run.path} was trained in the latent space of the autoencoder "
                               f"{source}, which is missing; put it back at that path")
        sha = file_sha256(source)
    if sha != latent.sha256:
        raise DiffcliError(f"the autoencoder {source} changed since {run.path} was trained on its "
                           f"latents (SHA-256 {sha[:12]}, trained with {latent.sha256[:12]}); "
                           "restore the original file")
    if not latent.pretrained:
        ae = restore_autoencoder(read_autoencoder(source), device)
    return LatentCodec(ae, latent.scale_factor, sample=False).to(device)


def check_sampler_variance(variance: Any, run: LoadedRun) -> None:
    """``sampler.variance=learned`` needs a model that learned its variances."""
    if str(getattr(variance, "value", variance)) == "learned" and not run.learned_variance:
        raise DiffcliError(f"sampler.variance=learned needs a model trained with "
                           f"model.learn_sigma=true; {run.path} has fixed variances: use "
                           "sampler.variance=beta_tilde or beta (or auto)")


def nll_method(method: str, run: LoadedRun) -> str:
    """``eval-nll``'s method for ``run``: ``auto`` is the VLB for the DDPM chain and the
    probability-flow ODE for a continuous objective (EDM, flow), which has no discrete bound;
    ``vlb`` / ``both`` on one of those is refused in one line."""
    continuous = run.continuous
    if method == "auto":
        return "vlb" if continuous is None else "ode"
    if continuous is not None and method in ("vlb", "both"):
        raise DiffcliError(f"method={method}: the variational bound is the DDPM chain's; "
                           f"{run.path} was trained with objective={continuous.name}, which has "
                           "none: use method=ode (or auto)")
    return method


def make_sampler(node: Any, schedule: NoiseSchedule, *, steps: int | None = None,
                 clip_denoised: bool | None = None,
                 run: LoadedRun | None = None) -> tuple[Sampler, int]:
    """Build the sampler group's config (``steps`` / ``clip_denoised``, when given, replace the
    node's values: the commands' top-level ``steps=`` is an alias of ``sampler.steps``) and
    check it against ``schedule`` (and ``run``'s network: :func:`check_sampler_variance`);
    returns (sampler, its number of steps)."""
    extra: dict[str, Any] = {}
    if steps is not None:
        extra["steps"] = int(steps)
    if clip_denoised is not None:
        extra["clip_denoised"] = bool(clip_denoised)
    sampler: Sampler = build("sampler", node, **extra)
    if run is not None:
        check_sampler_variance(getattr(sampler, "variance", None), run)
    with user_errors("sampler"):
        n = len(sampler.timesteps(schedule))
    return sampler, n


def settle_sampler(sampler: Sampler, denoiser: Denoiser) -> tuple[Sampler, list[str]]:
    """The sampler to run on ``denoiser``: ``sampler=auto`` becomes the sampler it picks for
    the network's objective (:class:`~diffcli.diffusion.samplers.auto.Auto`); with the lines
    to print (what auto picked, and how the sampler adapts to its grid:
    :meth:`Sampler.notice`)."""
    notes = []
    if isinstance(sampler, Auto):
        with user_errors("sampler"):
            sampler, line = sampler.picked(objective_of(denoiser))
        notes.append(line)
    notice = sampler.notice(denoiser.schedule)
    return sampler, notes + ([notice] if notice else [])


def sampler_name(choice: str | None, sampler: Sampler) -> str:
    """What to call a sampler in folder names and reports: the config option chosen
    (e.g. "dpmpp_2m"), else its class name in lower case."""
    return str(choice or type(sampler).__name__.lower())


@dataclass
class OpenedRun:
    """A run ready to sample: the network (counted), schedule and denoiser."""

    ckpt: Path
    run: LoadedRun
    info: DataInfo
    weights: str  # "ema_net" or "net"
    counter: CountingNet
    denoiser: Denoiser
    network: nn.Module | None = None  # the network itself (text models: its tokenizer)
    codec: LatentCodec | None = None  # latent models: the autoencoder's latent space

    @property
    def schedule(self) -> NoiseSchedule:
        return self.denoiser.schedule

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """What the sampler draws: latents (c, h, w) of a latent model, else samples."""
        return self.run.sample_shape

    def decode(self, z: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Samples as data: latents decoded by the autoencoder (in batches, on its device;
        (N, C, H, W) float32 on the CPU); pixel samples as they are."""
        return z if self.codec is None else self.codec.decode_batches(z, batch_size)


def require_diffusion(run: LoadedRun) -> LoadedRun:
    """``run``, unless it is a classifier or an autoencoder (one line saying what to do)."""
    if not run.kind.generates:
        raise DiffcliError(run.kind.not_generative(run.path))
    return run


def check_sampling_fits(run: LoadedRun, batch_size: int, device: torch.device,
                        rows_per_item: int = 1) -> None:
    """One line, before the network is built, when ``batch_size`` samples of ``run`` at once
    cannot fit in ``device``'s memory (the sampler keeps about 8 copies of a batch)."""
    from diffcli.nets.memory import check_fits

    shape = tuple(run.sample_shape)
    check_fits(lambda: build_net(run.config["model"], shape, num_classes=run.num_classes),
               shape, batch_size, device, what=f"sampling {run.path}:",
               rows_per_item=rows_per_item, extra_per_item=8 * 4 * math.prod(shape))


def open_run(ckpt: Path | LoadedRun, *, use_ema: bool, device: torch.device,
             compile: bool = False, batch_size: int | None = None,
             rows_per_item: int = 1) -> OpenedRun:
    """Load ``ckpt`` safely (or take the run already loaded from it) and rebuild its network
    (EMA weights when asked and present), schedule and denoiser, with an NFE counter around the
    network. ``batch_size``: refuse first, in one line, a sampling batch (``rows_per_item``
    network rows a sample) that cannot fit in ``device``'s memory
    (:func:`diffcli.nets.memory.check_fits`)."""
    run = require_diffusion(ckpt if isinstance(ckpt, LoadedRun) else load_checkpoint(ckpt))
    ckpt = run.path
    if batch_size is not None:
        check_sampling_fits(run, batch_size, device, rows_per_item)
    net, info, weights = restore_net(run, use_ema, device)
    codec = open_codec(run, device)
    counter = CountingNet(torch.compile(net) if compile else net)
    return OpenedRun(ckpt, run, info, weights, counter,
                     Denoiser(counter, run.schedule(), run.prediction,
                              learned_variance=run.learned_variance,
                              objective=run.continuous), net, codec)
