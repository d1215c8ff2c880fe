"""The Frechet distance between Gaussians fitted to features, and streaming feature statistics.

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", eq. 6) fits a Gaussian N(mu, Sigma) to the Inception-v3 pool features (D = 2048)
of each image set and reports their squared Frechet (2-Wasserstein) distance

    d^2 = ||mu1 - mu2||^2 + tr(Sigma1 + Sigma2 - 2 (Sigma1 Sigma2)^{1/2}).

Everything here is float64: the statistics are accumulated batch by batch over *all* images
(never from one batch), and the matrix square root goes through symmetric eigendecompositions,
which stay real and stable for (near-)singular covariances.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

_F64 = np.float64


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """The symmetric PSD square root of a symmetric matrix (negative eigenvalues, which only
    rounding produces in a covariance, are clipped to 0). (D, D) -> (D, D)"""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((Sigma1 Sigma2)^{1/2}) for covariances Sigma1, Sigma2 (D, D).

    Sigma1 Sigma2 is similar to the symmetric PSD matrix M = Sigma1^{1/2} Sigma2 Sigma1^{1/2}
    (conjugate by Sigma1^{1/2}), so both have the same non-negative eigenvalues and the trace of
    the square root is sum_i sqrt(lambda_i(M)). This avoids the complex values and the
    "add eps to the diagonal" retries that scipy.linalg.sqrtm(Sigma1 @ Sigma2) needs.
    """
    root = _psd_sqrt(sigma1)
    m = root @ sigma2 @ root
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, Sigma1) and N(mu2, Sigma2) (Heusel et al. 2017):
    ||mu1 - mu2||^2 + tr(Sigma1) + tr(Sigma2) - 2 tr((Sigma1 Sigma2)^{1/2}), in float64.

    mu1, mu2: (D,); sigma1, sigma2: (D, D) symmetric PSD. It is 0 for equal Gaussians (up to
    rounding, ~1e-12 relative; the true value is >= 0, so a rounding-negative result is
    returned as 0), symmetric in its arguments and invariant to translating both means by the
    same vector.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, _F64)), np.atleast_1d(np.asarray(mu2, _F64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, _F64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, _F64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu {mu1.shape}, {mu2.shape}; "
                         f"sigma {sigma1.shape}, {sigma2.shape} (expected (D,) and (D, D))")
    if not all(np.isfinite(a).all() for a in (mu1, mu2, sigma1, sigma2)):
        raise ValueError("the statistics contain NaN or infinity")
    diff = mu1 - mu2
    tr_covmean = trace_sqrt_product(sigma1, sigma2)
    return max(float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean), 0.0)


@dataclass
class GaussianStats:
    """A Gaussian fitted to n feature vectors: mean mu (D,), covariance sigma (D, D), float64."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int


class StreamingStats:
    """Mean and (unbiased, ddof=1) covariance of feature vectors fed in batches, float64.

    Batches (B, D) are merged with the pairwise update of Chan et al. 1979: with the running
    (n, mean, M2 = sum (x - mean)(x - mean)^T) and a batch's (b, mean_b, M2_b),
    delta = mean_b - mean, M2 += M2_b + delta delta^T n b / (n + b), mean += delta b / (n + b).
    The result equals ``np.mean`` / ``np.cov`` of all rows at once, whatever the batching.
    """

    def __init__(self, dim: int | None = None) -> None:
        self.n = 0
        self.dim = dim
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None

    def update(self, features: Tensor | np.ndarray) -> None:
        """Add a batch of feature vectors (B, D)."""
        x = features.detach().to("cpu", torch.float64).numpy() if isinstance(features, Tensor) \
            else np.asarray(features, _F64)
        if x.ndim != 2 or (self.dim is not None and x.shape[1] != self.dim):
            raise ValueError(f"expected features (B, {self.dim or 'D'}), got {x.shape}")
        b = x.shape[0]
        if b == 0:
            return
        mean_b = x.mean(axis=0)
        centered = x - mean_b
        m2_b = centered.T @ centered
        if self._mean is None or self._m2 is None:
            self.dim, self._mean, self._m2, self.n = x.shape[1], mean_b, m2_b, b
            return
        total = self.n + b
        delta = mean_b - self._mean
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (self.n * b / total)
        self._mean = self._mean + delta * (b / total)
        self.n = total

    @property
    def mean(self) -> np.ndarray:
        """The mean of every vector so far. (D,)"""
        if self._mean is None:
            raise ValueError("no features were added")
        return self._mean

    @property
    def cov(self) -> np.ndarray:
        """The unbiased covariance (divided by n - 1) of every vector so far. (D, D)"""
        if self._m2 is None or self.n < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, got {self.n}")
        return self._m2 / (self.n - 1)

    def result(self) -> GaussianStats:
        """The fitted Gaussian (mu, sigma, n)."""
        return GaussianStats(self.mean.copy(), self.cov.copy(), self.n)
