"""The noise-aware classifier's LightningModule (Dhariwal & Nichol 2021, Sec. 4.1).

The classifier learns p(y | x_t, t) on x_t ~ q(x_t | x_0) (Ho et al. 2020, eq. 4) with t drawn
uniformly from the training timesteps, with the cross-entropy loss. Checkpoints carry the same
self-description as the diffusion module's (``checkpoint["diffcli"]``), so ``diffcli sample
classifier=<ckpt>`` rebuilds the classifier from the file alone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffcli.diffusion.process import q_sample, randint_timesteps
from diffcli.diffusion.schedules import NoiseSchedule
from diffcli.lit.module import (
    CHECKPOINT_KEY,
    batch_data,
    batch_labels,
    check_optimizer,
    checkpoint_meta,
    optimizers_for,
)

T_BUCKETS = 4  # accuracy is reported for t in [0, T/4), [T/4, T/2), ...


class ClassifierModule(L.LightningModule):
    """Trains ``net`` ``(x_t (B, ...), t (B,)) -> logits (B, K)`` on noised data.

    Args:
        net: the classifier (:mod:`diffcli.nets.classifier`).
        schedule: the noise schedule whose x_t it learns to classify (the diffusion model's).
        optimizer, lr_scheduler: as :class:`~diffcli.lit.module.DiffusionModule`'s.
        channels_last: feed image batches in channels-last memory format.
        run_config, data_info: written into every checkpoint.
        eval_images: how many images the end-of-training accuracy report uses.
        **_: the diffusion module's other keywords (prediction, EMA, ...) do not apply.
    """

    def __init__(self, net: nn.Module, schedule: NoiseSchedule, *,
                 optimizer: Callable[..., torch.optim.Optimizer] | None = None,
                 lr_scheduler: Callable[..., Any] | None = None, channels_last: bool = False,
                 run_config: dict[str, Any] | None = None,
                 data_info: dict[str, Any] | None = None, eval_images: int = 1000,
                 **_: Any) -> None:
        super().__init__()
        if not (isinstance(eval_images, int) and eval_images >= 0):
            raise ValueError(f"eval_images={eval_images!r} must be an integer >= 0")
        self.eval_images = eval_images
        self.make_optimizer = optimizer or functools.partial(torch.optim.AdamW, lr=3e-4)
        self.make_lr_scheduler = lr_scheduler
        check_optimizer(self.make_optimizer, lr_scheduler)
        self.net = net
        self.schedule = schedule
        self.channels_last = channels_last
        self.run_config = run_config or {}
        self.data_info = data_info

    def training_step(self, batch: Tensor | tuple | list, batch_idx: int) -> Tensor:
        x0, y = batch_data(batch), batch_labels(batch)
        if y is None:
            raise ValueError("a classifier needs a labelled dataset, but the batches carry "
                             "no labels")
        if self.channels_last and x0.ndim == 4:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        t = randint_timesteps(x0.shape[0], self.schedule.num_timesteps, device=x0.device)
        x_t = q_sample(self.schedule, x0, t, torch.randn_like(x0))
        logits = self.net(x_t, t)  # (B, K)
        loss = F.cross_entropy(logits, y.long())
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizers_for(self.net, self.make_optimizer, self.make_lr_scheduler,
                              self.trainer)

    @property
    def sampling_net(self) -> nn.Module:
        return self.net

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = checkpoint_meta(self.run_config, self.data_info)


@torch.inference_mode()
def accuracy_by_t(net: nn.Module, schedule: NoiseSchedule, x0: Tensor, y: Tensor, *,
                  buckets: int = T_BUCKETS, batch_size: int = 256,
                  seed: int = 0) -> list[tuple[int, int, float]]:
    """Accuracy of ``net`` on x0 (N, ...) with labels y (N,) noised at t drawn uniformly from
    each of ``buckets`` equal ranges of timesteps: [(t_lo, t_hi, accuracy), ...] (t_hi
    exclusive). Fixed noise (``seed``), so a number is reproducible."""
    gen = torch.Generator().manual_seed(seed)
    T = schedule.num_timesteps
    edges = [round(i * T / buckets) for i in range(buckets + 1)]
    out = []
    device = next(net.parameters()).device
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        correct = 0
        for start in range(0, len(x0), batch_size):
            xb, yb = x0[start:start + batch_size], y[start:start + batch_size]
            t = torch.randint(lo, hi, (len(xb),), generator=gen)
            noise = torch.randn(xb.shape, generator=gen)
            x_t = q_sample(schedule, xb, t, noise).to(device)
            correct += int((net(x_t, t.to(device)).argmax(1).cpu() == yb).sum())
        out.append((lo, hi, correct / max(1, len(x0))))
    return out


def format_accuracy(rows: Sequence[tuple[int, int, float]]) -> str:
    """"t 0-249: 98.1% | t 250-499: 95.0% | ..." for :func:`accuracy_by_t`'s rows."""
    return " | ".join(f"t {lo}-{hi - 1}: {100 * acc:.1f}%" for lo, hi, acc in rows)
