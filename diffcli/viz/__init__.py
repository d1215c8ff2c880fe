"""Pictures that explain diffusion: forward-process grids, schedule curves, reverse trajectories.

Everything here takes tensors and plain arguments (no config objects); ``diffcli noise-viz``
(:mod:`diffcli.workflows.noise_pictures`) is the glue that reads the config and calls these.

* :func:`forward_grid` - x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for every schedule,
  image and timestep, from ONE eps per image (Ho et al. 2020, eq. 4).
* :func:`plot_forward_grid`, :func:`plot_schedules`, :func:`plot_reverse` - labelled matplotlib
  figures (Agg backend) saved as PNG.
* :func:`sigma_grid` - x0 noised to given noise levels sigma (any objective: EDM, flow, the
  DDPM chain); :func:`plot_noise_levels` - objectives compared over ln sigma (training density,
  sampler's steps).
* :func:`forward_frames`, :func:`grid_frames`, :func:`reverse_frames`, :func:`save_gif` -
  animated GIFs with PIL.
"""

from __future__ import annotations

from diffcli.viz.animate import forward_frames, grid_frames, reverse_frames, save_gif
from diffcli.viz.forward import evenly_spaced, forward_grid, sigma_grid
from diffcli.viz.noise_levels import LevelCurve, plot_noise_levels
from diffcli.viz.plots import plot_forward_grid, plot_reverse, plot_schedules, to_display

__all__ = [
    "LevelCurve", "evenly_spaced", "forward_frames", "forward_grid", "grid_frames",
    "plot_forward_grid", "plot_noise_levels", "plot_reverse", "plot_schedules",
    "reverse_frames", "save_gif", "sigma_grid", "to_display",
]
