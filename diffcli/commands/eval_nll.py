"""``diffcli eval-nll``: negative log-likelihood (bits/dim) of a run's data.

The evaluation itself is :mod:`diffcli.workflows.nll_eval`; this module declares the command,
its keys, and its checks (made before Hydra acts; the checkpoint is read there, once).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from diffcli.commands import Command
from diffcli.errors import DiffcliError
from diffcli.workflows.schemas import COMMON_SAMPLING, Key, UsageError

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from diffcli.checkpoint import LoadedRun

KEYS: dict[str, Key] = {
    **COMMON_SAMPLING,
    "steps": Key(int | None, "vlb: terms, one per geometric stratum of t; null: all T",
                 ge=1),
    "method": Key(str, "auto | vlb | ode | both", choices=("auto", "vlb", "ode", "both")),
    "n": Key(int, "items of the data evaluated", ge=1),
    "split": Key(str | None, "the run's dataset split", nonempty=True),
    "root": Key(str | None, "overrides the run's dataset.root", nonempty=True),
    "batch_size": Key(int, "items per batch", ge=1),
    "variance": Key(str, "auto | learned | beta | beta_tilde",
                    choices=("auto", "learned", "beta", "beta_tilde")),
    "decoder": Key(str, "auto | discrete | continuous",
                   choices=("auto", "discrete", "continuous")),
    "rtol": Key(float, "the ODE solver's relative tolerance", ge=1e-12, le=1),
    "atol": Key(float, "the ODE solver's absolute tolerance", ge=1e-12, le=1),
    "probes": Key(int, "Hutchinson probes per item", ge=1),
    "seed": Key(int, "noise of the terms, dequantization and probes", ge=0, le=2**63 - 1),
    "out": Key(str | None, "the JSON file", nonempty=True),
    "overwrite": Key(bool, "replace an earlier result file instead of writing <name>_2.json"),
}


def check(cfg: DictConfig) -> LoadedRun | None:
    """The run's checkpoint read once; the decoder and variance against it (exit 2)."""
    from diffcli.api import resolve_options
    from diffcli.checks import run_to_check
    from diffcli.restore import nll_method, require_diffusion

    run = run_to_check(cfg)
    if run is None:
        return None
    require_diffusion(run)
    try:
        nll_method(str(cfg.method), run)
        kind = "latent" if run.latent is not None else run.data_info().kind
        resolve_options(str(cfg.decoder), str(cfg.variance), kind, run.learned_variance,
                        run.path)
    except DiffcliError as e:
        raise UsageError(str(e)) from None
    return run


def run(cfg: DictConfig, checked: LoadedRun | None) -> Path:
    """Evaluate (:func:`diffcli.workflows.nll_eval.eval_nll`) with the checkpoint ``check``
    read."""
    from diffcli.workflows.nll_eval import eval_nll

    return eval_nll(cfg, checked)


COMMAND = Command(
    name="eval-nll", config="eval_nll", order=3,
    help="Negative log-likelihood (bits/dim, 95% interval) of the newest run's data (or "
         "ckpt=...; n=, split=): the variational bound over all T terms or steps= stratified "
         "ones (method=vlb, with a plot of L_t against t), or the probability-flow ODE "
         "(method=ode). Writes <run>/eval/nll-<method>-<split>-n<N>.json.",
    example="diffcli eval-nll n=1000 method=both",
    check=check, run=run, keys=KEYS, output=lambda cfg: ("eval-nll", False),
)
