"""Checks that several commands share, made before Hydra starts a job (and so before it creates
or writes any folder): the top-level keys against the command's schema, the config groups
against their components, the places a command writes, the checkpoint it will read (read once,
here, and handed to the command's run) and the sampler and guidance keys against it.

A refused input thus leaves no trace: no run folder, no ``.hydra/`` files, no log. Imports no
command: each command's own checks live in its module (:mod:`diffcli.commands`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffcli.checkpoint import LoadedRun, load_checkpoint
from diffcli.components import (
    ADVISORY_KEYS,
    build,
    check_group,
    check_kwargs,
    plain,
    resolve_target,
)
from diffcli.errors import CheckpointError, DiffcliError
from diffcli.files import check_output, check_writable
from diffcli.guided_run import Guidance, check_guidance, class_labels, parse_classes
from diffcli.restore import check_sampler_variance, require_diffusion
from diffcli.runs import checkpoint_of, newest_run, run_roots
from diffcli.workflows.schemas import Key, UsageError, check_top_level
from diffcli.workflows.trainer_args import check_trainer_arguments

GROUPS = ("dataset", "model", "schedule", "sampler", "logger", "module", "loss", "objective",
          "optimizer", "lr_scheduler", "autoencoder", "text_encoder")


# built to run their checks
CHEAP = ("schedule", "sampler", "loss", "objective", "optimizer", "lr_scheduler")


def group(cfg: DictConfig, name: str) -> Any:
    try:
        return plain(cfg.get(name))
    except Exception:  # noqa: BLE001 - Hydra-time interpolations (the logger's run dir)
        return None


def check_trainer(cfg: DictConfig) -> None:
    """``trainer.X`` keys are Trainer arguments within their ranges (checked before the groups:
    the LR schedule reads ``trainer.max_steps``, so that key's own line comes first)."""
    trainer = group(cfg, "trainer")
    if isinstance(trainer, Mapping):
        check_trainer_arguments(trainer)
        if trainer.get("max_steps") == 0:
            raise UsageError("trainer.max_steps=0 trains nothing: give the number of steps "
                             "(or -1 for no limit, e.g. with trainer.max_time)")
        for key in ("max_epochs", "limit_train_batches"):
            if trainer.get(key) == 0 and not isinstance(trainer.get(key), bool):
                raise UsageError(f"trainer.{key}={trainer[key]} trains nothing: leave it out "
                                 "(null), or use trainer.fast_dev_run=true for a smoke test that "
                                 "saves nothing")
        batches = trainer.get("limit_train_batches")
        if isinstance(batches, float) and batches > 1:
            raise UsageError(f"trainer.limit_train_batches={batches}: give a fraction <= 1.0 "
                             "of an epoch or a whole number of batches")
        check_fsdp(trainer)
        if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
            raise UsageError(f"trainer.accelerator={trainer['accelerator']} but this machine has "
                             "no CUDA device; use trainer=cpu (or trainer.accelerator=auto)")


def check_fsdp(trainer: Mapping) -> None:
    """``trainer=fsdp`` (any ``fsdp*`` strategy) only where it can run: Lightning's FSDPStrategy
    wraps torch's FullyShardedDataParallel, which needs an accelerator device (on the CPU
    Lightning refuses it, and torch raises "FSDP needs a non-CPU accelerator device")."""
    strategy = trainer.get("strategy")
    if not (isinstance(strategy, str) and strategy.startswith("fsdp")):
        return
    accelerator = str(trainer.get("accelerator") or "auto")
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return
    version = torch.__version__.split("+")[0]
    raise UsageError(f"trainer=fsdp needs CUDA GPUs (FSDP has no CPU backend in torch {version}); "
                     "use trainer=ddp trainer.accelerator=cpu on the CPU")


def check_groups(cfg: DictConfig) -> None:
    """Each group node fits its component's signature; the cheap ones are built (their own
    range checks run); ``trainer.X`` keys are Trainer arguments."""
    check_trainer(cfg)
    for name in GROUPS:
        node = group(cfg, name)
        if not isinstance(node, Mapping) or "_target_" not in node:
            continue
        kwargs = {k: v for k, v in node.items() if k not in ("_target_", "_partial_")
                  and k not in ADVISORY_KEYS.get(name, ())}
        try:
            check_group(name, node)
            check_kwargs(resolve_target(name, str(node["_target_"])), kwargs, name)
            if name == "module":
                from diffcli.lit.ema import check_ema

                check_ema(node.get("ema_decay"), node.get("ema_sigma_rel"))
            if name in CHEAP:
                built = build(name, node)
                if name == "optimizer":
                    opt = built([torch.nn.Parameter(torch.zeros(1))])
                    scheduler = group(cfg, "lr_scheduler")
                    if scheduler:
                        from diffcli.lit.schedulers import build_lr_scheduler

                        build_lr_scheduler(build("lr_scheduler", scheduler), opt)
        except UsageError:
            raise
        except DiffcliError as e:
            raise UsageError(str(e)) from None
        except (ValueError, TypeError) as e:
            raise UsageError(f"{name}: {' '.join(str(e).split())}") from None
    callbacks = group(cfg, "callbacks")
    if isinstance(callbacks, Mapping):  # built (not run) here, Inception-bound FID proxy aside
        from diffcli.workflows.training import build_callbacks

        cheap = {k: v for k, v in callbacks.items() if k != "fid_proxy"}
        context = {"run_dir": Path("."), "console": None, "seed": 0, "dataset": {}}
        try:
            build_callbacks(cheap, context)
        except DiffcliError as e:
            raise UsageError(str(e)) from None


def check_sampling(cfg: DictConfig, run: LoadedRun, guidances: Sequence[Guidance],
                   samples: int | None = None) -> None:
    """The sampler and guidance keys against the checkpoint ``run`` and its classifier (loaded
    safely): a diffusion model, a variance it has, each of ``guidances`` fitting it, and (when
    ``samples`` is given) enough samples for the classes asked for."""
    try:
        require_diffusion(run)
        sampler = group(cfg, "sampler") or {}
        check_sampler_variance(sampler.get("variance"), run)
        for g in guidances:
            checked = check_guidance(run, g)
            if checked is not None and samples is not None:
                class_labels(parse_classes(g.classes, *checked), samples)
    except CheckpointError:
        raise
    except DiffcliError as e:  # a key that does not fit this model: a usage error
        raise UsageError(str(e)) from None


def check_out(cfg: DictConfig, kind: tuple[str, bool] | None, runs_root: bool) -> None:
    """``out=`` (an output of ``kind``: its name and whether it is a folder) is checked
    (:func:`diffcli.files.check_output`) before anything is printed; ``out=`` and (when the
    command writes there) ``runs_root=`` must be places that can be written."""
    if kind is not None and cfg.get("out"):
        out = Path(str(cfg.out)).expanduser()
        check_output(out, kind[0], overwrite=bool(cfg.get("overwrite")), folder=kind[1])
        check_writable(out.parent, "out", out)  # where the new file or folder is created
    if runs_root and cfg.get("runs_root"):
        check_writable(Path(str(cfg.runs_root)), "runs_root")


def run_to_check(cfg: DictConfig, wanted: bool = True) -> LoadedRun | None:
    """The checkpoint a command will use, read (once) to be checked and handed to its run:
    ``ckpt=``'s, else (when ``wanted``) the newest run's (named on the console when the command
    acts: :func:`diffcli.runs.run_to_use`); None when there is none (the command says so in its
    own words when it runs)."""
    if cfg.get("ckpt"):
        return load_checkpoint(checkpoint_of(str(cfg.ckpt)))
    if not wanted:
        return None
    try:
        newest = newest_run(run_roots(str(cfg.runs_root)))
    except CheckpointError:
        return None  # the workflow says so, in its own words
    return newest.read()


def check_common(cfg: DictConfig, keys: Mapping[str, Key], kind: tuple[str, bool] | None,
                 runs_root: bool) -> None:
    """What every command checks before Hydra acts: its top-level keys against their schema
    ``keys``, the config groups against their components (exit 2), and where it writes."""
    top = {k: cfg.get(k) for k in cfg if k != "hydra"}
    groups = {k for k, v in top.items() if OmegaConf.is_config(v) or k in GROUPS
              or k in ("trainer", "callbacks")}
    check_top_level(keys, {k: group(cfg, k) for k in top if k not in groups}, groups)
    check_groups(cfg)
    check_out(cfg, kind, runs_root)
