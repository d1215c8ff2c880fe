"""``diffcli sample``: draw samples from a trained run (an autoencoder: reconstructions).

The sampling itself is :mod:`diffcli.workflows.draw_samples`; this module declares the command, its
keys, and its checks (made before Hydra acts; the checkpoint is read there, once).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffcli.commands import Command
from diffcli.errors import DiffcliError
from diffcli.workflows.schemas import COMMON_SAMPLING, GUIDANCE, SEEDS, Key, UsageError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from diffcli.checkpoint import LoadedRun

KEYS: dict[str, Key] = {
    **COMMON_SAMPLING,
    **GUIDANCE,
    "guidance": Key(float | int | None, "classifier-free guidance scale w: 0 unconditional, "
                    "1 conditional (the default for a conditional model), >1 guided", ge=0),
    "n": Key(int | None, "how many samples (default 64 images or 2000 points; with classes, "
             "rounded up to a multiple of them)", ge=1),
    "batch_size": Key(int, "samples per network batch", ge=1),
    "seed": Key(int, "sample i uses seed + i", ge=0, le=2**63 - 1),
    "seeds": SEEDS,
    "clip_denoised": Key(bool | None, "alias of sampler.clip_denoised; null: images only"),
    "precision": Key(str | int, "32 | bf16 (CUDA only)", choices=("32", "bf16")),
    "compile": Key(bool, "torch.compile the network"),
    "overwrite": Key(bool, "replace <sampler>-<steps>/ instead of writing _2, _3, ..."),
    "trajectory": Key(int, "save x_t and x0 at every step for this many samples", ge=0),
}


def check(cfg: DictConfig) -> LoadedRun | None:
    """The seeds, then the run's checkpoint (``ckpt=`` or the newest) read once and the
    sampler and guidance keys checked against it (with enough samples for the classes); an
    autoencoder's reconstructions check their own keys when they run."""
    from diffcli.checks import check_sampling, run_to_check
    from diffcli.workflows.draw_samples import guidance_keys, parse_seeds

    try:
        parse_seeds(cfg.seeds, int(cfg.n or 1), int(cfg.seed))
    except DiffcliError as e:
        raise UsageError(str(e)) from None
    run = run_to_check(cfg)
    if run is not None and not run.kind.encodes:
        n = int(cfg.n or (64 if run.data_info().kind == "image" else 2000))
        check_sampling(cfg, run, [guidance_keys(cfg)],
                       samples=len(parse_seeds(cfg.seeds, n, int(cfg.seed))))
    return run


def run(cfg: DictConfig, checked: LoadedRun | None) -> Path:
    """Sample (:func:`diffcli.workflows.draw_samples.sample`) from the checkpoint ``check`` read."""
    from diffcli.workflows.draw_samples import sample

    return sample(cfg, checked)


COMMAND = Command(
    name="sample", config="sample", order=1,
    help="Sample from a trained run (the newest under outputs/ unless ckpt=...); writes "
         "<run>/samples/<sampler>-<steps>/.",
    example="diffcli sample sampler=ddim steps=100 n=64 seed=0",
    check=check, run=run, keys=KEYS,
)
