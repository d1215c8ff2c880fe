"""Objectives side by side on one axis, ln sigma: where each trains and where its sampler steps."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from diffcli.viz.plots import DPI, pyplot, save_figure

LOG_SIGMA_RANGE = (-7.5, 7.5)  # sigma from about 5.5e-4 to 1800, widened to every step drawn


def log_sigma_span(steps: Iterable[Sequence[float]]) -> tuple[float, float]:
    """The ln sigma range of the panels: :data:`LOG_SIGMA_RANGE`, widened to show every
    nonzero noise level of ``steps`` (each a sampler's sigmas) with a margin of 0.5."""
    logs = [math.log(s) for row in steps for s in row if s > 0]
    lo, hi = LOG_SIGMA_RANGE
    return min([lo, *(x - 0.5 for x in logs)]), max([hi, *(x + 0.5 for x in logs)])


@dataclass(frozen=True)
class LevelCurve:
    """One objective's noise levels.

    ``log_sigma`` (M,) points and ``density`` (M,) p(ln sigma) there, or, with ``stairs``, the
    M + 1 cell edges of a piecewise-constant density (the DDPM chain's timesteps). ``steps``:
    the N noise levels sigma > 0 its sampler evaluates the network at. ``label`` names it in
    the legend, ``name`` in the sampler's panel."""

    label: str
    name: str
    log_sigma: Tensor
    density: Tensor
    steps: Sequence[float]
    stairs: bool = False


def plot_noise_levels(curves: Sequence[LevelCurve], path: str | Path, sampler: str,
                      title: str | None = None) -> Path:
    """Save two panels over ln sigma (log-SNR = -2 ln sigma on the top axis, as Kingma & Gao
    2023, Fig. 2, compare objectives): the density of training noise levels of each objective,
    and below it, one row each, the noise levels the sampler ``sampler`` evaluates the network
    at (the last step to sigma = 0 not drawn)."""
    plt = pyplot()
    n = len(curves)
    fig, (top, bottom) = plt.subplots(
        2, 1, sharex=True, dpi=DPI, layout="constrained",
        figsize=(11.5, 5.2 + 0.3 * n + (0.3 if title else 0)),
        gridspec_kw={"height_ratios": [3.2, 0.8 + 0.3 * n]})
    for i, curve in enumerate(curves):
        colour, x, p = f"C{i}", curve.log_sigma.numpy(), curve.density.numpy()
        if curve.stairs:
            top.stairs(p, x, color=colour, lw=1.6, label=curve.label)
        else:
            top.plot(x, p, color=colour, lw=1.8, ls="--" if i % 2 else "-", label=curve.label)
        steps = [math.log(s) for s in curve.steps if s > 0]
        bottom.plot(steps, [n - 1 - i] * len(steps), "|", color=colour, ms=11, mew=1.4)
    top.set_xlim(*log_sigma_span(c.steps for c in curves))
    top.set_ylim(bottom=0)
    top.set_ylabel(r"training density $p(\ln\sigma)$", fontsize=10)
    top.set_title(r"where each objective trains: its law of noise levels $\sigma$", fontsize=11)
    snr = top.secondary_xaxis("top", functions=(lambda x: -2 * x, lambda y: -y / 2))
    snr.set_xlabel(r"log-SNR $= -2 \ln\sigma$ (high noise on the right)", fontsize=10)
    top.legend(fontsize=8.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    top.grid(alpha=0.3)
    bottom.set_yticks(range(n), [c.name for c in reversed(curves)], fontsize=8.5)
    bottom.set_ylim(-0.6, n - 0.4)
    bottom.set_title(f"where it samples: the noise levels sampler {sampler} evaluates the "
                     "network at", fontsize=11)
    bottom.set_xlabel(r"$\ln\sigma$, $\sigma$ = the noise level of $x_t / \sqrt{\bar\alpha_t}$ "
                      "(Karras et al. 2022, Sec. 2)", fontsize=10)
    bottom.grid(alpha=0.3, axis="x")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)
