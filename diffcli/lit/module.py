"""The thin LightningModule: sample t, call the loss, keep an EMA, log."""

from __future__ import annotations

import copy
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from diffcli.diffusion.forward import Parameterization, randint_timesteps
from diffcli.diffusion.losses import diffusion_loss
from diffcli.diffusion.schedules import NoiseSchedule

CHECKPOINT_KEY = "diffcli"  # where the self-description of a checkpoint lives
CHECKPOINT_FORMAT = 1


class DiffusionModule(L.LightningModule):
    """Trains ``net`` with L_simple (Ho et al. 2020, Algorithm 1) and keeps an EMA copy of it.

    ``run_config`` (a plain dict: the resolved Hydra config) is written into every checkpoint
    under ``checkpoint["diffcli"]`` so that sampling can rebuild everything from the file alone.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        *,
        prediction: Parameterization | str = Parameterization.EPS,
        lr: float = 1e-3,
        warmup_steps: int = 0,
        ema_decay: float | None = 0.999,
        min_snr_gamma: float | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.ema_net = copy.deepcopy(net).requires_grad_(False) if ema_decay else None
        self.schedule = schedule
        self.prediction = Parameterization(prediction)
        self.lr, self.warmup_steps = lr, warmup_steps
        self.ema_decay, self.min_snr_gamma = ema_decay, min_snr_gamma
        self.run_config = run_config or {}

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        x0 = batch  # (B, ...)
        t = randint_timesteps(x0.shape[0], self.schedule.num_timesteps, device=x0.device)
        loss = diffusion_loss(self.net, self.schedule, x0, t, torch.randn_like(x0),
                              self.prediction, self.min_snr_gamma)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"])
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        opt = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        warm = max(self.warmup_steps, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warm))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    @torch.no_grad()
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """EMA with warm-up: decay_n = min(decay, (1 + n) / (10 + n)) after n optimizer steps."""
        if self.ema_net is None:
            return
        n = self.global_step
        decay = min(self.ema_decay, (1 + n) / (10 + n))
        for e, p in zip(self.ema_net.parameters(), self.net.parameters(), strict=True):
            e.lerp_(p.detach(), 1 - decay)
        for e, b in zip(self.ema_net.buffers(), self.net.buffers(), strict=True):
            e.copy_(b)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"format": CHECKPOINT_FORMAT, "config": self.run_config}
