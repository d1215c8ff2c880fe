"""Training objectives beyond the discrete chain, as pure math (the ``objective`` config group).

* :class:`~diffcli.diffusion.objectives.discrete.DDPM`: the discrete chain of Ho et al. (2020) -
  the ``schedule``, ``loss`` and ``module.prediction`` settings define it, as before;
* :class:`~diffcli.diffusion.objectives.edm.EDM`: Karras et al. (2022)'s preconditioned
  denoiser, log-normal noise levels, lambda(sigma) weighting; EDM2's learned uncertainty
  weighting (Karras et al. 2024, eq. 21) as an option;
* :class:`~diffcli.diffusion.objectives.flow.Flow`: flow matching (Lipman et al. 2023) /
  rectified flow (Liu et al. 2023) with SD3's logit-normal t and shift (Esser et al. 2024), on
  the linear, GVP or VP interpolant (Ma et al. 2024).

The continuous ones (:class:`~diffcli.diffusion.objectives.continuous.Continuous`) all map the
network onto one denoiser D(x; sigma) of the variance-exploding noise level, so every sampler, grid,
guidance and likelihood of :mod:`diffcli.diffusion` runs on them unchanged.
"""

from collections.abc import Mapping
from typing import Any

from diffcli.diffusion.objectives.continuous import (
    Continuous,
    check_combination,
    for_data,
    objective_loss,
)
from diffcli.diffusion.objectives.discrete import DDPM
from diffcli.diffusion.objectives.edm import EDM
from diffcli.diffusion.objectives.flow import Flow

Objective = DDPM | EDM | Flow
CHAIN_TARGET = f"{DDPM.__module__}.{DDPM.__qualname__}"  # the chain's config node's _target_


def is_chain(node: Mapping[str, Any] | None) -> bool:
    """Whether a config's ``objective`` node is the discrete DDPM chain (None or empty: a run
    from before objectives, which trained the chain)."""
    return not node or str(node.get("_target_", "")) == CHAIN_TARGET

__all__ = ["CHAIN_TARGET", "DDPM", "EDM", "Continuous", "Flow", "Objective", "check_combination",
           "for_data", "is_chain", "objective_loss"]
