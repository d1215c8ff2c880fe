"""``diffcli ema``: the EMA of any width after training, from the run's power-EMA snapshots
(EDM2's post-hoc EMA; the work is :mod:`diffcli.workflows.ema_rebuild`)."""

from __future__ import annotations

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
    "sigma_rel": Key(float | list, "the EMA width(s) to rebuild, relative to the run's length "
                                   "(e.g. 0.07 or [0.03,0.05,0.1])"),
    "step": Key(int | None, "the training step of the EMA (default: the last snapshot's)", ge=1),
    "out": Key(str | None, "the folder for the checkpoints (default <run>/checkpoints/)",
               nonempty=True),
}


def widths(cfg: DictConfig) -> list[float]:
    """``sigma_rel=`` as a list of floats."""
    value = cfg.sigma_rel
    return [float(v) for v in (value if not isinstance(value, float | int) else [value])]


def check(cfg: DictConfig) -> LoadedRun | None:
    """The run's checkpoint read once; every width valid and the run's snapshots there, before
    anything is written."""
    from diffcli.checks import run_to_check
    from diffcli.errors import DiffcliError
    from diffcli.lit.ema import check_ema
    from diffcli.workflows.ema_rebuild import snapshots_of

    for width in widths(cfg):
        try:
            check_ema(None, width)
        except ValueError as e:
            raise DiffcliError(str(e).replace("ema_sigma_rel=", "sigma_rel=")) from None
    run = run_to_check(cfg)
    if run is not None:
        snapshots_of(run, cfg.step)
    return run


def run(cfg: DictConfig, checked: LoadedRun | None) -> list:
    """Rebuild each width (:func:`diffcli.workflows.ema_rebuild.rebuild`)."""
    from pathlib import Path

    from diffcli.runs import run_to_use
    from diffcli.workflows.ema_rebuild import rebuild

    run = run_to_use(cfg.ckpt, cfg.runs_root, checked)
    out = Path(str(cfg.out)) if cfg.out else None
    return rebuild(run, widths(cfg), cfg.step, out)


COMMAND = Command(
    name="ema", config="ema", order=6,
    help="Rebuild the EMA of any width after training (post-hoc EMA, Karras et al. 2024) from "
         "the power-EMA snapshots a run kept (train with callbacks.phema.every_n_steps=N); "
         "writes <run dir>/checkpoints/ema-<sigma_rel>-step<N>.ckpt, which sample, eval-fid "
         "and export take as ckpt=.",
    example="diffcli ema sigma_rel=0.07",
    check=check, run=run, keys=KEYS, output=lambda cfg: ("ema", True),
)
