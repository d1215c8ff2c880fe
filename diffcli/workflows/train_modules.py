"""The LightningModule of a training run, by task: a diffusion model (its network, schedule,
loss and latent space), an autoencoder or a noise-aware classifier; the labels it needs, the
checkpoint's data description, and whether a training batch fits in memory."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from diffcli.components import (
    build,
    build_autoencoder,
    build_datamodule,
    build_net,
    plain,
)
from diffcli.diffusion.objectives import for_data
from diffcli.errors import DiffcliError
from diffcli.lit.classifier_module import ClassifierModule, accuracy_by_t, format_accuracy
from diffcli.tasks import task_named
from diffcli.workflows.latent_space import LatentSpace

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line

def labels_needed(cfg: DictConfig) -> str | None:
    """Why this run needs a labelled dataset ("conditional=true", "task=classifier"), or None."""
    labels = task_named(cfg.get("task")).labels
    if labels is not None:
        return labels
    return "conditional=true" if cfg.get("conditional") else None


def check_labels(cfg: DictConfig, dm: Any) -> int | None:
    """The number of classes the network is built for: the dataset's when the run needs
    labels (refused, in one line, when the dataset has none), else None."""
    reason = labels_needed(cfg)
    if cfg.model.get("num_classes") is not None:
        raise DiffcliError("model.num_classes is set from the dataset's labels: leave it null and "
                           "pass conditional=true for a class-conditional model")
    if reason is None:
        return None
    if getattr(dm, "num_classes", None) is None:
        raise DiffcliError(f"{reason} needs a labelled dataset, but dataset={cfg.dataset.name} "
                           "has no labels (labelled: digits, mnist, fashion_mnist, cifar10, "
                           "gaussian_mixture, moons, imagefolder with one sub-folder per class, "
                           "celeba with dataset.attribute=...)")
    return int(dm.num_classes)


def data_description(dm: Any, num_classes: int | None) -> dict[str, Any]:
    """The ``data`` entry of a checkpoint: kind, sample shape, and the classes when labelled."""
    info: dict[str, Any] = {"kind": dm.kind, "shape": list(dm.data_shape)}
    if num_classes is not None:
        info["num_classes"] = num_classes
        info["class_names"] = [str(c) for c in (dm.class_names or range(num_classes))]
    return info


def check_training_fits(cfg: DictConfig, shape: tuple[int, ...], num_classes: int | None,
                        batch_size: int) -> None:
    """One line, before the network is built, when a training batch (forward and backward;
    weights, gradients, Adam's two moments and the EMA: 5 copies of the weights) cannot fit
    in the memory of the device it trains on (:func:`diffcli.nets.memory.check_fits`)."""
    from diffcli.nets.memory import check_fits

    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    cuda = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    check_fits(lambda: build_net(cfg.model, shape, num_classes=num_classes),
               shape, batch_size, torch.device("cuda" if cuda else "cpu"),
               key="dataset.batch_size", what="training", grad=True, weight_copies=5)


def build_module(cfg: DictConfig, dm: Any, space: LatentSpace | None = None) -> L.LightningModule:
    """The ``module`` group built around the network, schedule, optimizer and LR schedule
    (and, for latent diffusion, the latent space)."""
    if task_named(cfg.get("task")).encodes:
        return _autoencoder_module(cfg, dm)
    num_classes = check_labels(cfg, dm)
    shape = space.info.shape if space is not None else dm.data_shape
    check_training_fits(cfg, tuple(shape), num_classes, int(dm.batch_size))
    net = build_net(cfg.model, shape, num_classes=num_classes,
                    text_encoder_cfg=cfg.get("text_encoder"))
    channels_last = bool(cfg.module.get("channels_last")) and dm.kind == "image"
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    lr_scheduler = build("lr_scheduler", cfg.lr_scheduler) if cfg.get("lr_scheduler") else None
    extra: dict[str, Any] = {}
    if cfg.get("loss") and task_named(cfg.get("task")).generates:
        extra["loss"] = build("loss", cfg.loss)
    if cfg.get("objective") and task_named(cfg.get("task")).generates:
        extra["objective"] = for_data(build("objective", cfg.objective), tuple(dm.data_shape))
    data_info = data_description(dm, num_classes)
    if space is not None:
        extra |= {"latent": space.codec, "latent_cached": space.cached}
        data_info["latent"] = space.info.describe()
    return build("module", cfg.module, net=net, schedule=build("schedule", cfg.schedule),
                 optimizer=build("optimizer", cfg.optimizer), lr_scheduler=lr_scheduler,
                 channels_last=channels_last, **extra,
                 run_config=OmegaConf.to_container(cfg, resolve=True), data_info=data_info)


def _autoencoder_module(cfg: DictConfig, dm: Any) -> L.LightningModule:
    """The autoencoder stage (``task=autoencoder``): the ``autoencoder`` group's network in the
    ``module`` group's AutoencoderModule."""
    if dm.kind != "image":
        raise DiffcliError("task=autoencoder needs images; this dataset has 2-D points")
    net = build_autoencoder(cfg.autoencoder, dm.data_shape)
    lr_scheduler = build("lr_scheduler", cfg.lr_scheduler) if cfg.get("lr_scheduler") else None
    module = build("module", cfg.module, net=net, optimizer=build("optimizer", cfg.optimizer),
                   lr_scheduler=lr_scheduler, run_config=OmegaConf.to_container(cfg, resolve=True),
                   data_info=data_description(dm, None))
    source, which = held_out(cfg, dm)
    module.eval_batch = source.head(module.eval_images)[0] if module.eval_images else None
    module.eval_source = which
    if getattr(module, "perceptual_note", None):
        console.print(f"[yellow]note[/]: {module.perceptual_note}")
    return module


def held_out(cfg: DictConfig, dm: Any) -> tuple[Any, str]:
    """The dataset's test split when training used "train" and it is on disk (never
    downloaded), else the training data; with a word saying which."""
    if cfg.dataset.get("split") == "train":
        node = {**plain(cfg.dataset), "split": "test"}
        try:
            return build_datamodule(node), "held-out split=test"
        except DiffcliError:
            pass
    return dm, f"training split={cfg.dataset.get('split', 'train')}"


def report_accuracy(cfg: DictConfig, dm: Any, module: ClassifierModule) -> None:
    """Accuracy of the trained classifier on the first ``eval_images`` items, noised, per
    range of t (Dhariwal & Nichol 2021 report it as a function of noise level)."""
    source, which = held_out(cfg, dm)
    x, y = source.head(module.eval_images)
    module.net.eval()
    rows = accuracy_by_t(module.net, module.schedule, x, y)
    console.print(f"classifier accuracy on {len(x)} noised images ({which}): "
                  f"{format_accuracy(rows)}")
