"""The discrete DDPM chain as an objective (``objective=ddpm``; the default is ``flow``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class DDPM:
    """The discrete chain of T timesteps (Ho et al. 2020; Nichol & Dhariwal 2021): the forward
    process, the target and the weighting are the ``schedule``, ``module.prediction`` (eps, x0
    or v), ``module.min_snr_gamma`` and ``loss`` (simple, hybrid, vlb) settings, unchanged. It
    has no settings of its own; the network sees the timestep index t."""

    name: ClassVar[str] = "ddpm"
    continuous: ClassVar[bool] = False
