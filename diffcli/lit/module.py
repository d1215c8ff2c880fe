"""The thin LightningModule: sample t, call the loss, keep an EMA, log."""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from diffcli.checkpoint import CHECKPOINT_KEY
from diffcli.data.labels import batch_data
from diffcli.data.pairs import Coupled, batch_noise
from diffcli.diffusion.denoiser import Denoiser
from diffcli.diffusion.losses import vlb_estimate
from diffcli.diffusion.objectives import Continuous, check_combination, objective_loss
from diffcli.diffusion.process import Parameterization
from diffcli.diffusion.schedules import NoiseSchedule
from diffcli.lit.ema import check_ema, ema_decay_for
from diffcli.lit.objectives import VLB, Objective, Simple, Step
from diffcli.lit.schedulers import build_lr_scheduler, run_progress

CHECKPOINT_FORMAT = 1


@torch.no_grad()
def update_ema(ema_net: nn.Module, net: nn.Module, decay: float) -> None:
    """One EMA step of the weights, e <- decay e + (1 - decay) p; buffers (e.g. BatchNorm
    statistics, a VQ codebook's EMA) are copied."""
    for e, p in zip(ema_net.parameters(), net.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - decay)
    for e, b in zip(ema_net.buffers(), net.buffers(), strict=True):
        e.copy_(b)


def batch_labels(batch: Tensor | tuple | list) -> Tensor | None:
    """The labels (B,) of a ``(data, labels)`` batch; None for a bare data batch or a
    :class:`~diffcli.data.pairs.Coupled` one (samples and their noise)."""
    if isinstance(batch, Coupled):
        return None
    return batch[1] if isinstance(batch, tuple | list) and len(batch) > 1 else None


def drop_labels(y: Tensor, null_label: int, p: float) -> Tensor:
    """Classifier-free guidance training (Ho & Salimans 2022, Algorithm 1): each label
    replaced by the null label with probability ``p``. y: (B,) long -> (B,) long."""
    drop = torch.rand(y.shape, device=y.device) < p
    return torch.where(drop, torch.full_like(y, null_label), y)


def check_cond_drop_prob(p: float) -> None:
    """Raise ValueError unless 0 <= p <= 1."""
    if not (isinstance(p, int | float) and 0.0 <= p <= 1.0):
        raise ValueError(f"cond_drop_prob={p} must be in [0, 1] (e.g. 0.1)")


def check_optimizer(make_optimizer: Callable[..., Any],
                     make_lr_scheduler: Callable[..., Any] | None) -> None:
    """Build both on a dummy parameter so that bad hyperparameters (a negative lr, betas out of
    range, ...) fail at construction, in one ValueError, rather than inside ``fit``."""
    lr = getattr(make_optimizer, "keywords", {}).get("lr")
    if lr is not None and not (isinstance(lr, int | float) and lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr={lr} must be a positive, finite learning rate")
    opt = make_optimizer([nn.Parameter(torch.zeros(1))])
    if make_lr_scheduler is not None:
        build_lr_scheduler(make_lr_scheduler, opt)


def optimizers_for(net: nn.Module, make_optimizer: Callable[..., Any],
                   make_lr_scheduler: Callable[..., Any] | None,
                   trainer: L.Trainer | None = None) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: the optimizer over ``net``'s parameters and
    the LR schedule stepped every optimizer step (schedules that decay over a time budget read
    ``trainer``'s progress, :func:`~diffcli.lit.schedulers.run_progress`)."""
    opt = make_optimizer(net.parameters())
    if make_lr_scheduler is None:
        return {"optimizer": opt}
    progress = None if trainer is None else functools.partial(run_progress, trainer)
    scheduler = build_lr_scheduler(make_lr_scheduler, opt, progress)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def checkpoint_meta(run_config: dict[str, Any], data_info: dict[str, Any] | None) -> dict:
    """What a checkpoint says about itself under ``checkpoint["diffcli"]``: the format, the
    resolved run config and the data description."""
    meta: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "config": run_config}
    if data_info is not None:
        meta["data"] = data_info
    return meta


def _call_with_labels(net: Callable[..., Tensor], x: Tensor, t: Tensor, *, y: Tensor) -> Tensor:
    return net(x, t, y)


class EMAMixin:
    """One EMA update of ``ema_net`` toward ``net`` per optimizer step (not per accumulated
    micro-batch), for LightningModules that set ``net``, ``ema_net`` (None: no EMA),
    ``ema_decay``, ``ema_warmup``, ``ema_sigma_rel`` (:func:`diffcli.lit.ema.ema_decay_for`)
    and ``_ema_step`` (the step of the last update)."""

    net: nn.Module
    ema_net: nn.Module | None
    ema_decay: float | None
    ema_warmup: bool
    ema_sigma_rel: float | None = None
    _ema_step: int

    @property
    def sampling_net(self) -> nn.Module:
        """The network to use after training: the EMA copy when there is one."""
        return self.ema_net if self.ema_net is not None else self.net

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = self.global_step  # type: ignore[attr-defined]
        if self.ema_net is None or step == self._ema_step:
            return
        self._ema_step = step
        update_ema(self.ema_net, self.net,
                   ema_decay_for(step - 1, self.ema_decay, self.ema_warmup, self.ema_sigma_rel))


class DiffusionModule(EMAMixin, L.LightningModule):
    """Trains ``net`` with L_simple (Ho et al. 2020, Algorithm 1) and keeps an EMA copy of it.

    ``run_config`` (a plain dict: the resolved Hydra config) is written into every checkpoint
    under ``checkpoint["diffcli"]`` so that sampling can rebuild everything from the file alone.
    The EMA copy (``ema_net``) is a submodule, so it is saved, restored on resume and moved
    to the device with the rest; the optimizer only sees ``net``.

    Args:
        net: the denoising network ``(x_t (B, ...), t (B,)) -> (B, ...)``.
        schedule: the noise schedule.
        prediction: what ``net`` predicts (eps, x0 or v; the enum or its value).
        optimizer: ``parameters -> Optimizer`` (e.g. ``functools.partial(torch.optim.Adam,
            lr=2e-4)``, what a config with ``_partial_: true`` builds); default Adam, lr 1e-3.
        lr_scheduler: ``optimizer -> LRScheduler`` stepped every optimizer step (e.g.
            :func:`diffcli.lit.schedulers.linear_warmup`); None: a constant rate.
        ema_decay: constant EMA decay; None (and no ``ema_sigma_rel``) disables the EMA copy.
        ema_warmup: use :func:`diffcli.lit.ema.constant_ema_decay`'s warm-up.
        ema_sigma_rel: the power-function EMA's relative width (Karras et al. 2024, Eq. 3),
            which scales with the run's length; when set it replaces ``ema_decay``.
        min_snr_gamma: Min-SNR-gamma loss weighting, None for L_simple.
        compile: run the training forward pass through ``torch.compile`` (the saved weights
            keep their plain names).
        channels_last: feed image batches in channels-last memory format.
        cond_drop_prob: for a class-conditional ``net`` (``net.num_classes`` set), the
            probability of training on the null label instead of the true one
            (classifier-free guidance, Ho & Salimans 2022).
        loss: the objective (:mod:`diffcli.lit.objectives`: L_simple, L_hybrid, L_vlb);
            default L_simple. Hybrid / vlb also log ``train/vlb`` (bits/dim, a cheap
            stratified estimate of the bound) every ``trainer.log_every_n_steps`` steps.
        latent: latent diffusion (Rombach et al. 2022): the frozen autoencoder and scale factor
            (:class:`~diffcli.nets.latent.LatentCodec`); batches are encoded to s E(x) and the
            network learns those. It is not saved in checkpoints (they record its file).
        latent_cached: the batches already hold the encoder's moments (the latent cache), so
            they are sampled (:meth:`LatentCodec.from_moments`) rather than encoded.
        objective: the forward process and training target (:mod:`diffcli.diffusion.objectives`):
            None or the DDPM chain (``schedule``, ``prediction``, ``loss``, ``min_snr_gamma``
            as above), or a continuous one (EDM, flow matching) that brings its own noise
            levels, target and weighting; ``schedule`` is then its sampling lattice and
            ``prediction`` is unused. EDM2's learned uncertainty weighting, when on, is a
            submodule trained with the network and saved in checkpoints.

    A text-to-image ``net`` (:class:`~diffcli.nets.text.TextConditionedNet`) gets ``(x, captions)``
    batches: the captions are tokenized and each replaced by the empty prompt with
    ``cond_drop_prob`` (classifier-free guidance training with the empty prompt as the null).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        *,
        prediction: Parameterization = Parameterization.EPS,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        lr_scheduler: Callable[..., Any] | None = None,
        ema_decay: float | None = 0.999,
        ema_warmup: bool = True,
        ema_sigma_rel: float | None = None,
        min_snr_gamma: float | None = None,
        compile: bool = False,
        channels_last: bool = False,
        run_config: dict[str, Any] | None = None,
        data_info: dict[str, Any] | None = None,
        cond_drop_prob: float = 0.1,
        loss: Objective | None = None,
        latent: nn.Module | None = None,
        latent_cached: bool = False,
        objective: Any = None,
    ) -> None:
        super().__init__()
        check_ema(ema_decay, ema_sigma_rel)
        check_cond_drop_prob(cond_drop_prob)
        self.num_classes: int | None = getattr(net, "num_classes", None)
        self.cond_drop_prob = cond_drop_prob
        self.make_optimizer = optimizer or functools.partial(torch.optim.Adam, lr=1e-3)
        self.make_lr_scheduler = lr_scheduler
        check_optimizer(self.make_optimizer, lr_scheduler)
        self.net = net
        keep_ema = ema_decay is not None or ema_sigma_rel is not None
        self.ema_net = copy.deepcopy(net).requires_grad_(False) if keep_ema else None
        self.continuous: Continuous | None = (
            objective if getattr(objective, "continuous", False) else None)
        self.schedule = schedule if self.continuous is None else self.continuous.lattice()
        self.uncertainty = None if self.continuous is None else self.continuous.uncertainty()
        self.prediction = Parameterization(prediction)
        self.ema_decay, self.ema_warmup = ema_decay, ema_warmup
        self.ema_sigma_rel = ema_sigma_rel
        self.min_snr_gamma = min_snr_gamma
        self.learned_variance = bool(getattr(net, "learn_sigma", False))
        self.objective = loss or Simple()
        check_combination(objective, self.objective.name, self.learned_variance, min_snr_gamma)
        self.objective.check(self.learned_variance, min_snr_gamma)
        if isinstance(self.objective, VLB):
            self.objective.bind(schedule.num_timesteps)
        self.importance = self.objective.module()  # state kept in checkpoints (loss=vlb)
        self.channels_last = channels_last
        self.run_config = run_config or {}
        self.data_info = data_info  # {"kind": "image", "shape": [C, H, W]}, saved for sampling
        # Not registered submodules: the compiled wrapper shares net's parameters; the frozen
        # autoencoder is recorded by its file, not saved with every diffusion checkpoint.
        self.__dict__["train_forward"] = torch.compile(net) if compile else net
        self.__dict__["latent"] = latent
        self.latent_cached = bool(latent_cached)
        self._ema_step = -1
        # a seed: every step's noise, timesteps and dropout are drawn from torch's stream seeded
        # by (seed, step), so a resumed run continues exactly (single process; None: one stream)
        self.step_seed: int | None = None

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.step_seed is not None:
            torch.manual_seed(self.step_seed * 1_000_003 + self.global_step)

    def training_step(self, batch: Tensor | tuple | list, batch_idx: int) -> Tensor:
        x0 = self.to_latents(batch_data(batch))  # (B, ...)
        if self.channels_last and x0.ndim == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        if self.continuous is not None:
            loss = self.continuous_loss(batch, x0)
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/lr", self.optimizers().param_groups[0]["lr"])
            return loss
        step = Step(self._forward(batch), self.schedule, self.prediction, self.learned_variance,
                    self._decoder(x0), self.min_snr_gamma)
        loss = self.objective.loss(step, x0)
        self.log("train/loss", loss, prog_bar=True)
        if self.objective.trains_variance and self._logging_step():
            with torch.no_grad():
                self.log("train/vlb", vlb_estimate(step.net, self.schedule, x0, self.prediction,
                                                   learned_variance=self.learned_variance,
                                                   decoder=step.decoder))
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def continuous_loss(self, batch: Tensor | tuple | list, x0: Tensor) -> Tensor:
        """The continuous objective's loss on ``x0`` (B, ...), the data of ``batch``: with the
        batch's own noise when it carries some (reflow's :class:`~diffcli.data.pairs.Coupled`
        pairs), else independent draws."""
        assert self.continuous is not None
        return objective_loss(self.continuous, self._forward(batch), x0,
                              uncertainty=self.uncertainty, noise=batch_noise(batch))

    @property
    def latent_shape(self) -> tuple[int, ...] | None:
        """The latent shape (c, h, w) the network generates (None: it works on the data)."""
        return None if self.latent is None else self.latent.latent_shape

    def to_latents(self, x: Tensor) -> Tensor:
        """A batch as the network learns it: s E(x) (or a cached moments' sample) for latent
        diffusion, else x. (B, ...)"""
        if self.latent is None:
            return x
        self.latent.to(x.device)
        return self.latent.from_moments(x) if self.latent_cached else self.latent.encode(x)

    def to_images(self, z: Tensor) -> Tensor:
        """Generated samples as data: decoded latents (B, C, H, W), or z itself."""
        if self.latent is None:
            return z
        return self.latent.to(z.device).decode(z)

    def _decoder(self, x0: Tensor) -> str:
        """L_0's decoder: 256-bin discrete for 8-bit images, continuous for points and
        latents."""
        if self.latent is not None:
            return "continuous"
        kind = (self.data_info or {}).get("kind")
        return "discrete" if kind == "image" or (kind is None and x0.ndim == 4) else "continuous"

    def _logging_step(self) -> bool:
        """Whether Lightning logs at this step (``trainer.log_every_n_steps``)."""
        trainer = getattr(self, "_trainer", None)
        every = getattr(trainer, "log_every_n_steps", 50) if trainer is not None else 50
        return self.global_step % max(1, int(every)) == 0

    def _forward(self, batch: Tensor | tuple | list) -> Callable[[Tensor, Tensor], Tensor]:
        """The network as the loss calls it, ``(x_t, t) -> output``: for a conditional net
        with this batch's labels, each dropped to the null label with ``cond_drop_prob``."""
        if hasattr(self.net, "tokenize"):
            return self._text_forward(batch)
        if self.num_classes is None:
            return self.train_forward
        y = batch_labels(batch)
        if y is None:
            raise ValueError("a class-conditional network needs a labelled dataset, but the "
                             "batches carry no labels")
        y = drop_labels(y.long(), self.num_classes, self.cond_drop_prob)
        return functools.partial(_call_with_labels, self.train_forward, y=y)

    def _text_forward(self, batch: Tensor | tuple | list) -> Callable[[Tensor, Tensor], Tensor]:
        """The text-to-image network with this batch's captions as token ids (B, L), each
        replaced by the empty prompt's with ``cond_drop_prob`` (Ho & Salimans 2022)."""
        captions = batch_labels(batch)
        if not isinstance(captions, list | tuple):
            raise ValueError("a text-conditional network needs captioned data, but the batches "
                             "carry no captions")
        x = batch_data(batch)
        tokens = self.net.tokenize(list(captions)).to(x.device)  # (B, L)
        drop = torch.rand(tokens.shape[0], device=x.device) < self.cond_drop_prob
        tokens = torch.where(drop[:, None], self.net.null_tokens().to(x.device), tokens)
        return functools.partial(_call_with_labels, self.train_forward, y=tokens)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Log the global L2 norm of the (unscaled, not yet clipped) gradients."""
        grads = [p.grad.detach() for p in self.net.parameters() if p.grad is not None]
        if grads:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float())
                                                         for g in grads]))
            self.log("train/grad_norm", norm)

    def configure_optimizers(self) -> dict[str, Any]:
        trained = self.net if self.uncertainty is None else nn.ModuleList([self.net,
                                                                             self.uncertainty])
        return optimizers_for(trained, self.make_optimizer, self.make_lr_scheduler,
                              self.trainer)

    def denoiser(self, net: nn.Module) -> Denoiser:
        """``net`` (this module's network or its EMA copy) as a :class:`Denoiser` of this
        module's schedule and parameterization (learned variances when the net has them)."""
        return Denoiser(net, self.schedule, self.prediction,
                        learned_variance=bool(getattr(self.net, "learn_sigma", False)),
                        objective=self.continuous)

    def on_train_start(self) -> None:
        self._ema_step = self.global_step
        if self.trainer.world_size > 1:  # same seed everywhere, but each rank needs its own noise
            torch.manual_seed(torch.initial_seed() + 7919 * self.global_rank + self.global_step)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_meta(self.run_config, self.data_info)
