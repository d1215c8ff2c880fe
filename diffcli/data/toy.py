"""2-D toy distributions for quick diffusion experiments.

Every sampler has the signature ``fn(n, seed=0) -> Tensor`` of shape (n, 2), dtype float32, is
deterministic for a given ``seed`` and uses a *fixed* affine scaling (never the sample's own
statistics), so that each coordinate has roughly zero mean and a standard deviation near 1.
:mod:`diffcli.data.registry` serves them by name ("swiss_roll", "moons", "gaussian_mixture").

The two clustered ones also come with labels: :func:`labelled_moons` (which moon, names
:data:`MOONS_CLASSES`) and :func:`labelled_gaussian_mixture` (which component) return a
:class:`LabelledPoints` whose points are exactly those of :func:`moons` / :func:`gaussian_mixture`
for the same arguments.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from diffcli.errors import DiffcliError

# Fixed affine maps: x_scaled = (x - center) * scale.
_SWISS_CENTRE = np.array([2.0, 0.2])
_SWISS_SCALE = 1.0 / 7.0
_MOONS_CENTRE = np.array([0.5, 0.25])
_MOONS_SCALE = 1.5
MOONS_CLASSES: tuple[str, str] = ("upper", "lower")  # make_moons' label 0: outer, upper half


class LabelledPoints(NamedTuple):
    """Points (n, 2) float32, their labels (n,) int64 and the class names (label k: names[k])."""

    points: Tensor
    labels: Tensor
    class_names: tuple[str, ...]


def _check_n(n: int) -> None:
    if int(n) != n or n < 1:
        raise DiffcliError(f"the number of toy points must be a positive integer, got {n!r}")


def _to_tensor(x: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def swiss_roll(n: int, seed: int = 0) -> Tensor:
    """A noisy 2-D spiral: columns x and z of ``sklearn.datasets.make_swiss_roll``.

    Generated with noise 0.5, then shifted by (-2.0, -0.2) and divided by 7, which gives
    per-coordinate std of about 0.95 and 1.0 (range roughly [-2, 2]).

    Returns:
        Points, float32, shape (n, 2).
    """
    _check_n(n)
    from sklearn.datasets import make_swiss_roll

    xyz, _ = make_swiss_roll(int(n), noise=0.5, random_state=seed)  # (n, 3)
    return _to_tensor((xyz[:, [0, 2]] - _SWISS_CENTRE) * _SWISS_SCALE)


def moons(n: int, seed: int = 0) -> Tensor:
    """Two interleaving half circles from ``sklearn.datasets.make_moons`` (noise 0.05).

    Shifted by (-0.5, -0.25) and multiplied by 1.5, which gives zero mean and per-coordinate
    std of about 1.3 and 0.75 (the aspect ratio is kept).

    Returns:
        Points, float32, shape (n, 2).
    """
    return labelled_moons(n, seed).points


def labelled_moons(n: int, seed: int = 0) -> LabelledPoints:
    """The points of :func:`moons` and which moon each lies on: 0 the upper one (before
    scaling the unit half circle y >= 0 around (0, 0)), 1 the lower one (around (1, 0.5))."""
    _check_n(n)
    from sklearn.datasets import make_moons

    xy, which = make_moons(int(n), noise=0.05, random_state=seed)  # (n, 2), (n,)
    points = _to_tensor((xy - _MOONS_CENTRE) * _MOONS_SCALE)
    return LabelledPoints(points, torch.from_numpy(which.astype(np.int64)), MOONS_CLASSES)


def gaussian_mixture(
    n: int,
    seed: int = 0,
    n_components: int = 8,
    radius: float = 2.0,
    std: float = 0.1,
) -> Tensor:
    """Equal-weight isotropic Gaussians (std ``std``) centered evenly on a circle of ``radius``.

    Points are divided by sqrt(2) after sampling: with the defaults (8 components, radius 2,
    std 0.1) each coordinate then has zero mean and std of about 1.0.

    Returns:
        Points, float32, shape (n, 2).
    """
    return labelled_gaussian_mixture(n, seed, n_components, radius, std).points


def labelled_gaussian_mixture(
    n: int,
    seed: int = 0,
    n_components: int = 8,
    radius: float = 2.0,
    std: float = 0.1,
) -> LabelledPoints:
    """The points of :func:`gaussian_mixture` and the component each was drawn from: label k
    is the Gaussian centered at angle 2 pi k / n_components (names "0".."K-1")."""
    _check_n(n)
    gen = torch.Generator().manual_seed(int(seed))
    angles = torch.arange(n_components, dtype=torch.float64) * (2 * math.pi / n_components)
    centers = radius * torch.stack([angles.cos(), angles.sin()], dim=1)  # (K, 2)
    which = torch.randint(0, n_components, (int(n),), generator=gen)  # (n,)
    noise = torch.randn(int(n), 2, generator=gen, dtype=torch.float64)  # (n, 2)
    points = (centers[which] + std * noise) / math.sqrt(2.0)
    names = tuple(str(k) for k in range(n_components))
    return LabelledPoints(points.to(torch.float32), which.to(torch.int64), names)
