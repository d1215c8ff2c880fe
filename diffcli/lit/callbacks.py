"""Lightning callbacks: step-based rich progress bar, throughput, EMA sample grids, stopping
on signals and on divergence."""

from __future__ import annotations

import math
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor

from diffcli.console import duration, log_only, screen
from diffcli.data.labels import batch_data
from diffcli.diffusion.generate import generate, to_uint8
from diffcli.lit.saving import SnapshotCheckpoint, TrainingDiverged, divergence_hint
from diffcli.lit.schedulers import budget_timer


class StepProgress(L.Callback):
    """Progress over optimizer steps (not epochs) with rate, loss and ETA: a live bar on a
    terminal; elsewhere (a SLURM log, ``> file``, CI), where a live bar shows nothing until the
    end, one plain line every ``every_s`` seconds (or ``every_n_steps`` steps) and at the last
    step (the console log, :class:`diffcli.console.ConsoleLog`, gets these lines either way)::

        step 120/1000 | 2.10 steps/s | 134 img/s | loss 0.0312 | lr 2.0e-03 | ETA 0:07:01
    """

    def __init__(self, console: Console | None = None, every_s: float = 30.0,
                 every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 (or null), got {every_n_steps}")
        self.console = console or Console(stderr=True)
        self.every_s = every_s
        self.every_n_steps = every_n_steps
        self.progress: Progress | None = None
        self.task: Any = None
        self.start = (0.0, 0)
        self.plain = False
        self.last_line = 0.0
        self.last_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.start = (time.perf_counter(), trainer.global_step)
        self.last_line = self.start[0]
        self.plain = not self.console.is_terminal
        if self.plain:
            return
        total = trainer.max_steps if trainer.max_steps > 0 else None
        self.progress = Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} {task.fields[images]}"),
            TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(file=screen(self.console.file), force_terminal=True,
                            width=self.console.width), transient=False,
        )  # the live bar goes to the screen only; the console log gets the plain lines
        self.task = self.progress.add_task("", total=total, completed=trainer.global_step, loss="-",
                                          rate="-", images="")
        self.progress.start()

    def _steps_per_s(self, step: int) -> float:
        return (step - self.start[1]) / max(time.perf_counter() - self.start[0], 1e-9)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.is_global_zero:
            self._plain_line(trainer)
        if self.progress is None:
            return
        loss = trainer.callback_metrics.get("train/loss")
        shown = f"{float(loss):.4f}" if loss is not None else "-"
        per_s = self._steps_per_s(trainer.global_step)
        rate = f"{per_s:.1f} steps/s" if per_s >= 1 or per_s == 0 else f"{1 / per_s:.1f} s/step"
        ips = trainer.callback_metrics.get("train/images_per_s")
        images = f"({float(ips):,.0f} img/s)" if ips is not None else ""
        self.progress.update(self.task, completed=trainer.global_step, loss=shown, rate=rate,
                             images=images)

    def _plain_line(self, trainer: L.Trainer) -> None:
        """One line when ``every_s`` seconds (or ``every_n_steps`` steps) have passed, and at the
        last step."""
        now, step, total = time.perf_counter(), trainer.global_step, trainer.max_steps
        due = step % self.every_n_steps == 0 if self.every_n_steps else \
            now - self.last_line >= self.every_s
        if step == self.last_step or not (due or (total > 0 and step >= total)):
            return
        self.last_step = step
        self.last_line = now
        line = plain_progress_line(step, total, self._steps_per_s(step), trainer.callback_metrics,
                                   time_left(trainer))
        if self.plain:
            self.console.print(line, soft_wrap=True, highlight=False)
        else:
            log_only(line)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def plain_progress_line(step: int, total: int, steps_per_s: float,
                        metrics: dict[str, Any], time_left: float | None = None) -> str:
    """"step 120/1000 | 2.10 steps/s | 134 img/s | loss 0.0312 | lr 2.0e-03 | ETA 0:07:01" from
    Lightning's ``callback_metrics`` (missing values are left out). ``time_left``: seconds to
    ``trainer.max_time``; the ETA is the nearer of the two ends."""
    parts = [f"step {step}/{total}" if total > 0 else f"step {step}",
             f"{steps_per_s:.2f} steps/s"]
    ips, loss, lr = (metrics.get(k) for k in ("train/images_per_s", "train/loss", "train/lr"))
    if ips is not None:
        parts.append(f"{float(ips):,.0f} img/s")
    if loss is not None:
        parts.append(f"loss {float(loss):.4f}")
    if lr is not None:
        parts.append(f"lr {float(lr):.1e}")
    ends = [time_left] if time_left is not None else []
    if total > 0 and steps_per_s > 0:
        ends.append((total - step) / steps_per_s)
    if ends:
        parts.append(f"ETA {duration(max(0.0, min(ends)))}")
    return " | ".join(parts)


def time_left(trainer: L.Trainer) -> float | None:
    """Seconds until ``trainer.max_time`` ends the run (Lightning's Timer); None without one."""
    timer = budget_timer(trainer)
    return None if timer is None else timer.time_remaining("train")


class Throughput(L.Callback):
    """Logs ``train/images_per_s``: images (all devices) per second of wall time.

    Counted per optimizer step, so gradient accumulation and the number of processes are
    included: ``micro_batch x accumulate x world_size / seconds``. Smoothed with an EMA of
    the step time so the curve is readable.
    """

    def __init__(self, smoothing: float = 0.9) -> None:
        self.smoothing = smoothing
        self._images = 0
        self._t0: float | None = None
        self._step = -1
        self.rate: float | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0, self._step, self._images, self.rate = None, trainer.global_step, 0, None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._images += int(batch_data(batch).shape[0]) * trainer.world_size
        if trainer.global_step == self._step:
            return  # still accumulating
        self._step = trainer.global_step
        now = time.perf_counter()
        if self._t0 is not None:  # the first step includes start-up costs; skip it
            rate = self._images / max(now - self._t0, 1e-9)
            self.rate = rate if self.rate is None else (
                self.smoothing * self.rate + (1 - self.smoothing) * rate)
            pl_module.log("train/images_per_s", self.rate, rank_zero_only=True)
        self._t0, self._images = now, 0


def last_checkpoint(run_dir: str | Path, every_n_steps: int = 500) -> ModelCheckpoint:
    """``<run_dir>/checkpoints/last.ckpt``, replaced (atomically, by the trainer's checkpoint
    IO) every ``every_n_steps`` optimizer steps; the workflow also saves it at the end."""
    if every_n_steps < 1:
        raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
    return ModelCheckpoint(dirpath=Path(run_dir) / "checkpoints", filename="last",
                           every_n_train_steps=every_n_steps, save_top_k=1,
                           enable_version_counter=False)


def snapshots(run_dir: str | Path, every_n_steps: int | None = None) -> SnapshotCheckpoint | None:
    """Also keep ``<run_dir>/checkpoints/step-N.ckpt`` every ``every_n_steps`` steps (None:
    off)."""
    if every_n_steps is None:
        return None
    if every_n_steps < 1:
        raise ValueError(f"every_n_steps must be >= 1 (or null: off), got {every_n_steps}")
    return SnapshotCheckpoint(dirpath=Path(run_dir) / "checkpoints", filename="step-{step}",
                              every_n_train_steps=every_n_steps, save_top_k=-1,
                              auto_insert_metric_name=False)


class ProgressPictures(L.Callback, ABC):
    """Base of the callbacks that draw a picture of the model every ``every_n_steps`` optimizer
    steps on rank 0, into ``<run_dir>/progress/<prefix>-<N>.png`` and the loggers that take
    images (under ``key``). ``every_n_steps`` None: off. Subclasses implement :meth:`draw`,
    returning (grid (C, H, W) in [0, 1], metrics to log) or None to skip."""

    prefix = "step"
    key = "samples/ema"

    def __init__(self, run_dir: str | Path, every_n_steps: int | None = 1000,
                 num_images: int = 16) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 (or null: off), got {every_n_steps}")
        if num_images < 1:
            raise ValueError(f"num_images must be >= 1, got {num_images}")
        self.out_dir = Path(run_dir) / "progress"
        self.every = every_n_steps
        self.num_images = num_images
        self.written: list[Path] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every is None or step == 0 or step % self.every or not trainer.is_global_zero:
            return
        if self.written and self.written[-1].stem == f"{self.prefix}-{step:07d}":
            return  # same optimizer step (gradient accumulation)
        drawn = self.draw(pl_module, batch)
        if drawn is None:
            return
        grid, metrics = drawn
        self.written.append(self.save(grid, step))
        log_picture(trainer, grid, step, self.key, metrics)

    @abstractmethod
    def draw(self, pl_module: Any, batch: Any) -> tuple[Tensor, dict[str, float]] | None:
        """The picture (C, H, W) in [0, 1] and metrics of ``pl_module`` now; None: skip."""

    def save(self, grid: Tensor, step: int) -> Path:
        """Write ``grid`` (C, H, W) in [0, 1], upscaled (nearest) to at least 256 px wide."""
        from torchvision.utils import save_image

        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{self.prefix}-{step:07d}.png"
        scale = max(1, math.ceil(256 / grid.shape[-1]))
        big = torch.nn.functional.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
        save_image(big, path)
        return path


class EMASampleGrid(ProgressPictures):
    """Every ``every_n_steps`` optimizer steps, sample a grid from the EMA network (rank 0).

    The same seeds ``seed .. seed + num_images - 1`` every time, so successive grids show the
    model improving rather than new noise. Written to ``<run_dir>/progress/step-<N>.png`` and
    sent to the logger when it takes images (wandb, TensorBoard). ``every_n_steps`` None: off.
    A latent diffusion model's samples are decoded to images.
    """

    def __init__(self, run_dir: str | Path, sampler: Any, every_n_steps: int | None = 1000,
                 num_images: int = 16, seed: int = 0) -> None:
        super().__init__(run_dir, every_n_steps, num_images)
        self.sampler = sampler
        self.seeds = list(range(seed, seed + num_images))

    def draw(self, pl_module: Any, batch: Any) -> tuple[Tensor, dict[str, float]] | None:
        x = batch_data(batch)
        if x.ndim != 4:
            return None
        shape = getattr(pl_module, "latent_shape", None) or tuple(x.shape[1:])
        return self.sample_grid(pl_module, shape, x.device), {}

    @torch.no_grad()
    def sample_grid(self, pl_module: Any, shape: tuple[int, ...], device: torch.device) -> Any:
        """Sample ``len(seeds)`` images and tile them: (C, H', W') in [0, 1]."""
        from torchvision.utils import make_grid

        net = pl_module.sampling_net
        was_training = net.training
        net.eval()
        try:
            den = pl_module.denoiser(net)
            x = generate(self.sampler, den, shape, self.seeds, len(self.seeds), device)
            if hasattr(pl_module, "to_images"):
                x = pl_module.to_images(x.to(device)).float().cpu()
        finally:
            net.train(was_training)
        return make_grid(to_uint8(x).float() / 255, nrow=math.ceil(math.sqrt(len(x))), padding=1,
                         pad_value=1)


def log_picture(trainer: L.Trainer, grid: Tensor, step: int, key: str,
                metrics: dict[str, float] | None = None) -> None:
    """Send ``metrics`` to every logger and a (C, H, W) image in [0, 1] to those that accept
    images, under ``key``."""
    for logger in trainer.loggers:
        if metrics:
            logger.log_metrics(metrics, step=step)
        name = type(logger).__name__
        if name == "WandbLogger":
            logger.log_image(key=key, images=[grid], step=step)
        elif name == "TensorBoardLogger":
            logger.experiment.add_image(key, grid, global_step=step)


class GracefulStop(L.Callback):
    """SIGTERM / SIGINT / SIGUSR1 ask training to stop after the current optimizer step (the
    caller then saves its checkpoint); a second signal ends the process at once (``os._exit``, so a
    checkpoint being written is abandoned as a temporary file and the previous one stays).

    Use as a context manager around the fit: it installs the handlers on entry (and again at
    ``on_train_start``, over the SIGTERM handler Lightning registers) and restores the previous
    ones on exit. ``signum`` is the first signal received, or None.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)  # USR1: SLURM's time-limit warning

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for s in self.SIGNALS:
            previous = signal.signal(s, self._handle)
            self._previous.setdefault(s, previous)

    def __enter__(self) -> GracefulStop:
        self._install()
        return self

    def __exit__(self, *exc: object) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous if previous is not None else signal.SIG_DFL)
        self._previous.clear()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()
        if self.signum is not None:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        stop = self.signum is not None
        if trainer.world_size > 1:  # every rank stops at the same step
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if stop:
            trainer.should_stop = True


class LastStepMetrics(L.Callback):
    """Lightning logs metrics every ``log_every_n_steps`` steps, so a shorter run logged
    nothing at all and a longer one lost its last steps: log the final step's metrics when
    Lightning did not, and say once when the interval is longer than the run."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.logged_step = -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        every, left = trainer.log_every_n_steps, trainer.max_steps - trainer.global_step
        if trainer.loggers and not trainer.fast_dev_run and trainer.is_global_zero and \
                0 < left < every:  # (fast_dev_run logs nothing)
            self.console.print(f"[yellow]note[/]: trainer.log_every_n_steps={every} is more "
                               f"than this run's {left} steps: metrics are logged at its last "
                               "step only")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer._logger_connector.should_update_logs:  # Lightning logs this step
            self.logged_step = trainer.global_step

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        if step == self.logged_step or step == 0 or not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith("train/") and v.numel() == 1}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step - 1)  # Lightning's step: steps done before
            logger.save()


class DivergenceGuard(L.Callback):
    """Stops training with :class:`TrainingDiverged` as soon as the loss is NaN or infinite
    (before any checkpoint of that state is written)."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or bool(torch.isfinite(loss.detach()).all()):
            return
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        raise TrainingDiverged(
            f"training diverged at step {trainer.global_step}: the loss is "
            f"{float(loss.detach().float().mean())}; no checkpoint of this state was written; "
            f"{divergence_hint(lr, trainer.gradient_clip_val)}")
