"""Samplers: one interface (:class:`Sampler`), one step rule a file, any grid
(:mod:`diffcli.diffusion.grids`), one wrapped model (:class:`Denoiser`)."""

from diffcli.diffusion.denoiser import Denoiser
from diffcli.diffusion.grids import Grid, GridKind
from diffcli.diffusion.samplers.auto import Auto
from diffcli.diffusion.samplers.base import Sampler, SamplerStep, timestep_sequence
from diffcli.diffusion.samplers.ddim import DDIM
from diffcli.diffusion.samplers.ddpm import DDPM
from diffcli.diffusion.samplers.dpm_solver import DPMSolverPP2M
from diffcli.diffusion.samplers.dpm_solver_3m import DPMSolverPP3M
from diffcli.diffusion.samplers.dpm_solver_sde import DPMSolverPP2MSDE
from diffcli.diffusion.samplers.euler import Euler
from diffcli.diffusion.samplers.heun import Heun
from diffcli.diffusion.samplers.restart import Restart
from diffcli.diffusion.samplers.unipc import UniPC

__all__ = [
    "Auto", "DDIM", "DDPM", "DPMSolverPP2M", "DPMSolverPP2MSDE", "DPMSolverPP3M", "Denoiser",
    "Euler",
    "Grid", "GridKind", "Heun", "Sampler", "SamplerStep", "timestep_sequence",
    "UniPC",
    "Restart",
]
