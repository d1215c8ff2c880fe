"""``diffcli train``: train a diffusion model, an autoencoder or a noise-aware classifier.

The training itself is :mod:`diffcli.workflows.training`; this module declares the command, its
keys, and the checks made before Hydra creates the run folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import OmegaConf

from diffcli.commands import Command
from diffcli.errors import CheckpointError, DiffcliError
from diffcli.tasks import task_named
from diffcli.workflows.schemas import Key, UsageError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from diffcli.checkpoint import CheckpointReads

KEYS: dict[str, Key] = {
    "seed": Key(int, "seeds weights, noise and data order", ge=0, le=2**32 - 1),
    "resume": Key(str | None, "auto: continue the newest run", choices=("auto", "never")),
    "ckpt_path": Key(str | None, "continue from this checkpoint", nonempty=True),
    "runs_root": Key(str, "where runs go (and where resume=auto looks)", nonempty=True),
    "requeue_signals": Key(list, "in a SLURM job, the signals that save and requeue the job "
                           "(it continues in the same run folder)"),
    "progress_every_s": Key(float | int, "without a terminal: a progress line this often "
                            "(seconds)", ge=0),
    "progress_every_n_steps": Key(int | None, "... or every this many steps", ge=1),
    "conditional": Key(bool, "class-conditional on the dataset's labels (classifier-free "
                       "guidance training)"),
    "task": Key(str, "diffusion | classifier | autoencoder",
                choices=("diffusion", "classifier", "autoencoder")),
    "latent": Key(dict, "latent diffusion: ckpt= an autoencoder checkpoint or pretrained= "
                  "a diffusers AutoencoderKL folder; cache, scale_factor, sample"),
    "reflow": Key(dict, "rectified flow's reflow (objective=flow): ckpt= a flow run whose "
                  "(noise, sample) pairs to train on; n, sampler, steps, batch_size, use_ema, "
                  "init"),
}

# keys that moved into config groups with the redesign: a hint instead of "not in struct"
MOVED = {
    "lr": "optimizer.lr", "warmup_steps": "lr_scheduler.warmup_steps",
    "prediction": "module.prediction", "ema_decay": "module.ema_decay",
    "ema_warmup": "module.ema_warmup", "min_snr_gamma": "module.min_snr_gamma",
    "compile": "module.compile", "channels_last": "module.channels_last",
    "checkpoint_every": "callbacks.last.every_n_steps",
    "keep_checkpoint_every": "callbacks.snapshot.every_n_steps",
    "sample_every": "callbacks.preview.every_n_steps",
    "fid_every": "callbacks.fid_proxy.every_n_steps",
    "fid_samples": "callbacks.fid_proxy.num_samples",
    "fid_extractor": "callbacks.fid_proxy.extractor",
    "fid_weights": "callbacks.fid_proxy.weights", "fid_steps": "callbacks.fid_proxy.sampler.steps",
}


def _literal_run_dir(cfg: DictConfig) -> Path | None:
    """``hydra.run.dir`` when the user gave a plain path (the default pattern is left alone:
    resolving it would claim a folder)."""
    node = OmegaConf.select(cfg, "hydra.run")
    if node is None:
        return None
    value = OmegaConf.to_container(node, resolve=False).get("dir")
    return Path(value) if isinstance(value, str) and "${" not in value else None


def _train_labels(cfg: DictConfig) -> None:
    """conditional=true / task=classifier on a dataset known to have no labels, and a
    hand-set model.num_classes, are refused before any data is read."""
    from diffcli.checks import group
    from diffcli.data.registry import DATASETS, dataset_has_labels
    from diffcli.workflows.train_modules import labels_needed

    model = group(cfg, "model") or {}
    if model.get("num_classes") is not None:
        raise UsageError("model.num_classes is set from the dataset's labels: leave it null and "
                         "pass conditional=true for a class-conditional model")
    reason = labels_needed(cfg)
    name = str((group(cfg, "dataset") or {}).get("name"))
    if reason and name in DATASETS and dataset_has_labels(name) is False:
        raise UsageError(f"{reason} needs a labelled dataset, but dataset={name} has no labels "
                         "(labelled: digits, mnist, fashion_mnist, cifar10, gaussian_mixture, "
                         "moons, imagefolder with one sub-folder per class, celeba with "
                         "dataset.attribute=...)")


def _train_data(cfg: DictConfig) -> None:
    """The dataset's files are there (an experiment on CIFAR-10 without the data is refused
    before its run folder exists); the run downloads them when ``dataset.download`` is set."""
    from diffcli.checks import group
    from diffcli.data.registry import DATASETS, check_dataset_present

    dataset = group(cfg, "dataset") or {}
    if dataset.get("name") in DATASETS:
        check_dataset_present(str(dataset["name"]), dataset.get("root"),
                              str(dataset.get("split") or "train"),
                              bool(dataset.get("download")))


def _train_loss(cfg: DictConfig) -> None:
    """The objective against the network: a learned variance needs loss=hybrid|vlb, and
    those need one."""
    from diffcli.checks import group
    from diffcli.components import build
    from diffcli.diffusion.objectives import check_combination

    loss, model = group(cfg, "loss"), group(cfg, "model") or {}
    if not loss or not task_named(cfg.get("task")).generates:
        return
    module = group(cfg, "module") or {}
    objective = group(cfg, "objective")
    try:
        if objective is not None:
            built = build("objective", objective)
            check_combination(built, build("loss", loss).name,
                              bool(model.get("learn_sigma")), module.get("min_snr_gamma"))
            _shift_needs_images(built, group(cfg, "dataset") or {})
        build("loss", loss).check(bool(model.get("learn_sigma")), module.get("min_snr_gamma"))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _shift_needs_images(objective: object, dataset: dict) -> None:
    """Flow's resolution-dependent shift (``objective.shift=null``) is for images."""
    from diffcli.data.registry import DATASETS

    spec = DATASETS.get(str(dataset.get("name")))
    if getattr(objective, "shift", 1.0) is None and spec is not None and spec.kind != "image":
        raise ValueError(f"objective.shift=null (SD3's resolution rule, sqrt(H W) / "
                         f"base_resolution) needs images; dataset={dataset.get('name')} has 2-D "
                         "points: give objective.shift=<number> (1 is no shift)")


def _train_latent(cfg: DictConfig, reads: CheckpointReads) -> None:
    """The latent and text keys: which task takes them, an autoencoder checkpoint that is one,
    a pretrained folder that exists; text conditioning and class labels are exclusive."""
    from diffcli.checks import group
    from diffcli.data.captions import METADATA_FILE, folder_captions
    from diffcli.workflows.latent_space import latent_source

    task = task_named(cfg.get("task"))
    text = cfg.get("text_encoder") is not None
    try:
        source = latent_source(cfg)
    except DiffcliError as e:
        raise UsageError(str(e)) from None
    if (source is not None and not task.takes_latent) or (text and not task.takes_text):
        raise UsageError(f"task={task.name} takes no latent= or text_encoder=: those are for the "
                         "diffusion model (task=diffusion)")
    if not task.encodes and cfg.get("autoencoder") is not None:
        raise UsageError("autoencoder= picks the network of task=autoencoder; to train diffusion "
                         "in an autoencoder's latent space pass latent=<its checkpoint>")
    if text and cfg.get("conditional"):
        raise UsageError("conditional=true (class labels) and text_encoder= (captions) are two "
                         "kinds of conditioning: pick one")
    dataset = group(cfg, "dataset") or {}
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
        reads.autoencoder(path)
    except CheckpointError:
        raise
    except DiffcliError as e:
        raise UsageError(str(e)) from None


def _train_requeue(cfg: DictConfig) -> None:
    """``requeue_signals`` names signals that training stops on: USR1, TERM, INT."""
    from diffcli.slurm import signal_name

    for name in cfg.get("requeue_signals") or []:
        if signal_name(name) not in ("USR1", "TERM", "INT"):
            raise UsageError(f"requeue_signals: {name!r} is not a signal training stops on; "
                             "use USR1, TERM or INT (e.g. requeue_signals=[USR1])")


def check(cfg: DictConfig) -> CheckpointReads:
    """Everything ``diffcli train`` refuses before Hydra creates the run folder: the latent and
    text keys, labels, requeue signals, the loss against the network, the checkpoint it resumes
    and the run folder it was given. Returns the checkpoints read (handed to :func:`run`)."""
    from diffcli.checkpoint import CheckpointReads
    from diffcli.runs import check_run_dir
    from diffcli.workflows.reflow import check_reflow
    from diffcli.workflows.training import check_resumable, resume_path

    reads = CheckpointReads()
    _train_latent(cfg, reads)
    check_reflow(cfg, reads.load)
    _train_labels(cfg)
    _train_data(cfg)
    _train_requeue(cfg)
    _train_loss(cfg)
    resume = resume_path(cfg, here=None)
    if resume is not None:
        check_resumable(resume, cfg, reads.load)
    run_dir = _literal_run_dir(cfg)
    if run_dir is not None:
        check_run_dir(run_dir, resume)
    return reads


def run(cfg: DictConfig, checked: CheckpointReads | None) -> Path | None:
    """Train (:func:`diffcli.workflows.training.train`) with the checkpoints ``check`` read."""
    from diffcli.workflows.training import train

    return train(cfg, checked)


COMMAND = Command(
    name="train", config="train", order=0,
    help="Train a diffusion model; the run goes to outputs/<date>/<time>/.",
    example="diffcli train dataset=swiss_roll model=mlp trainer.max_steps=3000",
    check=check, run=run, keys=KEYS, moved=MOVED, writes_runs_root=True, logged=True,
    aliases={"latent": "latent.ckpt",  # diffcli train latent=<autoencoder ckpt>
             "reflow": "reflow.ckpt"},  # diffcli train objective=flow reflow=<flow run>
)
