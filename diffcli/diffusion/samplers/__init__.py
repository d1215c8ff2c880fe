"""Samplers: one interface (:class:`Sampler`), one algorithm a file."""

from diffcli.diffusion.samplers.base import Denoiser, Sampler, SamplerStep, timestep_sequence
from diffcli.diffusion.samplers.ddim import DDIM
from diffcli.diffusion.samplers.ddpm import DDPM
from diffcli.diffusion.samplers.dpm_solver import DPMSolverPP2M
from diffcli.diffusion.samplers.euler import Euler
from diffcli.diffusion.samplers.heun import Heun

__all__ = [
    "DDIM", "DDPM", "DPMSolverPP2M", "Denoiser", "Euler", "Heun", "Sampler", "SamplerStep",
    "timestep_sequence",
]
