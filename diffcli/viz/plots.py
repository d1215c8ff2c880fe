"""Labelled matplotlib figures (Agg backend, no display needed), each saved as one PNG."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffcli.diffusion.schedules import NoiseSchedule

CELL_INCHES = 1.35  # side of one image cell
DPI = 110
ABAR = r"$\bar\alpha$"


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_display(x: Tensor) -> np.ndarray:
    """An image (C, H, W), values in [-1, 1] (clipped), as float (H, W) or (H, W, 3) in [0, 1]."""
    if x.ndim != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (C, H, W) with C = 1 or 3, got {tuple(x.shape)}")
    img = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2).numpy()
    return img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)


def _show(ax: Any, x: Tensor) -> None:
    """Draw image ``x`` (C, H, W) into ``ax`` with no ticks (its labels stay usable)."""
    ax.imshow(to_display(x), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)


def format_t(t: float) -> str:
    """A timestep for a label: "250", or "12.3" for a real-valued one (Karras samplers)."""
    return str(int(t)) if float(t).is_integer() else f"{t:.1f}"


def wrap_title(title: str, width_inches: float, points: float = 11) -> str:
    """``title`` with each line broken at spaces to fit ``width_inches`` at ``points`` (about
    0.55 em a character); mathtext between $ signs is kept whole and counted at half length."""
    room = width_inches * 72 / (0.55 * points)
    lines = []
    for line in title.split("\n"):
        out, used = [], 0.0
        for word in re.findall(r"(?:\$[^$]*\$|[^\s$])+", line):
            size = len(word) - 0.5 * sum(len(m) for m in re.findall(r"\$[^$]*\$", word))
            if out and used + 1 + size > room:
                lines.append(" ".join(out))
                out, used = [], 0.0
            out.append(word)
            used += size + (1 if len(out) > 1 else 0)
        lines.append(" ".join(out))
    return "\n".join(lines)


def plot_forward_grid(grid: Tensor, names: Sequence[str], timesteps: Sequence[int],
                      alpha_bars: Tensor, path: str | Path, title: str | None = None,
                      column_titles: Sequence[str] | None = None,
                      cell_labels: Sequence[str] | None = None) -> Path:
    """Save the forward-process grid: per image a block of one row per schedule, one column per t.

    Columns are labelled with t (0-based, as in training), rows with the schedule name, and
    each cell with its abar_t, the signal fraction of q(x_t | x_0) = N(sqrt(abar_t) x0,
    (1 - abar_t) I) (Ho et al. 2020, eq. 4). Pixel values are clipped to [-1, 1] for display.

    Args:
        grid: x_t of shape (S, N, K, C, H, W), e.g. from :func:`diffcli.viz.forward_grid`.
        names: S row labels (schedule names).
        timesteps: K column timesteps.
        alpha_bars: abar_t of each schedule at each timestep, shape (S, K).
        path: the PNG to write.
        title: an optional figure title.
        column_titles: K titles instead of "t = <t>" (e.g. a continuous objective's sigma).
        cell_labels: K labels under every row's cells instead of abar_t.
    """
    s, n, k = grid.shape[:3]
    if len(names) != s or len(timesteps) != k or tuple(alpha_bars.shape) != (s, k):
        raise ValueError(f"grid {tuple(grid.shape[:3])} (S, N, K) does not match {len(names)} "
                         f"names, {len(timesteps)} timesteps, alpha_bars {tuple(alpha_bars.shape)}")
    heads = list(column_titles) if column_titles is not None else [f"t = {t}" for t in timesteps]
    if len(heads) != k or (cell_labels is not None and len(cell_labels) != k):
        raise ValueError(f"{k} columns need {k} column titles and cell labels")
    plt = pyplot()
    width = 1.2 + CELL_INCHES * k
    title = wrap_title(title, width) if title else None
    extra = 0.2 * max(h.count("\n") for h in heads)  # column titles of several lines
    fig = plt.figure(figsize=(width, (0.5 + extra + (CELL_INCHES + 0.25) * s) * n
                              + (0.4 + 0.25 * title.count("\n") if title else 0)),
                     dpi=DPI, layout="constrained")
    blocks = np.atleast_1d(fig.subfigures(n, 1))
    for i, block in enumerate(blocks):
        axes = np.asarray(block.subplots(s, k, squeeze=False))
        if n > 1:
            block.suptitle(f"image {i + 1}", fontsize=10, x=0.02, ha="left")
        for r in range(s):
            for c in range(k):
                ax = axes[r, c]
                _show(ax, grid[r, i, c])
                label = (cell_labels[c] if cell_labels is not None
                         else f"{ABAR} = {float(alpha_bars[r, c]):.3f}")
                ax.set_xlabel(label, fontsize=8, labelpad=2)
                if r == 0:
                    ax.set_title(heads[c], fontsize=10)
            axes[r, 0].set_ylabel(names[r], fontsize=10, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_schedules(schedules: Sequence[NoiseSchedule], path: str | Path,
                   labels: Sequence[str] | None = None, marks: Sequence[float] | None = None,
                   title: str | None = None) -> Path:
    """Save three panels against t/T (so schedules of different T compare): alpha-bar_t
    (Ho et al. 2020, eq. 4), beta_t on a log axis, and log-SNR_t = log(abar_t / (1 - abar_t))
    (Kingma et al. 2021, Variational Diffusion Models); one line per schedule (e.g. linear,
    Ho et al. 2020, vs. cosine, Nichol & Dhariwal 2021, eq. 17).

    Args:
        schedules: the schedules, each with its own T.
        path: the PNG to write.
        labels: a legend entry per schedule; default "<name> (T=<T>)".
        marks: positions t/T in [0, 1] drawn as dotted vertical lines (e.g. the grid's columns).
        title: an optional figure title.
    """
    labels = list(labels) if labels is not None else [
        f"{s.name} (T={s.num_timesteps})" for s in schedules]
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8 + (0.3 if title else 0)), dpi=DPI,
                             layout="constrained")
    panels = [(lambda s: s.alphas_cumprod, ABAR + r"$_t$ (signal fraction)", "linear"),
              (lambda s: s.betas, r"$\beta_t$ (log scale)", "log"),
              (lambda s: s.log_snr, r"log-SNR$_t$ = log $\bar\alpha_t / (1 - \bar\alpha_t)$",
               "linear")]
    for ax, (values, ylabel, yscale) in zip(axes, panels, strict=True):
        for sched, label in zip(schedules, labels, strict=True):
            x = (torch.arange(sched.num_timesteps, dtype=torch.float64) + 1) / sched.num_timesteps
            ax.plot(x.numpy(), values(sched).numpy(), label=label, lw=1.8)
        for m in marks or ():
            ax.axvline(m, color="0.6", lw=0.8, ls=":")
        ax.set_yscale(yscale)
        ax.set_xlabel("t / T", fontsize=10)
        ax.set_title(ylabel, fontsize=11)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_reverse(timesteps: Sequence[float], x_t: Tensor, x0: Tensor, path: str | Path,
                 title: str | None = None, total_steps: int | None = None,
                 steps: Sequence[int] | None = None, final: Tensor | None = None,
                 row_names: Sequence[str] | None = None,
                 levels: Sequence[str] | None = None) -> Path:
    """Save the reverse process: per sample a row of x_t and a row of the network's x0 estimate
    x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) (inverse of Ho et al. 2020, eq. 4),
    one column per recorded sampler step.

    Args:
        timesteps: K timesteps the columns show (as the sampler evaluated them).
        x_t: states the network saw, shape (K, N, C, H, W).
        x0: x0 estimates at those steps, shape (K, N, C, H, W).
        path: the PNG to write.
        title: an optional figure title.
        total_steps, steps: when given, columns also say "step <steps[j] + 1>/<total_steps>".
        final: the sampler's output (N, C, H, W), drawn as a last column in the x_t rows.
        row_names: a name per sample (N), e.g. "unguided" / "class 7, w=3".
        levels: K labels instead of "t = <t>" (a continuous objective's sigma, and flow's t).
    """
    k, n = x_t.shape[:2]
    if x0.shape != x_t.shape or len(timesteps) != k:
        raise ValueError(f"x_t {tuple(x_t.shape)}, x0 {tuple(x0.shape)} and {len(timesteps)} "
                         "timesteps do not match")
    if final is not None and final.shape != x_t.shape[1:]:
        raise ValueError(f"final {tuple(final.shape)} must have shape {tuple(x_t.shape[1:])}")
    cols = k + (final is not None)
    plt = pyplot()
    width = 1.3 + CELL_INCHES * cols
    title = wrap_title(title, width) if title else None
    fig, axes = plt.subplots(2 * n, cols, squeeze=False, dpi=DPI, layout="constrained",
                             figsize=(width, 0.5 + 2 * n * (CELL_INCHES + 0.05)
                                      + (0.4 + 0.25 * title.count("\n") if title else 0)))
    for i in range(n):
        for c in range(k):
            _show(axes[2 * i, c], x_t[c, i])
            _show(axes[2 * i + 1, c], x0[c, i])
        if final is not None:
            _show(axes[2 * i, k], final[i])
            axes[2 * i + 1, k].set_axis_off()
        who = f"{row_names[i]}\n" if row_names else f"sample {i + 1}\n" if n > 1 else ""
        axes[2 * i, 0].set_ylabel(f"{who}$x_t$", fontsize=10, rotation=0, ha="right", va="center")
        axes[2 * i + 1, 0].set_ylabel(r"predicted $\hat x_0$", fontsize=10, rotation=0,
                                      ha="right", va="center")
    for c in range(k):
        head = f"step {steps[c] + 1}/{total_steps}\n" if steps is not None and total_steps else ""
        level = levels[c] if levels is not None else f"t = {format_t(timesteps[c])}"
        axes[0, c].set_title(f"{head}{level}", fontsize=9)
    if final is not None:
        axes[0, k].set_title("output\n(after the last step)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)


def plot_sweep(scales: Sequence[float], metrics: dict[str, Sequence[float]], swept: str,
               path: str | Path) -> Path:
    """One panel per metric against the guidance scale (Ho & Salimans 2022, Fig. 4: FID and
    Inception Score against w). ``metrics``: name -> one value per scale."""
    plt = pyplot()
    names = list(metrics)
    fig, axes = plt.subplots(1, len(names), squeeze=False, dpi=DPI, layout="constrained",
                             figsize=(3.6 * len(names), 3.0))
    for ax, name in zip(axes[0], names, strict=True):
        ax.plot(list(scales), list(metrics[name]), marker="o", lw=1.8)
        ax.set_xlabel(swept, fontsize=10)
        ax.set_title(name, fontsize=11)
        ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_vlb_terms(timesteps: Sequence[int], terms: Sequence[float], path: str | Path,
                   title: str | None = None) -> Path:
    """The variational bound's terms against t (Nichol & Dhariwal 2021, Fig. 2): L_0 (the
    decoder, t = 0) and L_{t-1} for t > 0, each the mean over the items, bits/dim, log scale."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=DPI, layout="constrained")
    ax.plot(list(timesteps), list(terms), lw=1.5, marker="." if len(terms) <= 100 else None)
    ax.set_yscale("log")
    ax.set_xlabel("t", fontsize=10)
    ax.set_ylabel("term (bits/dim)", fontsize=10)
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def save_figure(fig: Any, path: str | Path) -> Path:
    """Write ``fig`` as a PNG (white background) and close it."""
    path = Path(path)
    fig.savefig(path, facecolor="white")
    pyplot().close(fig)
    return path


def plot_lines(lines: Mapping[str, Sequence[tuple[float, float]]], xlabel: str, ylabel: str,
               path: str | Path) -> Path:
    """Named lines of (x, y) points on one panel (each sorted by x; a legend unless there is
    one line), e.g. an eval-fid grid's metric against the guidance scale or the EMA width."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.6), dpi=DPI, layout="constrained")
    for name, points in lines.items():
        xy = sorted(points)
        ax.plot([p[0] for p in xy], [p[1] for p in xy], marker="o", lw=1.6, label=name)
    ax.set_xlabel(xlabel, fontsize=10)
    ax.set_ylabel(ylabel, fontsize=10)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend(fontsize=7)
    return save_figure(fig, path)
