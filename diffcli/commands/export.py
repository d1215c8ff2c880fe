"""``diffcli export``: a trained run as safetensors, a diffusers folder or ONNX.

The export itself is :mod:`diffcli.workflows.exporting` (formats in :mod:`diffcli.interop`); this
module declares the command, its keys, and its checks (made before Hydra acts; the checkpoint
is read there, once).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffcli.commands import Command
from diffcli.workflows.schemas import Key

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from diffcli.checkpoint import LoadedRun

KEYS: dict[str, Key] = {
    "ckpt": Key(str | None, "a .ckpt or run folder; default: the newest run's last.ckpt",
                nonempty=True),
    "runs_root": Key(str, "where `diffcli train` puts runs", nonempty=True),
    "format": Key(str, "safetensors | diffusers | onnx",
                  choices=("safetensors", "diffusers", "onnx")),
    "weights": Key(str, "ema | raw", choices=("ema", "raw")),
    "out": Key(str | None, "the folder to write (default <run>/export/<format>/)",
               nonempty=True),
    "overwrite": Key(bool, "replace out/ instead of writing out_2, out_3, ..."),
    "check": Key(bool, "format=onnx: compare onnxruntime with torch"),
}


def check(cfg: DictConfig) -> LoadedRun | None:
    """The run's checkpoint read once; the model fits the format, before anything is printed
    or written."""
    from diffcli.checks import group, run_to_check
    from diffcli.workflows.exporting import check_exportable

    run = run_to_check(cfg)
    if run is not None:
        check_exportable(run, str(cfg.format), group(cfg, "sampler"))
    return run


def run(cfg: DictConfig, checked: LoadedRun | None) -> Path:
    """Export (:func:`diffcli.workflows.exporting.export`) the checkpoint ``check`` read."""
    from diffcli.workflows.exporting import export

    return export(cfg, checked)


COMMAND = Command(
    name="export", config="export", order=5,
    help="Export a run (the newest unless ckpt=...) for other tools: format=safetensors "
         "(weights + JSON config, no pickle; diffcli sample ckpt=<file> loads it), "
         "format=diffusers (a DDPMPipeline folder: UNet2DModel + the run's schedule as the "
         "sampler= scheduler; rectified-flow runs with FlowMatchEulerDiscreteScheduler), "
         "format=onnx (the denoiser, checked with onnxruntime). Writes "
         "<run dir>/export/<format>/ with a model card.",
    example="diffcli export format=diffusers sampler=ddim",
    check=check, run=run, keys=KEYS, output=lambda cfg: (f"export-{cfg.get('format')}", True),
)
