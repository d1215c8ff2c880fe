"""Animated GIFs (PIL): an image dissolving into noise, and a sample emerging from it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from diffcli.diffusion.schedules import NoiseSchedule
from diffcli.viz.forward import forward_grid
from diffcli.viz.plots import format_t

MIN_CELL = 112  # pixels: small images are scaled up (nearest neighbour) to at least this
PAD = 4
FONT_SIZE = 13
LINE = FONT_SIZE + 6  # header line height in pixels


def to_uint8(x: Tensor) -> np.ndarray:
    """An image (C, H, W) with values in [-1, 1] (clipped) as RGB uint8 (H, W, 3)."""
    img = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    img = img.expand(3, -1, -1) if img.shape[0] == 1 else img
    return img.permute(1, 2, 0).numpy()


def tile(images: Tensor, scale: int) -> Image.Image:
    """Images (R, Q, C, H, W) as one RGB picture of R rows and Q columns, each image scaled up
    ``scale`` times (nearest neighbour), with white gaps of :data:`PAD` pixels."""
    r, q, _, h, w = images.shape
    hs, ws = h * scale, w * scale
    canvas = np.full((r * (hs + PAD) + PAD, q * (ws + PAD) + PAD, 3), 255, dtype=np.uint8)
    for i in range(r):
        for j in range(q):
            img = to_uint8(images[i, j]).repeat(scale, axis=0).repeat(scale, axis=1)
            top, left = PAD + i * (hs + PAD), PAD + j * (ws + PAD)
            canvas[top:top + hs, left:left + ws] = img
    return Image.fromarray(canvas)


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def with_header(body: Image.Image, caption: str, column_labels: Sequence[str],
                cell: int) -> Image.Image:
    """``body`` below two text lines: ``caption``, then a label centred over each column
    (columns ``cell`` pixels wide, :data:`PAD` apart, as :func:`tile` lays them out); the frame
    is widened (white on the right) to hold the caption."""
    font = _font()
    width = max(body.width, math.ceil(font.getlength(caption)) + 2 * PAD)
    frame = Image.new("RGB", (width, body.height + 2 * LINE), "white")
    frame.paste(body, (0, 2 * LINE))
    draw = ImageDraw.Draw(frame)
    draw.text((PAD, 2), caption, fill="black", font=font)
    for j, label in enumerate(column_labels):
        centre = PAD + j * (cell + PAD) + cell / 2
        draw.text((centre, LINE + 2), label, fill="black", font=font, anchor="ma")
    return frame


def cell_scale(size: int) -> int:
    """The integer scale-up that makes a ``size``-pixel image at least :data:`MIN_CELL` wide."""
    return max(1, math.ceil(MIN_CELL / size))


def forward_frames(x0: Tensor, schedules: Sequence[NoiseSchedule], names: Sequence[str],
                   timesteps: Sequence[int], noise: Tensor) -> list[Image.Image]:
    """One frame per timestep of x_t ~ q(x_t | x_0) (Ho et al. 2020, eq. 4, via q_sample):
    rows are the N images, columns the S schedules side by side, all from the same eps.

    Args:
        x0: clean images (N, C, H, W) in [-1, 1].
        schedules, names: S schedules and their column labels.
        timesteps: the frames' timesteps (0-based), e.g. ``evenly_spaced(40, T)``.
        noise: eps (N, C, H, W), shared by every schedule and frame.
    """
    grid = forward_grid(x0, schedules, timesteps, noise)  # (S, N, F, C, H, W)
    return grid_frames(grid, names, [f"forward process  t = {t}" for t in timesteps])


def grid_frames(grid: Tensor, names: Sequence[str], captions: Sequence[str]) -> list[Image.Image]:
    """One frame per column f of a forward grid (S, N, F, C, H, W): rows are the N images,
    columns the S processes (``names``) side by side, under ``captions[f]``."""
    scale = cell_scale(grid.shape[-1])
    frames = []
    for f, caption in enumerate(captions):
        body = tile(grid[:, :, f].transpose(0, 1), scale)  # rows: images, columns: processes
        frames.append(with_header(body, caption, names, grid.shape[-1] * scale))
    return frames


def reverse_frames(timesteps: Sequence[float], x_t: Tensor, x0: Tensor) -> list[Image.Image]:
    """One frame per sampler step: per sample (rows) the state x_t and the network's x0 estimate.

    Args:
        timesteps: K timesteps, one per recorded step.
        x_t, x0: (K, N, C, H, W) states and x0 estimates, as a sampler trajectory records them.
    """
    scale = cell_scale(x_t.shape[-1])
    frames = []
    for k, t in enumerate(timesteps):
        body = tile(torch.stack([x_t[k], x0[k]], dim=1), scale)  # (N, 2, C, H, W)
        caption = f"reverse step {k + 1}/{len(timesteps)}  t = {format_t(t)}"
        frames.append(with_header(body, caption, ["x_t", "predicted x0"], x_t.shape[-1] * scale))
    return frames


def save_gif(frames: Sequence[Image.Image], path: str | Path, frame_ms: int = 80,
             hold_ms: int = 1000) -> Path:
    """Write ``frames`` as a looping GIF; the first and last frames stay ``hold_ms`` on screen.
    Frames of different sizes are drawn top left on white frames of the largest size."""
    if not frames:
        raise ValueError("no frames to write")
    size = (max(f.width for f in frames), max(f.height for f in frames))
    if any(f.size != size for f in frames):
        canvases = [Image.new("RGB", size, "white") for _ in frames]
        for canvas, frame in zip(canvases, frames, strict=True):
            canvas.paste(frame, (0, 0))
        frames = canvases
    durations = [frame_ms] * len(frames)
    durations[0] = durations[-1] = hold_ms
    path = Path(path)
    frames[0].save(path, save_all=True, append_images=list(frames[1:]), duration=durations,
                   loop=0)
    return path
