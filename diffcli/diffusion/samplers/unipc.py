"""UniPC: the unified predictor-corrector multistep solver in data prediction (Zhao et al. 2023).

Zhao, Bai, Rao, Zhou, Lu, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models", NeurIPS 2023 (arXiv 2302.04867): the predictor UniP-p and the corrector
UniC-p (Sec. 3: UniC-p, Theorem 3.1; UniP-p, Corollary 3.2), multistep, here in the
data-prediction form (x0_hat in place of the noise prediction).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.samplers.base import (
    Denoiser,
    Generator,
    Sampler,
    SamplerStep,
    StepCallback,
    check,
)
from diffcli.diffusion.samplers.dpm_solver import half_log_snr, multistep_orders

VARIANTS = ("bh1", "bh2")


def phi(k: int, z: float) -> float:
    """phi_k(z) = sum_{j >= 0} z^j / (j + k)!, the exponential integrator's phi functions
    (phi_0 = e^z, phi_{k+1}(z) = (phi_k(z) - 1/k!) / z): the series for |z| < 1, else the
    recursion from phi_1(z) = expm1(z) / z, which then loses at most a digit or two."""
    if abs(z) < 1.0:
        term, total, j = 1.0 / math.factorial(k), 0.0, 0
        while abs(term) > 1e-18 * max(abs(total), 1e-300):
            total += term
            j += 1
            term *= z / (j + k)
        return total
    if k == 0:
        return math.exp(z)
    value = math.expm1(z) / z
    for m in range(1, k):
        value = (value - 1.0 / math.factorial(m)) / z
    return value


def b_of_h(variant: str, h: float) -> float:
    """B(h) > 0 of the data-prediction update: h (bh1) or 1 - e^{-h} (bh2). The paper writes
    B_1(h) = h, B_2(h) = e^h - 1 in the noise-prediction form; in data prediction the
    exponential integrator runs in -h, and B(-h) = -(our B) with the sign absorbed in a_m."""
    return h if variant == "bh1" else -math.expm1(-h)


def weights(variant: str, h: float, rs: list[float]) -> list[float]:
    """w_m = B(h) a_m for the differences D_m / r_m at the ratios ``rs`` (K of them), with a
    solving the K order conditions of Theorem 3.1 in data prediction,

        sum_m a_m r_m^(k-1) = g_k(h) := k! h phi_{k+1}(-h) / B(h),   k = 1..K,

    (a Vandermonde system R_K a = g), where h^(k+1) phi_{k+1}(-h) = int_0^h e^{-(h-u)} u^k / k!
    du is the weight of the k-th lambda-derivative of x0_hat in the exact step. With one unknown
    (K = 1) a_1 = 1/2, as the authors do: g_1(h) = 1/2 + O(h), so the order is kept, and there
    B(h) makes bh1 and bh2 differ; with K >= 2 the system is solved exactly and B(h) cancels
    from w."""
    if len(rs) == 1:
        return [0.5 * b_of_h(variant, h)]
    big_k = len(rs)
    vander = [[r ** (k - 1) for r in rs] for k in range(1, big_k + 1)]
    g = [math.factorial(k) * h * phi(k + 1, -h) for k in range(1, big_k + 1)]  # B(h) g_k
    return solve(vander, g)  # w = B(h) a: B(h) cancels


def solve(a: list[list[float]], b: list[float]) -> list[float]:
    """x with a x = b for a small square system (Gaussian elimination, partial pivoting); in
    Python floats, which for K <= 3 is far cheaper than a tensor solve every step."""
    n = len(b)
    rows = [[*row, rhs] for row, rhs in zip(a, b, strict=True)]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, n):
            f = rows[r][col] / rows[col][col]
            rows[r] = [v - f * p for v, p in zip(rows[r], rows[col], strict=True)]
    x = [0.0] * n
    for r in reversed(range(n)):
        x[r] = (rows[r][n] - sum(rows[r][c] * x[c] for c in range(r + 1, n))) / rows[r][r]
    return x


@dataclass(frozen=True)
class UniPC(Sampler):
    """UniPC-p (Zhao et al. 2023): multistep UniP-p predictor + UniC-p corrector, in data
    prediction (x0_hat), on the grid's consecutive points t_0 > ... > t_{N-1}, then abar = 1.

    With lambda = log(alpha / sigma) (:func:`half_log_snr`), alpha = sqrt(abar),
    sigma = sqrt(1 - abar), m_j = x0_hat evaluated at t_j, one step from s = t_i to t = t_{i+1}
    with h = lambda_t - lambda_s and q previous model outputs is

        x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) m_i
              + alpha_t B(h) sum_m a_m D_m / r_m,

    the first two terms DDIM's (DPM-Solver++'s first order), and D_m = m_{i-m} - m_i at
    r_m = (lambda_{t_{i-m}} - lambda_s) / h < 0:

    * UniP-q (predictor, order q): m = 1..q-1, from the corrected state x_s; it gives the
      predicted x~_t, where the network is evaluated once: m_{i+1} = x0_hat(x~_t, t);
    * UniC-q (corrector, order q+1): the same formula from the same x_s with one more
      difference, D_q = m_{i+1} - m_i at r_q = 1; it gives the corrected state x^c_t, from
      which the next predictor starts. The corrector needs no evaluation of its own: the next
      step uses m_{i+1}, the output at x~_t (the paper's reuse), so NFE = N, one network
      evaluation per grid point.

    The a_m solve the order conditions sum_m a_m r_m^(k-1) = k! h phi_{k+1}(-h) / B(h),
    k = 1..K, for the K unknowns (:func:`weights`; Theorem 3.1's a_p = R_p^{-1} phi_p / B,
    written for data prediction, where h enters as -h), except a_1 = 1/2 when there is one
    unknown. ``variant`` picks B(h):
    ``bh1``: B(h) = h; ``bh2`` (default): B(h) = 1 - e^{-h}, the data-prediction form of the
    paper's B_2(h) = e^h - 1. B(h) matters only where a_1 = 1/2 (UniP-2's extrapolation and
    UniC-1): larger systems are solved exactly and B(h) cancels. UniP-2 with bh2 is exactly
    DPM-Solver++(2M) (a_1 B(h) D_1 / r_1 = (1 - e^{-h}) (m_i - m_{i-1}) / (2 r), r = h_prev / h),
    so ``order=2, variant=bh2, corrector=false`` reproduces :class:`DPMSolverPP2M`.

    Orders: ``order`` p is 2 or 3. Warm-up: step i (from t_i) uses q = min(p, i + 1) outputs
    (the first step is DDIM). ``lower_order_final`` (default true; it acts when N < 15, the
    usual convention of DPM-Solver and UniPC implementations): the step k steps before the end
    uses q <= k, so the step into the last grid point is at most second order (only order 3 is
    affected); it steadies few-step sampling, where the last lambda-steps are long. The
    corrector always uses the order of the predictor step it corrects.

    The last step goes to abar = 1 (lambda = inf), where no extrapolation in lambda exists: it
    returns x0_hat at the last grid point, evaluated at the predictor's x~_{t_{N-1}} (as
    DPM-Solver++(2M) returns its x0_hat). So UniC runs after every predictor step except the
    last: correcting x~_{t_{N-1}} would change the result only through another evaluation.
    ``corrector=false`` gives plain UniP-p. Deterministic; any grid. A learned variance
    (``Prediction.var_frac``) is ignored: the solver uses x0_hat only.
    """

    steps: int | None = 20
    order: int = 2
    variant: str = "bh2"
    corrector: bool = True
    lower_order_final: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check(isinstance(self.order, int) and not isinstance(self.order, bool)
              and self.order in (2, 3), f"order must be 2 or 3, got {self.order!r}")
        check(self.variant in VARIANTS,
              f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        for name in ("corrector", "lower_order_final"):
            value = getattr(self, name)
            check(isinstance(value, bool), f"{name} must be true or false, got {value!r}")

    def step_orders(self, n: int) -> list[int]:
        """The order q of the predictor step from grid point i to i + 1, i = 0..n-2
        (:func:`~diffcli.diffusion.samplers.dpm_solver.multistep_orders`)."""
        return multistep_orders(self.order, n, self.lower_order_final)

    def _advance(self, x: Tensor, abar_s: float, abar_t: float, h: float, m_s: Tensor,
                 diffs: list[tuple[float, Tensor]]) -> Tensor:
        """x_t from x_s: the DDIM term plus alpha_t sum_m w_m D_m / r_m, diffs = [(r_m, D_m)]."""
        alpha_t = math.sqrt(abar_t)
        out = math.sqrt((1 - abar_t) / (1 - abar_s)) * x - alpha_t * math.expm1(-h) * m_s
        if diffs:
            w = weights(self.variant, h, [r for r, _ in diffs])
            for w_m, (r, d) in zip(w, diffs, strict=True):
                out = out + (alpha_t * w_m / r) * d
        return out

    @torch.inference_mode()
    def sample(self, model: Denoiser, noise: Tensor, *, generator: Generator = None,
               callback: StepCallback | None = None) -> Tensor:
        grid = self.make_grid(model.schedule)
        abar, n = grid.alphas_cumprod, len(grid)
        lam = [half_log_snr(a) for a in abar[:n]]  # finite: abar < 1 on the grid's N points
        orders = self.step_orders(n)
        x = noise  # the state at t_i: x~ where the network sees it, then corrected
        outs: list[tuple[int, Tensor]] = []  # (grid index j, m_j), the last p outputs
        x_base = None  # the state the last predictor step started from
        for i in range(n):
            m = self.denoised(model.predict(x, grid.sigmas[i]).x0)
            if callback is not None:
                callback(SamplerStep(i, n, grid.timesteps[i], x, m))
            if i + 1 == n:  # the step to abar = 1 returns x0_hat
                return m
            if self.corrector and x_base is not None:  # UniC at t_i, from t_{i-1}
                x = self._unified(x_base, abar, lam, i - 1, outs[-orders[i - 1]:], (i, m))
            outs = [*outs, (i, m)][-self.order:]
            x_base = x
            x = self._unified(x, abar, lam, i, outs[-orders[i]:], None)  # UniP to t_{i+1}
        return x

    def _unified(self, x_s: Tensor, abar: tuple[float, ...], lam: list[float], i: int,
                 outs: list[tuple[int, Tensor]], new: tuple[int, Tensor] | None) -> Tensor:
        """The common update from grid point i (state x_s, output outs[-1] = (i, m_i)) to
        i + 1 with the older outputs of ``outs``: UniP, or UniC with ``new`` = (i + 1,
        m_{i+1})."""
        h = lam[i + 1] - lam[i]
        m_s = outs[-1][1]  # m_i
        points = [*outs[:-1], new] if new is not None else outs[:-1]
        diffs = [((lam[j] - lam[i]) / h, m_j - m_s) for j, m_j in points]
        return self._advance(x_s, abar[i], abar[i + 1], h, m_s, diffs)
