"""Sample-based distances between two point clouds, for judging a sampler against samples of the
true data distribution (e.g. :func:`diffcli.diffusion.gaussian.two_d_mixture`).

``x``: (N, D) and ``y``: (M, D) samples; all arithmetic is float64 and the result a Python float.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import gcd

import torch
from torch import Tensor

from diffcli.diffusion.gaussian import GaussianMixtureData

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



@dataclass(frozen=True, eq=False)
class FourierKernel:
    """k(a, b) = (1/m) sum_j cos(w_j . (a - b)) = phi(a) . phi(b) with the features
    phi(x) = [cos(w_j . x), sin(w_j . x)]_j / sqrt(m) (Rahimi & Recht 2007): for w_j ~ N(0, I/h^2)
    a Monte Carlo Gaussian kernel of bandwidth h. Once the m frequencies are drawn it is an exact
    positive-definite kernel in its own right, with k(x, x) = 1, and every MMD^2 with it is an
    average of |E phi(x) - E phi(y)|^2 over the frequencies: O(N m) to estimate, not O(N^2).
    ``frequencies``: (m, D) float64."""

    frequencies: Tensor

    @classmethod
    def gaussian(cls, dim: int, bandwidths: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0),
                 m: int = 4096, seed: int = 0) -> FourierKernel:
        """m frequencies, an equal share for each bandwidth h, w ~ N(0, I/h^2): the sum-of-RBF
        kernel of :func:`gaussian_mmd` (divided by the number of bandwidths), in m features."""
        g = torch.Generator().manual_seed(seed)
        per = [m // len(bandwidths) + (i < m % len(bandwidths)) for i in range(len(bandwidths))]
        w = [torch.randn((k, dim), generator=g, dtype=_F64) / h
             for k, h in zip(per, bandwidths, strict=True)]
        return cls(torch.cat(w))

    def features(self, x: Tensor) -> Tensor:
        """phi(x): (N, D) -> (N, 2m), each row of norm 1."""
        proj = _as_2d(x) @ self.frequencies.T
        return torch.cat([proj.cos(), proj.sin()], 1) / self.frequencies.shape[0] ** 0.5

    def mixture_features(self, mixture: GaussianMixtureData) -> Tensor:
        """E phi(y) for y ~ ``mixture``, in closed form: for y ~ N(mu, diag(s^2)),
        E e^{i w . y} = exp(i w . mu - |w s|^2 / 2), so E cos(w . y) and E sin(w . y) are the
        real and imaginary parts, weighted over the components. (2m,)"""
        w = self.frequencies  # (m, D)
        damp = torch.exp(-0.5 * (w[None] ** 2 * mixture.stds[:, None, :] ** 2).sum(2))  # (K, m)
        phase = mixture.means @ w.T  # (K, m)
        mean = torch.cat([damp * phase.cos(), damp * phase.sin()], 1)  # (K, 2m)
        return mixture.weights @ mean / w.shape[0] ** 0.5


def mmd_to_mixture(x: Tensor, mixture: GaussianMixtureData, kernel: FourierKernel) -> float:
    """MMD^2 between the samples ``x`` (N, D) and the Gaussian mixture itself (not draws from
    it): |E phi(x) - E phi(y)|^2 with E phi(y) in closed form (:meth:`FourierKernel.mixture_
    features`) and |E phi(x)|^2 by the U-statistic (|sum_i phi_i|^2 - N) / (N (N - 1)), so the
    estimate is unbiased: exact draws give 0 on average, scattered by O(1/N). N >= 2."""
    f = kernel.features(x)
    n = f.shape[0]
    mu = kernel.mixture_features(mixture)
    total = f.sum(0)
    return float((total @ total - n) / (n * (n - 1)) - 2 * (f.mean(0) @ mu) + mu @ mu)


def coupled_mmd(fx: Tensor, fy: Tensor, folds: int = 10) -> tuple[float, float]:
    """MMD^2 between the laws of x and y from N pairs (x_i, y_i) drawn together, given as their
    features phi(x_i), phi(y_i) (N, 2m) (:meth:`FourierKernel.features`), e.g. a sampler's
    output and the exact ODE solution from the same noise. With d_i = phi(x_i) - phi(y_i), the
    U-statistic (|sum_i d_i|^2 - sum_i |d_i|^2) / (N (N - 1)) has mean |E d|^2 =
    |E phi(x) - E phi(y)|^2, the MMD^2, whatever the coupling; coupling only cuts its scatter,
    which shrinks with the distance between the pairs (zero for x = y) instead of sitting at
    the O(1/N) floor of independent sets. Returns (MMD^2, its standard error), the error from
    ``folds`` disjoint folds (std of their estimates / sqrt(folds): an upper bound, since the
    U-statistic's variance falls at least like 1/N)."""
    d = fx - fy
    n = d.shape[0]
    if n < 2 * folds:
        raise ValueError(f"need at least {2 * folds} pairs for {folds} folds, got {n}")

    def estimate(part: Tensor) -> float:
        total = part.sum(0)
        k = part.shape[0]
        return float((total @ total - (part**2).sum()) / (k * (k - 1)))

    parts = torch.tensor([estimate(p) for p in d.tensor_split(folds)], dtype=_F64)
    return estimate(d), float(parts.std() / folds**0.5)
