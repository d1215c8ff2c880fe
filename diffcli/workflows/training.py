"""`diffcli train`: config -> datamodule, network, schedule -> Lightning fit -> checkpoints."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from diffcli.checkpoint import CheckpointReads, LoadedRun, load_checkpoint
from diffcli.components import (
    build,
    build_datamodule,
    plain,
    resolve_target,
)
from diffcli.diffusion.objectives import CHAIN_TARGET, is_chain
from diffcli.errors import CheckpointError, DiffcliError, Interrupted
from diffcli.lit.autoencoder_module import AutoencoderModule
from diffcli.lit.callbacks import (
    DivergenceGuard,
    GracefulStop,
    LastStepMetrics,
    StepProgress,
    Throughput,
)
from diffcli.lit.classifier_module import ClassifierModule
from diffcli.lit.loggers import RunCSVLogger, finish_loggers, trim_metrics
from diffcli.lit.module import DiffusionModule
from diffcli.lit.precision import cpu_has_bf16, train_precision, trains_on_cpu
from diffcli.lit.ranks import rank_name, stop_other_ranks, watch_ranks
from diffcli.lit.saving import LAST, AtomicCheckpointIO, remove_stale_temporaries
from diffcli.runs import (
    RunClock,
    RunLock,
    check_run_dir,
    live_holder,
    newest_run,
    run_roots,
    write_result,
)
from diffcli.slurm import SlurmJob, requeue, signal_name, slurm_job
from diffcli.tasks import task_named
from diffcli.workflows import reflow
from diffcli.workflows.latent_space import autoencoder_sha256, latent_source, latent_space
from diffcli.workflows.short_run import note_short_run
from diffcli.workflows.start_summary import StartFacts, start_lines
from diffcli.workflows.train_modules import build_module, report_accuracy
from diffcli.workflows.trainer_args import lightning_arguments

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line
PEER_EXIT_WAIT_S = 5.0  # how long rank 0 waits for a failed child to exit and report
MUST_MATCH_ON_RESUME = ("dataset", "model", "schedule", "loss", "objective", "text_encoder",
                        "autoencoder", "reflow")  # and what the network predicts
# dataset keys that may change on resume: how the data is fed, not what it is
DATASET_RUNTIME_KEYS = ("batch_size", "num_workers", "pin_memory", "train_steps", "download",
                        "cache")


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed",
                 "lightning.pytorch.trainer.connectors.checkpoint_connector",
                 "lightning.fabric.utilities.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for msg in (".*does not have many workers.*", ".*Checkpoint directory .* exists.*",
                ".*LeafSpec.*", ".*smaller than the logging interval.*", ".*treespec.*",
                ".*resuming from a checkpoint that ended before the epoch ended.*",
                ".*You're resuming from a checkpoint.*", ".*dirpath has changed.*",
                ".*requested to overfit but enabled train dataloader shuffling.*"):
        warnings.filterwarnings("ignore", message=msg)


def resume_path(cfg: DictConfig, here: Path | None, say: bool = False) -> Path | None:
    """``ckpt_path=<file>`` or ``resume=auto`` (the newest run's last checkpoint, not counting
    the folder ``here``; named on the console when ``say``), else None."""
    if cfg.ckpt_path:
        path = Path(str(cfg.ckpt_path))
        if not path.is_file():
            raise CheckpointError(f"ckpt_path={path}: no such checkpoint")
        return path
    if cfg.resume in (None, False, "never"):
        return None
    if cfg.resume != "auto":
        raise DiffcliError(f"resume={cfg.resume!r}: use resume=auto or ckpt_path=<file>")
    found = newest_run(run_roots(cfg.runs_root), exclude=here, task=task_named(cfg.get("task")),
                       key="ckpt_path")
    return found.say("ckpt_path", "resume=auto: continuing") if say else found.checkpoint


def _comparable(key: str, value: object) -> object:
    value = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    if key == "dataset" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in DATASET_RUNTIME_KEYS}
    if key == "reflow":
        return reflow.comparable(value)
    if key == "objective" and value is None:  # a checkpoint from before objectives
        return {"_target_": CHAIN_TARGET}
    return value


def _chain_hint(key: str, old: object) -> str:
    """The override that continues a DDPM-chain checkpoint (flow is the default since 27)."""
    chain = key == "objective" and isinstance(old, dict) and is_chain(old)
    return " (objective=ddpm continues the DDPM chain)" if chain else ""


def check_resumable(path: Path, cfg: DictConfig,
                    read: Callable[[Path], LoadedRun] = load_checkpoint) -> int:
    """Refuse a checkpoint whose dataset, network, schedule or prediction differs from this
    config, or whose run a live process is still writing; return its step. ``read`` reads the
    checkpoint (the command's reader: once per process)."""
    run = read(path)
    holder = live_holder(path.resolve().parent.parent)
    if holder is not None:
        raise CheckpointError(f"cannot resume {path}: process {holder} is still writing that run; "
                              "wait for it to finish or stop it")
    pairs = [(key, _comparable(key, run.config.get(key)), _comparable(key, cfg.get(key)))
             for key in MUST_MATCH_ON_RESUME]
    pairs.append(("module.prediction", run.prediction, str(cfg.module.get("prediction", "eps"))))
    pairs.append(("task", run.config.get("task", "diffusion"), str(cfg.get("task", "diffusion"))))
    pairs.append(("conditional", bool(run.config.get("conditional", False)),
                  bool(cfg.get("conditional", False))))
    for key, old, new in pairs:
        if old != new:
            diffs = ", ".join(f"{k}: {a} -> {b}" for k, a, b in _differences(key, old, new))
            raise CheckpointError(f"cannot resume {path}: {diffs} (the checkpoint's value first); "
                                  f"resume with the same {key} settings{_chain_hint(key, old)}")
    check_same_latents(run, cfg)
    if run.global_step >= cfg.trainer.max_steps > 0:
        raise CheckpointError(f"{path} is already at step {run.global_step} >= "
                              f"trainer.max_steps={cfg.trainer.max_steps}; raise trainer.max_steps "
                              "to train longer")
    return run.global_step


def check_same_latents(run: LoadedRun, cfg: DictConfig) -> None:
    """A run trained on latents resumes only on the same autoencoder (by SHA-256), a pixel run
    only in pixel space."""
    source = latent_source(cfg)
    if run.latent is None and source is None:
        return
    if run.latent is None:
        raise CheckpointError(f"cannot resume {run.path} in latent space: it was trained on "
                              "pixels; drop latent.ckpt / latent.pretrained")
    if source is None:
        raise CheckpointError(f"cannot resume {run.path} in pixel space: it was trained on the "
                              f"latents of {run.latent.source}; pass latent={run.latent.source}")
    sha = autoencoder_sha256(*source)
    if sha is not None and sha != run.latent.sha256:
        raise CheckpointError(f"cannot resume {run.path}: it was trained on the latents of "
                              f"another autoencoder (SHA-256 {run.latent.sha256[:12]}, "
                              f"{source[0]} has {sha[:12]}); pass the autoencoder it was trained "
                              "with")


def _differences(prefix: str, old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """Dotted keys where two (nested) config values differ, with both values."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(old.keys() | new.keys(), key=str)
                for d in _differences(f"{prefix}.{k}", old.get(k), new.get(k))]
    return [] if old == new else [(prefix, old, new)]


def build_callbacks(nodes: Any, context: dict[str, Any]) -> list[L.Callback]:
    """The ``callbacks`` group, built by one loop: each entry's ``sampler`` node is built
    first, ``context`` (run_dir, console, dataset, seed) fills the arguments the callback
    takes; entries set to null, and factories that return None (off), are skipped."""
    built: list[L.Callback] = []
    for name, node in (plain(nodes) or {}).items():
        if node is None:
            continue
        node = dict(node)
        extra = {"sampler": build("sampler", node.pop("sampler"))} if "sampler" in node else {}
        target = resolve_target("callbacks", str(node.get("_target_")))
        takes = inspect.signature(target).parameters
        extra |= {k: v for k, v in context.items() if k in takes and k not in node}
        callback = build("callbacks", node, source=f"callbacks.{name}",
                         where=f"callbacks.{name}", **extra)
        if callback is not None:
            built.append(callback)
    return built


def _callbacks(cfg: DictConfig, run_dir: Path) -> list[L.Callback]:
    context = {"run_dir": run_dir, "console": console, "seed": int(cfg.seed),
               "dataset": plain(cfg.dataset)}
    every = cfg.get("progress_every_s")
    progress = StepProgress(console, every_s=float(30 if every is None else every),
                            every_n_steps=cfg.get("progress_every_n_steps"))
    return [*build_callbacks(cfg.callbacks, context), Throughput(), progress,
            LastStepMetrics(console), DivergenceGuard()]


def _manual_optimization(trainer_kwargs: dict[str, Any]) -> None:
    """A module that steps its own optimizers (the autoencoder with a discriminator): Lightning
    cannot clip or accumulate for it."""
    if int(trainer_kwargs.get("accumulate_grad_batches") or 1) > 1:
        raise DiffcliError("module.disc_start (a discriminator) steps two optimizers itself: "
                           "set trainer.accumulate_grad_batches=1")
    if trainer_kwargs.pop("gradient_clip_val", None):
        console.print("[yellow]note[/]: trainer.gradient_clip_val is not applied with a "
                      "discriminator (module.disc_start): the module steps its own optimizers")


def _trainer(cfg: DictConfig, run_dir: Path, stop: GracefulStop, reads: CheckpointReads,
             manual: bool = False) -> L.Trainer:
    trainer_kwargs = lightning_arguments(OmegaConf.to_container(cfg.trainer, resolve=True))
    if manual:
        _manual_optimization(trainer_kwargs)
    on_cpu = trains_on_cpu(str(trainer_kwargs.get("accelerator") or "auto"))
    asked = not HydraConfig.initialized() or any(  # a group's default, or the user's?
        o.lstrip("+").startswith("trainer.precision=") for o in _overrides())
    trainer_kwargs["precision"], note = train_precision(
        trainer_kwargs.get("precision") or "32", on_cpu, on_cpu and cpu_has_bf16(), asked)
    if note and rank_name() is None:
        console.print(f"[yellow]note[/]: {note}")
    for quiet in ("enable_model_summary", "enable_progress_bar"):  # ours: StepProgress, _announce
        if trainer_kwargs.get(quiet) is None:
            trainer_kwargs[quiet] = False
    smoke = bool(trainer_kwargs.get("fast_dev_run"))  # Lightning logs nothing: no wandb run
    logger = build("logger", cfg.logger) if cfg.logger and not smoke else False
    watch_ranks()
    try:
        return L.Trainer(
            **trainer_kwargs,
            logger=logger,
            callbacks=[*_callbacks(cfg, run_dir), stop],
            plugins=[AtomicCheckpointIO(read=lambda p: reads.load(p).raw), *_cluster()],
            default_root_dir=run_dir,
        )
    except (ValueError, TypeError, RuntimeError, MisconfigurationException) as e:
        raise DiffcliError(f"trainer: {' '.join(str(e).split())}") from None


def _cluster() -> list[Any]:
    """Lightning's SLURM environment without its auto-requeue: its handler saves in the middle
    of a step from inside the signal handler and keeps training; :class:`GracefulStop` stops at
    a step boundary instead, and :func:`train` saves and requeues."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def requeued_checkpoint(run_dir: Path, job: SlurmJob | None) -> Path | None:
    """In a requeued SLURM job, the run's own last.ckpt (it continues where it stopped)."""
    last = run_dir / "checkpoints" / LAST
    return last if job is not None and job.requeued and last.is_file() else None


def train(cfg: DictConfig, reads: CheckpointReads | None = None) -> Path | None:
    """Train a diffusion model as configured; returns the path of the final checkpoint (None
    for a smoke run, ``trainer.fast_dev_run``, which saves none: :func:`smoke_run`).

    The run folder is this run's alone (:mod:`diffcli.runs`). SIGTERM / SIGINT /
    SIGUSR1 finish the current step, save ``last.ckpt`` and exit 128 + the signal's number
    (:class:`~diffcli.errors.Interrupted`); a second one exits at once. In a SLURM job, USR1
    and TERM (``requeue_signals``) also requeue the job, which continues in the same folder.
    ``reads``: the checkpoints the command's check read (each file is read once).
    """
    _quiet_lightning()
    clock = RunClock()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    job = slurm_job()
    # DDP ranks started by Lightning, or SLURM tasks after the first
    worker = int(os.environ.get("LOCAL_RANK", "0")) > 0 or (job is not None and job.rank > 0)
    resume = resume_path(cfg, here=run_dir, say=not worker) or requeued_checkpoint(run_dir, job)
    if not worker:
        check_run_dir(run_dir, resume)
    with contextlib.nullcontext() if worker else RunLock(run_dir), GracefulStop() as stop:
        return _fit(cfg, run_dir, resume, stop, clock, reads or CheckpointReads())


def _continue_logs(trainer: L.Trainer, run_dir: Path, resume: Path | None, start: int) -> None:
    """A run continued in its own folder appends to its CSV log: rows logged after the
    checkpoint it continues from are dropped (they will be logged again)."""
    if resume is None or run_dir.resolve() not in resume.resolve().parents:
        return
    for lg in trainer.loggers:
        if isinstance(lg, RunCSVLogger) and trainer.is_global_zero:
            trim_metrics(Path(lg.log_dir) / "metrics.csv", start)


def _fit(cfg: DictConfig, run_dir: Path, resume: Path | None, stop: GracefulStop,
         clock: RunClock, reads: CheckpointReads) -> Path | None:
    start = check_resumable(resume, cfg, reads.load) if resume else 0
    L.seed_everything(cfg.seed + start, verbose=False)  # a resumed run draws fresh noise
    task = task_named(cfg.get("task"))
    dm = build_datamodule(cfg.dataset, download_ok=True,
                          captions=bool(cfg.get("text_encoder")) and task.takes_text)
    space = latent_space(cfg, dm, reads.load(resume) if resume else None, reads.autoencoder) \
        if task.takes_latent else None
    module = build_module(cfg, dm, space)
    if space is not None:
        dm = space.datamodule
    dm = reflow.reflow_data(cfg, dm, module, reads.load, resumed=resume is not None)
    trainer = _trainer(cfg, run_dir, stop, reads, manual=not module.automatic_optimization)
    if trainer.world_size == 1 and hasattr(dm, "order") and hasattr(module, "step_seed"):
        # one process: the data order and each step's randomness are functions of (seed,
        # step), so a resume continues exactly (DDP keeps its DistributedSampler and streams)
        dm.order = (int(cfg.seed), start * trainer.accumulate_grad_batches)
        module.step_seed = int(cfg.seed)
    if trainer.is_global_zero:
        _announce(cfg, dm, module, trainer, run_dir, resume, start)
        for lg in trainer.loggers:
            lg.log_hyperparams(module.run_config)
    if resume:
        remove_stale_temporaries(resume.parent)
        _continue_logs(trainer, run_dir, resume, start)
    note_short_run(cfg, trainer, dm, start, console)  # rank 0: warm-up, intervals vs the run
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    except BaseException as e:  # end the other ranks (or defer to the one that failed)
        peer_failure = not isinstance(e, DiffcliError)  # e.g. "connection closed by peer"
        stop_other_ranks(getattr(trainer.strategy.launcher, "procs", []),
                         wait_s=PEER_EXIT_WAIT_S if peer_failure else 0.0)
        raise
    finally:
        finish_loggers(trainer.loggers)
    smoke = smoke_run(cfg.trainer.get("fast_dev_run")) if trainer.fast_dev_run else None
    last = run_dir / "checkpoints" / LAST
    if smoke is None:  # a smoke run saves nothing that could be taken for a run
        trainer.save_checkpoint(last)
    if trainer.is_global_zero:
        _report(cfg, dm, module)
    _end_process_group()  # every rank, before any prints "done" and exits
    if stop.signum is not None:
        _stopped(cfg, trainer, run_dir, last, clock, stop.signum, smoke)
    if trainer.is_global_zero and smoke is not None:
        steps = trainer.global_step - start
        console.print(f"[green]done[/]: {smoke}: {steps} step{'s' if steps != 1 else ''}, "
                      "nothing saved; drop trainer.fast_dev_run to train")
    elif trainer.is_global_zero:
        write_result(run_dir, trainer, last, clock, "done", _overrides())
        console.print(f"[green]done[/]: {trainer.global_step} steps; checkpoint {last}\n"
                      f"next: {_next_step(module, last)}")
    return None if smoke else last


def smoke_run(value: object) -> str:
    """"smoke run (trainer.fast_dev_run=true)": how a run of Lightning's ``fast_dev_run`` (a
    smoke test of N batches: no checkpoint, no logs, no ``result.json``) names itself."""
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    return f"smoke run (trainer.fast_dev_run={shown})"


def _report(cfg: DictConfig, dm: Any, module: L.LightningModule) -> None:
    """What a finished classifier or autoencoder run measured (accuracy, reconstruction)."""
    if isinstance(module, ClassifierModule) and module.eval_images:
        report_accuracy(cfg, dm, module)
    if isinstance(module, AutoencoderModule) and module.eval_batch is not None:
        metrics = module.reconstruction_metrics()
        console.print(f"reconstruction of {len(module.eval_batch)} images ({module.eval_source}):"
                      f" PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}")


def _stopped(cfg: DictConfig, trainer: L.Trainer, run_dir: Path, last: Path, clock: RunClock,
             signum: int, smoke: str | None) -> None:
    """A run stopped by a signal: requeued (SLURM) or not, its result written; raises
    :class:`~diffcli.errors.Interrupted`. A smoke run saved nothing and is not requeued."""
    name = signal.Signals(signum).name
    if smoke is not None:
        raise Interrupted(f"{name} at step {trainer.global_step}: {smoke}, nothing saved",
                          signum)
    requeued = _requeue(cfg, signum) if trainer.is_global_zero else None
    if trainer.is_global_zero:
        write_result(run_dir, trainer, last, clock, "requeued" if requeued and
                     requeued.startswith("requeued") else "interrupted", _overrides())
    after = requeued or (f"continue with `diffcli train resume=auto` (or "
                         f"ckpt_path={last})")
    raise Interrupted(f"{name} at step {trainer.global_step}: saved {last}; {after}", signum)


def _next_step(module: L.LightningModule, last: Path) -> str:
    """What to do with a finished run of ``module``'s task."""
    if isinstance(module, ClassifierModule):
        return (f"[bold]diffcli sample classifier={last}[/] (classifier guidance of the newest "
                "diffusion run)")
    if isinstance(module, AutoencoderModule):
        return (f"[bold]diffcli train latent={last}[/] (latent diffusion), or [bold]diffcli "
                f"sample ckpt={last}[/] (reconstructions)")
    return "[bold]diffcli sample[/] (uses this run)"


def _overrides() -> list[str]:
    """The command line's overrides of this job (for ``result.json``)."""
    if not HydraConfig.initialized():
        return []
    return [str(o) for o in HydraConfig.get().overrides.task]


def _requeue(cfg: DictConfig, signum: int) -> str | None:
    """In a SLURM job stopped by one of ``requeue_signals`` (USR1, TERM): requeue it; what
    happened, in words. None outside SLURM or for other signals."""
    job = slurm_job()
    if job is None or signal_name(signal.Signals(signum).name) not in \
            {signal_name(s) for s in cfg.get("requeue_signals") or []}:
        return None
    return requeue(job)


def _end_process_group() -> None:
    """Tear the DDP process group down on every rank (a rank exiting while another still
    waits left processes hanging after "done")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _announce(cfg: DictConfig, dm: Any, module: DiffusionModule, trainer: L.Trainer,
              run_dir: Path, resume: Path | None, start: int) -> None:
    """The start summary (:mod:`diffcli.workflows.start_summary`), rank 0 only; the console
    log copies it into ``cli.log``."""
    world = trainer.world_size
    task = task_named(cfg.get("task"))
    schedule = getattr(module, "schedule", None)
    latent = getattr(module, "latent_shape", None)
    facts = StartFacts(
        run_dir=run_dir, data_shape=tuple(dm.data_shape), num_samples=dm.num_samples,
        per_device=dm.batch_size, world=world, accumulate=trainer.accumulate_grad_batches,
        precision=str(trainer.precision),
        device=type(trainer.accelerator).__name__.removesuffix("Accelerator").lower(),
        timesteps=schedule.num_timesteps if schedule is not None else None,
        latents=tuple(latent) if latent else None,
        encodes_to=tuple(module.net.latent_shape) if task.encodes else None)
    choices = dict(HydraConfig.get().runtime.choices) if HydraConfig.initialized() else {}
    for line in start_lines(choices, OmegaConf.to_container(cfg, resolve=True), module.net,
                            task, facts):
        console.print(line, crop=False, highlight=False)
    if resume:
        console.print(f"resuming from step {start} of {resume}")
    cores = os.cpu_count() or 1
    if facts.device == "cpu" and world > cores:
        console.print(f"[yellow]note[/]: {world} processes on {cores} CPU cores share them: "
                      "expect no speed-up (use trainer.devices <= the core count)")
