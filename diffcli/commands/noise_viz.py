"""``diffcli noise-viz``: pictures of the forward process, the schedules and a run's reverse
process.

The drawing itself is :mod:`diffcli.workflows.noise_pictures`; this module declares the command,
its keys, and its checks (made before Hydra acts; a checkpoint is read there, once).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffcli.commands import Command
from diffcli.workflows.schemas import COMMON_SAMPLING, GUIDANCE, Key, UsageError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from diffcli.checkpoint import LoadedRun

KEYS: dict[str, Key] = {
    **COMMON_SAMPLING,
    **GUIDANCE,
    "guidance": Key(float | int | None, "classifier-free guidance scale w of the guided "
                    "reverse process", ge=0),
    "schedules": Key(list | str, "rows: names of conf/schedule options"),
    "num_timesteps": Key(int, "T of every schedule drawn", ge=2),
    "timesteps": Key(list | int | None, "columns (0..T-1)"),
    "sigmas": Key(list | float | int | None, "columns of objective=edm|flow (or a run trained "
                  "with one): noise levels; null: 0, the training quantiles, the lattice's top"),
    "image": Key(str | list | None, "png/jpg file(s) instead of dataset images"),
    "image_size": Key(int, "images are resized to this", ge=1, le=4096),
    "num_images": Key(int, "images noised / reverse samples drawn", ge=1, le=64),
    "indices": Key(list | int | None, "which dataset images"),
    "seed": Key(int, "seeds the noise and the samples", ge=0),
    "gif": Key(bool, "also write GIFs"),
    "gif_frames": Key(int, "frames of forward.gif", ge=2, le=1000),
    "reverse": Key(bool, "draw the newest run's reverse process"),
    "reverse_columns": Key(int, "sampler steps shown in reverse.png", ge=1),
}


def check(cfg: DictConfig) -> LoadedRun | None:
    """With ``ckpt=`` or ``reverse=true``: the run's checkpoint read once, and the sampler and
    guidance keys checked against it; ``objective=`` (which draws an objective without a run)
    refused beside it."""
    from diffcli.checks import check_sampling, run_to_check
    from diffcli.workflows.draw_samples import guidance_keys

    run = run_to_check(cfg, wanted=bool(cfg.get("reverse")))
    if run is not None:
        if cfg.get("objective") is not None:
            raise UsageError(f"objective= draws an objective without a trained run; {run.path} "
                             f"was trained with objective={run.objective().name}, which noise-viz "
                             "draws: drop objective=")
        check_sampling(cfg, run, [guidance_keys(cfg)])
    return run


def run(cfg: DictConfig, checked: LoadedRun | None) -> Path:
    """Draw (:func:`diffcli.workflows.noise_pictures.noise_viz`) with the checkpoint ``check``
    read; the schedules drawn are the options of the shipped ``conf/schedule/``."""
    from diffcli.components import conf_dir
    from diffcli.workflows.noise_pictures import noise_viz

    return noise_viz(cfg, conf_dir(), checked)


COMMAND = Command(
    name="noise-viz", config="noise_viz", order=4,
    help="Pictures that explain diffusion: images noised under each schedule, or with "
         "objective=edm|flow at that objective's noise levels (forward.png), the schedules' "
         "curves (schedules.png), every objective's training and sampling noise levels "
         "(noise-levels.png), and with ckpt=... or reverse=true a sampler's x_t and x0 "
         "estimates (reverse.png); gif=true adds GIFs. Writes "
         "outputs/noise-viz/<date>_<time>/, or <run>/viz/ with a checkpoint.",
    example="diffcli noise-viz schedules=[linear,cosine] timesteps=[0,250,500,999] gif=true",
    check=check, run=run, keys=KEYS, writes_runs_root=True,
)
