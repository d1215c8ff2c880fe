"""Lightning callbacks: a step-based rich progress bar."""

from __future__ import annotations

import time
from typing import Any

import lightning as L
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class StepProgress(L.Callback):
    """One bar over optimizer steps (not epochs) with rate, loss and ETA."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task: Any = None
        self.start = (0.0, 0)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        total = trainer.max_steps if trainer.max_steps > 0 else None
        self.progress = Progress(
            TextColumn("training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} steps/s"), TextColumn("loss {task.fields[loss]}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, transient=False,
        )
        self.task = self.progress.add_task("", total=total, completed=trainer.global_step, loss="-",
                                          rate="-")
        self.start = (time.perf_counter(), trainer.global_step)
        self.progress.start()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if self.progress is None:
            return
        loss = trainer.callback_metrics.get("train/loss")
        shown = f"{float(loss):.4f}" if loss is not None else "-"
        elapsed = time.perf_counter() - self.start[0]
        rate = f"{(trainer.global_step - self.start[1]) / max(elapsed, 1e-9):.1f}"
        self.progress.update(self.task, completed=trainer.global_step, loss=shown, rate=rate)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
