"""Checks made before Hydra starts a job (and so before it creates or writes any folder).

Every checkpoint a command is about to read is loaded safely and validated here first
(:func:`diffcli.runs.load_checkpoint`: allowlisted config, finite weights), and
``diffcli train`` checks its run folder and what it resumes. A refused checkpoint thus leaves
no trace: no run folder, no ``.hydra/`` files, no log. The workflows check again when they
run (the files may have changed in between).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from diffcli.components import (
    ADVISORY_KEYS,
    build,
    check_group,
    check_kwargs,
    plain,
    resolve_target,
)
from diffcli.data.captions import METADATA_FILE, folder_captions
from diffcli.data.registry import DATASETS
from diffcli.errors import CheckpointError, DiffcliError
from diffcli.files import check_output, check_writable
from diffcli.guide import check_guidance, class_labels, parse_classes
from diffcli.runs import (
    LoadedRun,
    check_sampler_variance,
    checkpoint_of,
    find_latest_checkpoint,
    load_checkpoint,
    read_autoencoder,
    require_diffusion,
    run_roots,
)
from diffcli.workflows.schemas import (
    TRAINER,
    UsageError,
    check_top_level,
    nearest,
    trainer_keys,
)


def _literal_run_dir(cfg: DictConfig) -> Path | None:
    """``hydra.run.dir`` when the user gave a plain path (the default pattern is left alone:
    resolving it would claim a folder)."""
    node = OmegaConf.select(cfg, "hydra.run")
    if node is None:
        return None
    value = OmegaConf.to_container(node, resolve=False).get("dir")
    return Path(value) if isinstance(value, str) and "${" not in value else None


def _export(cfg: DictConfig) -> None:
    """The model fits the format (``diffcli export``), before anything is printed or written."""
    from diffcli.workflows.export import check_exportable

    ckpt = checkpoint_of(str(cfg.ckpt)) if cfg.get("ckpt") else _newest(cfg)
    if ckpt is not None:
        check_exportable(load_checkpoint(ckpt), str(cfg.format), _group(cfg, "sampler"))


def _newest(cfg: DictConfig) -> Path | None:
    try:
        return find_latest_checkpoint(run_roots(str(cfg.runs_root)))
    except CheckpointError:
        return None  # the workflow says so, in its own words


def _train_labels(cfg: DictConfig) -> None:
    """conditional=true / task=classifier on a dataset known to have no labels, and a
    hand-set model.num_classes, are refused before any data is read."""
    from diffcli.data.registry import dataset_has_labels
    from diffcli.workflows.train import labels_needed

    model = _group(cfg, "model") or {}
    if model.get("num_classes") is not None:
        raise UsageError("model.num_classes is set from the dataset's labels: leave it null and "
                         "pass conditional=true for a class-conditional model")
    reason = labels_needed(cfg)
    name = str((_group(cfg, "dataset") or {}).get("name"))
    if reason and name in DATASETS and dataset_has_labels(name) is False:
        raise UsageError(f"{reason} needs a labelled dataset, but dataset={name} has no labels "
                         "(labelled: digits, mnist, fashion_mnist, cifar10, gaussian_mixture, "
                         "moons, imagefolder with one sub-folder per class, celeba with "
                         "dataset.attribute=...)")


def _train_loss(cfg: DictConfig) -> None:
    """The objective against the network: a learned variance needs loss=hybrid|vlb, and
    those need one."""
    loss, model = _group(cfg, "loss"), _group(cfg, "model") or {}
    if not loss or cfg.get("task", "diffusion") != "diffusion":
        return
    module = _group(cfg, "module") or {}
    try:
        build("loss", loss).check(bool(model.get("learn_sigma")), module.get("min_snr_gamma"))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _train_latent(cfg: DictConfig) -> None:
    """The latent and text keys: which task takes them, an autoencoder checkpoint that is one,
    a pretrained folder that exists; text conditioning and class labels are exclusive."""
    from diffcli.workflows.latent_space import latent_source

    task = cfg.get("task", "diffusion")
    text = cfg.get("text_encoder") is not None
    try:
        source = latent_source(cfg)
    except DiffcliError as e:
        raise UsageError(str(e)) from None
    if task != "diffusion" and (source is not None or text):
        raise UsageError(f"task={task} takes no latent= or text_encoder=: those are for the "
                         "diffusion model (task=diffusion)")
    if task != "autoencoder" and cfg.get("autoencoder") is not None:
        raise UsageError("autoencoder= picks the network of task=autoencoder; to train diffusion "
                         "in an autoencoder's latent space pass latent=<its checkpoint>")
    if text and cfg.get("conditional"):
        raise UsageError("conditional=true (class labels) and text_encoder= (captions) are two "
                         "kinds of conditioning: pick one")
    dataset = _group(cfg, "dataset") or {}
    root = dataset.get("root")
    if text and dataset.get("name") == "imagefolder" and root and \
            (Path(str(root)).expanduser() / METADATA_FILE).is_file():
        folder_captions(str(root))  # every image captioned, every line with a text
    if source is None:
        return
    path, pretrained = source
    if pretrained:
        if not Path(path).expanduser().is_dir():
            raise UsageError(f"latent.pretrained={path}: no such folder; give the local folder "
                             "of a diffusers AutoencoderKL (config.json + weights)")
        return
    if not Path(path).is_file():
        raise UsageError(f"latent={path}: no such autoencoder checkpoint; train one with "
                         "`diffcli train task=autoencoder`")
    try:
        read_autoencoder(path)
    except CheckpointError:
        raise
    except DiffcliError as e:
        raise UsageError(str(e)) from None


def _train_requeue(cfg: DictConfig) -> None:
    """``requeue_signals`` names signals that training stops on: USR1, TERM, INT."""
    from diffcli.workflows.slurm import signal_name

    for name in cfg.get("requeue_signals") or []:
        if signal_name(name) not in ("USR1", "TERM", "INT"):
            raise UsageError(f"requeue_signals: {name!r} is not a signal training stops on; "
                             "use USR1, TERM or INT (e.g. requeue_signals=[USR1])")


def _train(cfg: DictConfig) -> None:
    from diffcli.workflows.rundir import check_run_dir
    from diffcli.workflows.train import check_resumable, resume_path

    _train_latent(cfg)
    _train_labels(cfg)
    _train_requeue(cfg)
    _train_loss(cfg)
    resume = resume_path(cfg, here=None)
    if resume is not None:
        check_resumable(resume, cfg)
    run_dir = _literal_run_dir(cfg)
    if run_dir is not None:
        check_run_dir(run_dir, resume)


GROUPS = ("dataset", "model", "schedule", "sampler", "logger", "module", "loss", "optimizer",
          "lr_scheduler", "autoencoder", "text_encoder")
CHEAP = ("schedule", "sampler", "loss", "optimizer", "lr_scheduler")  # built to run their checks


def _group(cfg: DictConfig, name: str) -> Any:
    try:
        return plain(cfg.get(name))
    except Exception:  # noqa: BLE001 - Hydra-time interpolations (the logger's run dir)
        return None


def check_trainer(cfg: DictConfig) -> None:
    """``trainer.X`` keys are Trainer arguments within their ranges (checked before the groups:
    the LR schedule reads ``trainer.max_steps``, so that key's own line comes first)."""
    trainer = _group(cfg, "trainer")
    if isinstance(trainer, Mapping):
        known = trainer_keys()
        for key, value in trainer.items():
            if key not in known:
                raise UsageError(f"trainer.{key} is not a Lightning Trainer argument"
                                 f"{nearest(key, known)}")
            if key in TRAINER:
                TRAINER[key].check(f"trainer.{key}", value)
        if trainer.get("max_steps") == 0:
            raise UsageError("trainer.max_steps=0 trains nothing: give the number of steps "
                             "(or -1 for no limit, e.g. with trainer.max_time)")
        if trainer.get("accelerator") in ("gpu", "cuda") and not torch.cuda.is_available():
            raise UsageError(f"trainer.accelerator={trainer['accelerator']} but this machine has "
                             "no CUDA device; use trainer=cpu (or trainer.accelerator=auto)")


def check_groups(cfg: DictConfig) -> None:
    """Each group node fits its component's signature; the cheap ones are built (their own
    range checks run); ``trainer.X`` keys are Trainer arguments."""
    check_trainer(cfg)
    for name in GROUPS:
        node = _group(cfg, name)
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
                    scheduler = _group(cfg, "lr_scheduler")
                    if scheduler:
                        from diffcli.lit.schedulers import build_lr_scheduler

                        build_lr_scheduler(build("lr_scheduler", scheduler), opt)
        except UsageError:
            raise
        except DiffcliError as e:
            raise UsageError(str(e)) from None
        except (ValueError, TypeError) as e:
            raise UsageError(f"{name}: {' '.join(str(e).split())}") from None
    callbacks = _group(cfg, "callbacks")
    if isinstance(callbacks, Mapping):  # built (not run) here, Inception-bound FID proxy aside
        from diffcli.workflows.train import build_callbacks

        cheap = {k: v for k, v in callbacks.items() if k != "fid_proxy"}
        context = {"run_dir": Path("."), "console": None, "seed": 0, "dataset": {}}
        try:
            build_callbacks(cheap, context)
        except DiffcliError as e:
            raise UsageError(str(e)) from None


def _check_nll(command: str, cfg: DictConfig, run: LoadedRun) -> None:
    """eval-nll's decoder and variance against the checkpoint (a usage error, exit 2)."""
    from diffcli.api import resolve_options

    require_diffusion(run)
    try:
        kind = "latent" if run.latent is not None else run.data_info().kind
        resolve_options(str(cfg.decoder), str(cfg.variance), kind, run.learned_variance,
                        run.path)
    except DiffcliError as e:
        raise UsageError(str(e)) from None


def _check_guidance(command: str, cfg: DictConfig, run: LoadedRun) -> None:
    """The guidance keys against the checkpoint and its classifier (loaded safely)."""
    from diffcli.workflows.eval_fid import guidance_sweep
    from diffcli.workflows.sample import guidance_keys, parse_seeds

    if run.task == "autoencoder" and command in ("sample", "eval_fid"):
        return  # reconstructions: the workflow checks its own keys
    try:
        require_diffusion(run)
        sampler = _group(cfg, "sampler") or {}
        check_sampler_variance(sampler.get("variance"), run)
        for g in guidance_sweep(cfg)[1] if command == "eval_fid" else [guidance_keys(cfg)]:
            checked = check_guidance(run, g)
            if checked is not None and command == "sample":  # enough samples for the classes
                n = int(cfg.n or (64 if run.data_info().kind == "image" else 2000))
                class_labels(parse_classes(g.classes, *checked),
                             len(parse_seeds(cfg.seeds, n, int(cfg.seed))))
    except CheckpointError:
        raise
    except DiffcliError as e:  # a key that does not fit this model: a usage error
        raise UsageError(str(e)) from None


def output_kind_of(command: str, cfg: DictConfig) -> tuple[str, bool] | None:
    """The kind of output ``command`` writes to ``out=`` and whether it is a folder."""
    kinds = {"export": (f"export-{cfg.get('format')}", True), "eval_fid": ("eval-fid", False),
             "eval_nll": ("eval-nll", False)}
    return kinds.get(command)


def _check_out(command: str, cfg: DictConfig) -> None:
    """``out=`` is checked (:func:`diffcli.files.check_output`) before anything is printed;
    ``out=`` and ``runs_root=`` must be places that can be written."""
    kind = output_kind_of(command, cfg)
    if kind is not None and cfg.get("out"):
        out = Path(str(cfg.out)).expanduser()
        check_output(out, kind[0], overwrite=bool(cfg.get("overwrite")), folder=kind[1])
        check_writable(out.parent, "out", out)  # where the new file or folder is created
    if command in ("train", "noise_viz") and cfg.get("runs_root"):
        check_writable(Path(str(cfg.runs_root)), "runs_root")


def preflight(command: str, cfg: DictConfig) -> None:
    """Raise a one-line :class:`~diffcli.errors.DiffcliError` for what ``command`` would
    refuse later anyway, before anything is written: top-level keys against their schema,
    config groups against their components (exit 2), then checkpoints and run folders."""
    top = {k: cfg.get(k) for k in cfg if k != "hydra"}
    groups = {k for k, v in top.items() if OmegaConf.is_config(v) or k in GROUPS
              or k in ("trainer", "callbacks")}
    check_top_level(command, {k: _group(cfg, k) for k in top if k not in groups}, groups)
    check_groups(cfg)
    _check_out(command, cfg)
    if command == "sample":
        from diffcli.workflows.sample import parse_seeds

        try:
            parse_seeds(cfg.seeds, int(cfg.n or 1), int(cfg.seed))
        except DiffcliError as e:
            raise UsageError(str(e)) from None
    if command == "train":
        _train(cfg)
        return
    if command == "export":
        _export(cfg)
        return
    if command not in ("sample", "eval_fid", "noise_viz", "eval_nll"):
        return
    check = _check_nll if command == "eval_nll" else _check_guidance
    if cfg.get("ckpt"):
        check(command, cfg, load_checkpoint(checkpoint_of(str(cfg.ckpt))))
        return
    wants_run = {"sample": True, "eval_fid": not cfg.get("samples"), "eval_nll": True,
                 "noise_viz": bool(cfg.get("reverse"))}[command]
    newest = _newest(cfg) if wants_run else None
    if newest is not None:
        check(command, cfg, load_checkpoint(newest))
