"""`diffcli noise-viz`'s pictures of the continuous objectives (EDM, flow) beside the DDPM chain.

* ``noise-levels.png``: every objective over ln sigma: the density of its training noise levels
  (each DDPM schedule with uniform t, EDM's log-normal, flow's logit-normal t with shift 1 and 3,
  and the objective drawn) and the noise levels the configured sampler evaluates it at;
* ``forward.png`` / ``forward.gif`` of a continuous objective (``objective=edm|flow``, or a run
  trained with one): the images at the objective's own noise levels, as its network sees them;
* the noise levels of reverse.png's columns for such a run.

:mod:`diffcli.workflows.noise_pictures` reads the rest of the config and calls these.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from rich.console import Console
from torch import Tensor

from diffcli.components import build
from diffcli.diffusion.objectives import EDM, Continuous, Flow, for_data
from diffcli.diffusion.objectives.levels import (
    log_sigma_cdf,
    log_sigma_density,
    schedule_log_sigma_density,
    sigma_quantile,
)
from diffcli.diffusion.schedules import NoiseSchedule
from diffcli.errors import DiffcliError
from diffcli.viz import (
    LevelCurve,
    evenly_spaced,
    grid_frames,
    plot_forward_grid,
    plot_noise_levels,
    save_gif,
    sigma_grid,
)
from diffcli.viz.noise_levels import log_sigma_span

console = Console(stderr=True, soft_wrap=True)  # a log line stays one line
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)  # sigmas: null -> 0, these quantiles, the lattice's top
FLOW_SHIFTS = (1.0, 3.0)  # the flow curves of noise-levels.png (SD3: shift 3 at 1024^2)
FORMULAS = {  # each forward process, and its sigma = s(t) / alpha(t)
    "edm": r"$x = x_0 + \sigma\epsilon$",
    "linear": r"$x_t = (1 - t)\,x_0 + t\,\epsilon$, $\sigma = t / (1 - t)$",
    "gvp": r"$x_t = \cos(\pi t/2)\,x_0 + \sin(\pi t/2)\,\epsilon$, $\sigma = \tan(\pi t/2)$",
    "vp": r"$x_t = \alpha_t x_0 + \sqrt{1 - \alpha_t^2}\,\epsilon$ (the VP SDE's), "
          r"$\sigma = \sqrt{1 - \alpha_t^2} / \alpha_t$",
}
VP_SCALE = (r"drawn as the samplers see it, $(x_0 + \sigma\epsilon) / \sqrt{1 + \sigma^2}$, "
            r"the same $\epsilon$ in every column")


@dataclass
class Drawn:
    """A continuous objective whose forward process forward.png draws: ``objective=edm|flow``
    or the run's; ``sigmas``: its columns (None: its training quantiles); ``whose``: the
    title's start, e.g. "run 2024-05-01/12-00-00 (objective=flow, step 500), "; ``legend``:
    how noise-levels.png marks it ("this run", "objective=edm")."""

    objective: Continuous
    sigmas: list[float] | None
    whose: str
    legend: str


def configured_objective(node: object, image_shape: Sequence[int]) -> Continuous | None:
    """``objective=edm|flow`` of noise-viz's config as an objective (flow's shift null: from the
    images' size), or None for the DDPM chain (``objective=ddpm``) or no objective given."""
    if node is None:
        return None
    objective = for_data(build("objective", node), tuple(image_shape))
    return objective if objective.continuous else None


def drawn_objective(cfg: DictConfig, run: Drawn | None,
                    image_shape: tuple[int, ...]) -> Drawn | None:
    """What forward.png draws: ``run`` (a run's continuous objective), else
    ``objective=edm|flow``, with ``sigmas=``; None: the DDPM schedules (``sigmas=`` or
    ``timesteps=`` given for the other kind: a note that they are not used)."""
    sigmas = check_sigmas(cfg.get("sigmas"))
    drawn = dataclasses.replace(run, sigmas=sigmas) if run is not None else None
    if drawn is None and (objective := configured_objective(cfg.get("objective"),
                                                            image_shape)) is not None:
        drawn = Drawn(objective, sigmas, f"objective={objective.name}, ",
                      f"objective={objective.name}")
    if drawn is None and sigmas is not None:
        console.print("[yellow]note[/]: sigmas= are the columns of a continuous objective "
                      "(objective=edm|flow, or a run trained with one); forward.png draws the "
                      "DDPM schedules at timesteps=")
    if drawn is not None and cfg.get("timesteps") is not None:
        console.print(f"[yellow]note[/]: timesteps= are the DDPM chain's; forward.png draws "
                      f"objective={drawn.objective.name} at its noise levels (sigmas=)")
    return drawn


def check_sigmas(sigmas: object) -> list[float] | None:
    """``sigmas=``: noise levels >= 0 (columns of a continuous objective's forward.png)."""
    if sigmas is None:
        return None
    values = list(sigmas) if isinstance(sigmas, ListConfig | list | tuple) else [sigmas]
    if not values:
        raise DiffcliError("sigmas is empty; give noise levels >= 0, e.g. sigmas=[0,0.5,2,80]")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s < float("inf"):
            raise DiffcliError(f"sigma {s!r} is not a noise level: sigmas must be numbers >= 0, "
                               "e.g. sigmas=[0,0.5,2,80]")
    return [float(s) for s in values]


def short_name(objective: Continuous) -> str:
    """"EDM", "flow shift 3", "flow gvp shift 1"."""
    if isinstance(objective, Flow):
        path = "" if objective.interpolant == "linear" else f" {objective.interpolant}"
        return f"flow{path} shift {objective.shift_value:g}"
    return objective.name.upper()


def training_law(objective: Continuous) -> str:
    """The training law of noise levels in words (mathtext), for legends and titles (flow's
    shift is in its :func:`short_name`)."""
    if isinstance(objective, EDM):
        return rf"$\ln\sigma \sim N({objective.p_mean:g}, {objective.p_std:g}^2)$"
    if isinstance(objective, Flow):
        if objective.t_sampling == "uniform":
            return "uniform t"
        return f"logit-normal t ({objective.logit_mean:g}, {objective.logit_std:g})"
    return objective.name


def level_title(objective: Continuous, sigma: float, tex: bool = True) -> str:
    """A column's noise level: "σ = 0.301", "σ = 2997"; for flow also the path's t (the shift
    included), "t = 0.750", "t = 0.9997"."""
    text = (r"$\sigma$" if tex else "sigma") + " = " + (
        f"{sigma:.3g}" if sigma < 1000 else f"{sigma:.0f}")
    if isinstance(objective, Flow):
        t = float(objective.t_of_sigma(torch.tensor([sigma]))[0])
        text += "\nt = " + (f"{t:.3f}" if 0.001 <= t <= 0.999 or t == 0 else f"{t:.4g}")
    return text


def percent(q: float) -> str:
    """A fraction as "25%", "<0.1%", ">99.9%"."""
    if q < 0.001:
        return "<0.1%"
    return ">99.9%" if q > 0.999 else f"{100 * q:.3g}%"


def forward_columns(objective: Continuous, sigmas: list[float] | None) -> list[float]:
    """``sigmas``, else 0, the training law's :data:`QUANTILES` and the lattice's top (where
    sampling starts)."""
    if sigmas is not None:
        return sigmas
    quantiles = sigma_quantile(objective, torch.tensor(QUANTILES)).tolist()
    return [0.0, *quantiles, float(objective.lattice_sigmas()[-1])]


def draw_objective_forward(x0: Tensor, noise: Tensor, objective: Continuous,
                           sigmas: list[float] | None, out: Path, whose: str,
                           gif_frames: int | None) -> list[Path]:
    """forward.png of a continuous objective: per image one row at the noise levels
    :func:`forward_columns`, each cell saying its quantile in the training law;
    ``gif_frames``: also forward.gif, at that many points of the sampling lattice."""
    columns = forward_columns(objective, sigmas)
    grid = sigma_grid(x0, columns, noise)
    below = log_sigma_cdf(objective, torch.tensor(columns).clamp(min=1e-300).log()).tolist()
    labels = ["clean data" if s == 0 else f"quantile {percent(q)}"
              for s, q in zip(columns, below, strict=True)]
    what = ("0, the " + "/".join(f"{100 * q:g}" for q in QUANTILES) + "% quantiles of "
            "training, the lattice's top (sampling starts there)" if sigmas is None
            else "the noise levels of sigmas=")
    formula = FORMULAS[getattr(objective, "interpolant", "edm")]
    title = (f"{whose}forward process {formula}\n{VP_SCALE}\ncolumns: {what}\ntraining: "
             f"{short_name(objective)}, {training_law(objective)}")
    abar = (1 / (1 + torch.tensor([columns], dtype=torch.float64) ** 2))
    written = [plot_forward_grid(grid, [short_name(objective).replace(" ", "\n", 1)],
                                 list(range(len(columns))), abar, out / "forward.png",
                                 title=title,
                                 column_titles=[level_title(objective, s) for s in columns],
                                 cell_labels=labels)]
    if gif_frames:
        lattice = objective.lattice_sigmas()
        frames = [float(lattice[i]) for i in evenly_spaced(gif_frames, len(lattice))]
        captions = ["forward process  " + level_title(objective, s, tex=False).replace("\n", "  ")
                    for s in frames]
        written.append(save_gif(grid_frames(sigma_grid(x0, frames, noise),
                                            [short_name(objective)], captions),
                                out / "forward.gif"))
    return written


def reverse_levels(objective: Continuous, schedule: NoiseSchedule,
                   timesteps: Sequence[float]) -> list[str]:
    """reverse.png's column titles for a continuous run: the sigma (and flow's t) of each
    sampler step's lattice timestep."""
    abar = schedule.alpha_bar_at(torch.tensor([float(t) for t in timesteps]))
    sigma = ((1 - abar) / abar).sqrt()
    return [level_title(objective, float(s)) for s in sigma]


def reference_objectives(conf_dir: Path) -> list[Continuous]:
    """EDM and flow as shipped in ``<conf_dir>/objective`` (flow with each of
    :data:`FLOW_SHIFTS`): the continuous curves every noise-levels.png shows."""
    def load(name: str) -> Continuous:
        path = conf_dir / "objective" / f"{name}.yaml"
        return build("objective", OmegaConf.load(path), source=str(path))

    flow = load("flow")
    return [load("edm"), *(dataclasses.replace(flow, shift=s) for s in FLOW_SHIFTS)]


def _same_levels(a: Continuous, b: Continuous) -> bool:
    """Whether two objectives train and sample on the same noise levels."""
    return (type(a) is type(b) and short_name(a) == short_name(b)
            and training_law(a) == training_law(b)
            and torch.equal(a.lattice_sigmas(), b.lattice_sigmas()))


def level_curves(schedules: Sequence[NoiseSchedule], names: Sequence[str],
                 objectives: Sequence[Continuous], sampler: object, drawn: Continuous | None,
                 drawn_as: str) -> list[LevelCurve]:
    """The curves of noise-levels.png: each DDPM schedule, then each objective; ``drawn`` (the
    configured or the run's objective) is marked ``drawn_as`` in the legend, and added when it
    differs from all of them. ``sampler``: its ``sigmas(schedule)`` are the steps drawn."""
    curves = []
    for schedule, name in zip(schedules, names, strict=True):
        edges, density = schedule_log_sigma_density(schedule)
        curves.append(LevelCurve(f"DDPM {name}: uniform t, T = {schedule.num_timesteps}",
                                 f"DDPM {name}", edges, density, sampler.sigmas(schedule),
                                 stairs=True))
    objectives = list(objectives)
    if drawn is not None and not any(_same_levels(drawn, o) for o in objectives):
        objectives.append(drawn)
    steps = [sampler.sigmas(objective.lattice()) for objective in objectives]
    x = torch.linspace(*log_sigma_span([c.steps for c in curves] + steps), 801,
                       dtype=torch.float64)
    for objective, sigmas in zip(objectives, steps, strict=True):
        mark = f" ({drawn_as})" if drawn is not None and _same_levels(drawn, objective) else ""
        curves.append(LevelCurve(f"{short_name(objective)}: {training_law(objective)}{mark}",
                                 short_name(objective), x, log_sigma_density(objective, x),
                                 sigmas))
    return curves


def draw_noise_levels(cfg: DictConfig, schedules: Sequence[NoiseSchedule], names: Sequence[str],
                      conf_dir: Path, drawn: Continuous | None, drawn_as: str, out: Path) -> Path:
    """noise-levels.png: :func:`level_curves` with the configured sampler (``steps=`` applied,
    at most T steps on a DDPM schedule of T timesteps)."""
    from diffcli.restore import make_sampler, sampler_name
    from diffcli.workflows.draw_samples import sampler_choice

    steps = cfg.get("steps") if cfg.get("steps") is not None else cfg.sampler.get("steps")
    if isinstance(steps, int) and not isinstance(steps, bool):
        steps = min(steps, *(s.num_timesteps for s in schedules))
    sampler, n = make_sampler(cfg.sampler, schedules[0], steps=steps)
    curves = level_curves(schedules, names, reference_objectives(conf_dir), sampler, drawn,
                          drawn_as)
    return plot_noise_levels(curves, out / "noise-levels.png",
                             sampler=f"{sampler_name(sampler_choice(), sampler)} ({n} steps)")
