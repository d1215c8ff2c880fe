"""`diffcli train`: config -> datamodule, network, schedule -> Lightning fit -> checkpoints."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from diffcli.lit.callbacks import StepProgress
from diffcli.lit.module import DiffusionModule
from diffcli.nets.layers import count_parameters
from diffcli.workflows.common import build_datamodule, build_net

console = Console(stderr=True)


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed",
                 "lightning.pytorch.trainer.connectors.checkpoint_connector"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for msg in (".*does not have many workers.*", ".*Checkpoint directory .* exists.*",
                ".*LeafSpec.*", ".*smaller than the logging interval.*", ".*treespec.*"):
        warnings.filterwarnings("ignore", message=msg)


def train(cfg: DictConfig) -> Path:
    """Train a diffusion model as configured; returns the path of the final checkpoint."""
    _quiet_lightning()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    L.seed_everything(cfg.seed, verbose=False)
    dm = build_datamodule(cfg.dataset)
    net = build_net(cfg.model, dm.kind, dm.data_shape)
    schedule = instantiate(cfg.schedule)
    module = DiffusionModule(
        net, schedule, prediction=cfg.prediction, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
        ema_decay=cfg.ema_decay, min_snr_gamma=cfg.min_snr_gamma,
        run_config=OmegaConf.to_container(cfg, resolve=True),
    )
    console.print(f"[bold]diffcli train[/] {cfg.dataset.name} {tuple(dm.data_shape)} x "
                  f"{dm.num_samples} | {type(net).__name__} {count_parameters(net):,} parameters | "
                  f"{schedule.name} schedule T={schedule.num_timesteps} | run dir {run_dir}")
    ckpt_dir = run_dir / "checkpoints"
    trainer = L.Trainer(
        **OmegaConf.to_container(cfg.trainer, resolve=True),
        logger=instantiate(cfg.logger) if cfg.logger else False,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=cfg.checkpoint_every,
                                   save_top_k=-1, save_last=False, filename="step-{step}",
                                   auto_insert_metric_name=False),
                   StepProgress(console)],
        default_root_dir=run_dir,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, datamodule=dm)
    last = ckpt_dir / "last.ckpt"
    trainer.save_checkpoint(last)
    console.print(f"[green]done[/]: {trainer.global_step} steps; checkpoint {last}\n"
                  f"next: [bold]diffcli sample[/] (uses this run)")
    return last
