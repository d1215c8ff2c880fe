"""``diffcli eval-fid``: FID (and IS, KID, precision / recall) of a run or of image files.

The evaluation itself is :mod:`diffcli.workflows.fid_eval`; this module declares the command,
its keys, and its checks (made before Hydra acts; the checkpoint is read there, once).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffcli.commands import Command
from diffcli.errors import CheckpointError
from diffcli.workflows.schemas import COMMON_SAMPLING, GUIDANCE, Key

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from diffcli.checkpoint import LoadedRun

KEYS: dict[str, Key] = {
    **COMMON_SAMPLING,
    **GUIDANCE,
    "guidance": Key(float | int | list | None, "classifier-free guidance scale w, or a list "
                    "to sweep: [0,1,2,4]", ge=0),
    "classifier_scale": Key(float | int | list | None, "classifier guidance scale s, or a "
                            "list to sweep", ge=0),
    "ckpt": Key(str | list | None, "a .ckpt (or run folder), or a list of them to evaluate "
                "each (e.g. the EMA widths of `diffcli ema`); default: the newest run's"),
    "guide": Key(str | list | None, "autoguidance: a weaker run or checkpoint of the same "
                 "data (scale: guidance=), or a list of them (null: no guide) to evaluate each"),
    "samples": Key(str | None, "evaluate these images (folder or .npz)", nonempty=True),
    "n": Key(int | None, "generated images per seed set (default 50000)", ge=2),
    "repeats": Key(int, "seed sets", ge=1),
    "clip_denoised": Key(bool, "clip the predicted x0 to [-1, 1]"),
    "precision": Key(str | int, "32 | bf16 (CUDA only)", choices=("32", "bf16")),
    "ref": Key(str | None, "real images: a folder or a .npz", nonempty=True),
    "ref_split": Key(str | None, "split of the run's dataset", nonempty=True),
    "ref_root": Key(str | None, "overrides the run's dataset.root", nonempty=True),
    "ref_n": Key(int | None, "use the first ref_n reference images", ge=2),
    "metrics": Key(list, "any of fid, isc, kid, prc"),
    "extractor": Key(str, "inception-v3-compat | standin", nonempty=True),
    "weights": Key(str | None, "Inception weights file", nonempty=True),
    "download_weights": Key(bool, "fetch missing Inception weights"),
    "cache": Key(bool, "cache the reference statistics"),
    "cache_dir": Key(str | None, "where reference statistics are cached", nonempty=True),
    "out": Key(str | None, "the JSON file", nonempty=True),
    "overwrite": Key(bool, "replace an earlier result file instead of writing <name>_2.json"),
    "batch_size": Key(int, "images per sampling / feature batch", ge=1),
    "num_workers": Key(int, "DataLoader workers decoding reference images", ge=0),
}


def check(cfg: DictConfig) -> LoadedRun | dict[str | None, LoadedRun] | None:
    """Unless ``samples=`` are evaluated: the run's checkpoint read once, and the sampler and
    every scale of a guidance sweep checked against it (an autoencoder's reconstructions
    check their own keys when they run). A grid (``ckpt=[...]`` or ``guide=[...]``): each
    checkpoint read once and every point checked, by checkpoint."""
    from diffcli.workflows.fid_grid import grid_axes, point

    axes = grid_axes(cfg)
    if axes is None:
        return _check_point(cfg)
    runs: dict[str | None, LoadedRun] = {}
    for ckpt in axes[0]:
        read = None
        for guide in axes[1]:
            read = _check_point(point(cfg, ckpt, guide), read)
            if read is None:
                raise CheckpointError(f"no run to evaluate for ckpt={ckpt}")
        runs[ckpt] = read
    return runs


def _check_point(cfg: DictConfig, run: LoadedRun | None = None) -> LoadedRun | None:
    """``cfg``'s checkpoint (``run``: already read) and its sampling keys checked."""
    from diffcli.checks import check_sampling, run_to_check
    from diffcli.workflows.fid_eval import guidance_sweep

    run = run or run_to_check(cfg, wanted=not cfg.get("samples"))
    if run is not None and not run.kind.encodes:
        check_sampling(cfg, run, guidance_sweep(cfg)[1])
    return run


def run(cfg: DictConfig, checked: LoadedRun | dict[str | None, LoadedRun] | None) -> Path:
    """Evaluate (:func:`diffcli.workflows.fid_eval.eval_fid`) with the checkpoint ``check``
    read; a grid point by point (:func:`diffcli.workflows.fid_grid.eval_grid`)."""
    from diffcli.workflows.fid_eval import eval_fid
    from diffcli.workflows.fid_grid import eval_grid

    if isinstance(checked, dict):
        return eval_grid(cfg, checked, eval_fid)
    return eval_fid(cfg, checked)


COMMAND = Command(
    name="eval-fid", config="eval_fid", order=2,
    help="FID (metrics=[fid,isc,kid,prc]) of the newest run (or ckpt=...; n=50000 samples, "
         "repeats=K seed sets) or of samples=<folder|.npz>, against the run's training data or "
         "ref=<folder|.npz>; reference statistics are cached. Writes "
         "<run>/eval/fid-<sampler>-<steps>-n<N>.json (for samples=, next to them).",
    example="diffcli eval-fid sampler=ddim steps=50 n=50000 repeats=3",
    check=check, run=run, keys=KEYS, output=lambda cfg: ("eval-fid", False),
)
