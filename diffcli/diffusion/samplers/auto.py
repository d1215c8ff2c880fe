"""``sampler=auto``: the measured best sampler, grid and order for a number of steps.

The choice is data, not code: :data:`TABLE` (``auto_table.yaml`` beside this module) lists, for
each objective (``ddpm``: the DDPM chain, ``edm``, ``flow``) and each number of network
evaluations the benchmarks ranked (NFE 5, 8, 10, 15, 20, 30, 50), the configuration to run: a
sampler of this package with one network evaluation per step and its options (grid, order,
``lower_order_final``, variant). ``benchmarks/auto_pick.py`` writes it from two yardsticks:
MMD^2 to the exact ODE solution of a known 2-D mixture (``benchmarks/sampler_nfe.py``) and, at
NFE 5, 10 and 20, LeNet-FID of MNIST models trained with each objective
(``benchmarks/lenet_fid.py``, ``benchmarks/objectives_mnist.py``): where the trained model
measured an NFE, the lowest MMD^2 among the configurations within 5% of its best LeNet-FID,
elsewhere the lowest MMD^2.

For ``steps`` = N the row of the largest ranked NFE <= N is taken (the smallest ranked one below
it), with ``steps`` = N: every candidate spends one evaluation per step, so ``steps`` is the NFE.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from torch import Tensor

from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    GridKind,
    Sampler,
    StepCallback,
    check,
)
from diffcli.diffusion.samplers.ddim import DDIM
from diffcli.diffusion.samplers.dpm_solver import DPMSolverPP2M
from diffcli.diffusion.samplers.dpm_solver_3m import DPMSolverPP3M
from diffcli.diffusion.samplers.dpm_solver_sde import DPMSolverPP2MSDE
from diffcli.diffusion.samplers.unipc import UniPC

TABLE = Path(__file__).with_name("auto_table.yaml")
# the samplers auto may pick: one network evaluation per step, so steps = NFE
CANDIDATES: dict[str, type[Sampler]] = {
    "ddim": DDIM, "dpmpp_2m": DPMSolverPP2M, "dpmpp_3m": DPMSolverPP3M,
    "dpmpp_2m_sde": DPMSolverPP2MSDE, "unipc": UniPC,
}
OBJECTIVES = ("ddpm", "edm", "flow")


@dataclass(frozen=True)
class Choice:
    """One row of the table: at ``nfe`` evaluations, ``sampler`` with ``options``."""

    nfe: int
    sampler: str
    options: Mapping[str, Any]

    def build(self, steps: int, **extra: Any) -> Sampler:
        """The sampler of this row with ``steps`` steps (and ``extra`` options, e.g. clipping)."""
        return CANDIDATES[self.sampler](**{**self.options, **extra, "steps": steps})

    def describe(self, steps: int) -> str:
        """``dpmpp_2m_sde, logsnr, 5 steps`` (and any option besides the grid)."""
        other = [f"{k}={v}" for k, v in self.options.items() if k != "grid"]
        grid = self.options.get("grid", "its default grid")
        return ", ".join([self.sampler, str(grid), *other,
                          f"{steps} step" + ("s" if steps != 1 else "")])


def read_table(path: Path = TABLE) -> dict[str, list[Choice]]:
    """The table at ``path``: objective -> its rows in increasing NFE, every sampler one of
    :data:`CANDIDATES` (checked here, so a bad table fails in one line)."""
    data = yaml.safe_load(path.read_text()) or {}
    table: dict[str, list[Choice]] = {}
    for objective, rows in (data.get("objectives") or {}).items():
        choices = [Choice(int(r["nfe"]), str(r["sampler"]), dict(r.get("options") or {}))
                   for r in rows]
        for c in choices:
            check(c.sampler in CANDIDATES, f"{path}: {objective} at NFE {c.nfe} names sampler "
                                           f"{c.sampler!r}; auto picks one of "
                                           f"{', '.join(CANDIDATES)}")
        table[objective] = sorted(choices, key=lambda c: c.nfe)
    check(bool(table), f"{path} lists no objective: regenerate it with "
                       "python -m benchmarks run sampler_nfe")
    return table


def choose(table: Mapping[str, list[Choice]], objective: str, steps: int) -> Choice:
    """The row for ``steps`` evaluations on ``objective``: the largest ranked NFE <= steps, or
    the smallest ranked one when steps is below all of them."""
    check(objective in table, f"sampler=auto has no measurements for objective={objective} "
                              f"(it has {', '.join(table)}); pick a sampler by name")
    rows = table[objective]
    fitting = [c for c in rows if c.nfe <= steps]
    return fitting[-1] if fitting else rows[0]


def objective_of(model: Denoiser) -> str:
    """The objective a denoiser's network was trained with: ``ddpm`` for the DDPM chain, else
    the continuous objective's name (``edm``, ``flow``)."""
    return "ddpm" if model.objective is None else str(getattr(model.objective, "name", "ddpm"))


@dataclass(frozen=True)
class Auto(Sampler):
    """The measured best sampler for ``steps`` (:func:`choose` in :data:`TABLE`, or the table
    at ``table``). :meth:`pick` gives the concrete sampler for an objective; :meth:`sample`
    picks by the model's objective and runs it. ``clip_denoised`` and ``dynamic_threshold`` go
    to the sampler picked; the grid options of :class:`Sampler` are the table's, not set here.
    """

    steps: int | None = 20
    table: str | None = None  # a table file of the same format; null: the packaged one

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.steps is not None, "sampler=auto needs a number of steps (steps=N)")
        given = [k for k in ("sigma_min", "sigma_max", "custom_timesteps", "custom_sigmas")
                 if getattr(self, k) is not None]
        check(self.grid is GridKind.TRAILING and not given and self.spacing is None,
              "sampler=auto picks the grid itself; to choose one, name a sampler "
              "(e.g. sampler=dpmpp_3m sampler.grid=karras)")
        check(self.table is None or Path(self.table).is_file(),
              f"sampler.table={self.table!r} is not a file")

    def rows(self) -> dict[str, list[Choice]]:
        """The table this sampler reads."""
        return read_table(TABLE if self.table is None else Path(self.table))

    def choice(self, objective: str) -> Choice:
        """The row picked for ``objective`` at ``steps``."""
        return choose(self.rows(), objective, int(self.steps))

    def picked(self, objective: str) -> tuple[Sampler, str]:
        """The concrete sampler for ``objective`` at ``steps`` and the line that names it
        (``auto -> dpmpp_2m_sde, logsnr, 5 steps``), from one reading of the table."""
        choice = self.choice(objective)
        sampler = choice.build(int(self.steps), clip_denoised=self.clip_denoised,
                               dynamic_threshold=self.dynamic_threshold)
        return sampler, f"auto -> {choice.describe(int(self.steps))}"

    def pick(self, objective: str) -> Sampler:
        """The concrete sampler for ``objective`` at ``steps``."""
        return self.picked(objective)[0]

    def describe(self, objective: str) -> str:
        """``auto -> dpmpp_2m_sde, logsnr, 5 steps``: what :meth:`pick` gives."""
        return self.picked(objective)[1]

    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        return self.pick(objective_of(model)).sample(model, noise, generator=generator,
                                                     callback=callback)
