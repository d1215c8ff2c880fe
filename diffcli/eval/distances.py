"""Sample-based distances between two point clouds, for judging a sampler against samples of the
true data distribution (e.g. :func:`diffcli.diffusion.gaussian.two_d_mixture`).

``x``: (N, D) and ``y``: (M, D) samples; all arithmetic is float64 and the result a Python float.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import gcd

import torch
from torch import Tensor

_F64 = torch.float64


def _as_2d(x: Tensor) -> Tensor:
    """(N,) or (N, D) -> (N, D) float64 on the CPU."""
    x = torch.as_tensor(x).detach().to("cpu", _F64)
    return x[:, None] if x.ndim == 1 else x


def random_directions(n: int, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """n directions uniform on the unit sphere S^{dim-1} (normalised Gaussians). (n, dim)"""
    g = torch.randn((n, dim), generator=generator, dtype=_F64)
    return g / g.norm(dim=1, keepdim=True)


def wasserstein2_1d(x: Tensor, y: Tensor) -> Tensor:
    """Exact squared 2-Wasserstein distance between the empirical measures of the columns of
    ``x`` (N, P) and ``y`` (M, P), one per column: W2^2 = int_0^1 (F^-1(u) - G^-1(u))^2 du.

    Both quantile functions are step functions, constant between consecutive breakpoints of the
    merged grid {i/N} u {j/M}; the integral is an exact sum over that grid (N + M - 1 pieces at
    most), kept in integers (units of 1/lcm(N, M)) so no breakpoint is lost to rounding. (P,)
    """
    n, m = x.shape[0], y.shape[0]
    xs, ys = x.T.contiguous().sort().values, y.T.contiguous().sort().values  # (P, N), (P, M)
    if n == m:
        return ((xs - ys) ** 2).mean(1)
    step_x, step_y = m // gcd(n, m), n // gcd(n, m)  # 1/N and 1/M in units of 1/lcm(N, M)
    ends = torch.cat([torch.arange(1, n + 1) * step_x, torch.arange(1, m + 1) * step_y]).unique()
    widths = torch.diff(ends, prepend=ends.new_zeros(1)).to(_F64) / (n * step_x)
    ix, iy = (ends - 1) // step_x, (ends - 1) // step_y  # quantile index on each piece
    return (widths * (xs[:, ix] - ys[:, iy]) ** 2).sum(1)


def sliced_wasserstein(x: Tensor, y: Tensor, n_projections: int = 256,
                       generator: torch.Generator | None = None) -> float:
    """Sliced 2-Wasserstein distance SW_2(x, y) = (E_theta W2^2(<theta, x>, <theta, y>))^{1/2}
    (Rabin et al. 2011; Bonneel et al. 2015), the expectation over ``n_projections`` random unit
    directions theta and each 1-D W2 exact (:func:`wasserstein2_1d`; N != M allowed).

    x: (N, D), y: (M, D) (or 1-D tensors, D = 1). ``generator`` draws the directions;
    None uses a fixed seed (0), so the metric is deterministic unless a generator is given.
    In 1-D it is the exact W2; a translation of y by c adds about |c| / sqrt(D).
    """
    x, y = _as_2d(x), _as_2d(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dimension mismatch: {x.shape[1]} vs {y.shape[1]}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    theta = random_directions(n_projections, x.shape[1], generator)  # (P, D)
    return float(wasserstein2_1d(x @ theta.T, y @ theta.T).mean().sqrt())


def _rbf_sum(x: Tensor, y: Tensor, bandwidths: Sequence[float], chunk: int = 2048) -> Tensor:
    """sum_{i,j} k(x_i, y_j), k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)), in row chunks of x
    so memory stays O(chunk * M). Scalar."""
    total = torch.zeros((), dtype=_F64)
    for rows in x.split(chunk):
        d2 = torch.cdist(rows, y, compute_mode="donot_use_mm_for_euclid_dist").pow(2)
        total += sum(torch.exp(-d2 / (2 * h**2)).sum() for h in bandwidths)
    return total


def gaussian_mmd(x: Tensor, y: Tensor, bandwidths: Sequence[float] = (0.1, 0.5, 1.0, 2.0),
                 unbiased: bool = True) -> float:
    """Squared maximum mean discrepancy MMD^2 with the kernel
    k(a, b) = sum_h exp(-|a - b|^2 / (2 h^2)) over ``bandwidths`` (Gretton et al. 2012).

    unbiased=True (default): the U-statistic of Gretton et al. 2012, eq. 3, which leaves out the
    i = j terms of k(x, x) and k(y, y); its mean is the true MMD^2, so it can be slightly
    negative when x and y come from the same distribution. unbiased=False: the V-statistic
    (eq. 5), >= 0 and exactly 0 for identical samples. x: (N, D), y: (M, D); N, M >= 2.
    """
    x, y = _as_2d(x), _as_2d(y)
    n, m = x.shape[0], y.shape[0]
    kxx, kyy = _rbf_sum(x, x, bandwidths), _rbf_sum(y, y, bandwidths)
    kxy = _rbf_sum(x, y, bandwidths)
    if not unbiased:
        return float(kxx / n**2 + kyy / m**2 - 2 * kxy / (n * m))
    diag = len(bandwidths)  # k(a, a) = one per bandwidth
    return float((kxx - n * diag) / (n * (n - 1)) + (kyy - m * diag) / (m * (m - 1))
                 - 2 * kxy / (n * m))
