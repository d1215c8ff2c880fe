"""Exact log-likelihoods through the probability-flow ODE (Song et al. 2021, Sec. 4.3 and
Appendix D.2), with an adaptive Dormand-Prince RK45 solver written here.

The process. The VP chain x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps is integrated in its
variance-exploding form xbar = x_t / sqrt(abar_t) = x0 + sigma eps, sigma = sqrt((1-abar)/abar)
(Karras et al. 2022, Sec. 2). Its probability-flow ODE is dxbar/dsigma = (xbar - D(xbar; sigma))
/ sigma with the denoiser D = E[x0 | xbar] (Song et al. 2021, eq. 13 with f = 0, g^2 =
d sigma^2 / dt). The solver's time is lambda = log sigma = -log(SNR) / 2:

    dxbar / dlambda = f~(xbar, lambda) = xbar - D(xbar; e^lambda),
    log p_min(xbar_min) = log p_max(xbar_max) + int_{lambda_min}^{lambda_max} div f~ dlambda,

(instantaneous change of variables, Song et al. 2021, eq. 39-40), integrated forward from the
data (lambda_min) to the prior end (lambda_max), jointly for (xbar, int div f~).

Continuous time from the discrete schedule. The network is evaluated between its training
timesteps by :meth:`Denoiser.predict`: sigma maps to the real-valued timestep whose log sigma is
linearly interpolated between grid points (log sigma linear = log-SNR linear,
:meth:`NoiseSchedule.alpha_bar_at`); on a grid point it is the training timestep itself. So the
ODE's lambda runs over [log sigma_0, log sigma_{T-1}], the trained range: sigma_0 (the first
training timestep, t = 1/T of the continuous range, sigma = 0.01 for DDPM's linear schedule at
T = 1000) plays the role of Song et al.'s t = eps, and the result is log p_{sigma_min}(x0), the
density of the data blurred by N(0, sigma_min^2 I), evaluated at x0. The prior end is
N(0, (1 + sigma_max^2) I), i.e. x_T = xbar / sqrt(1 + sigma_max^2) ~ N(0, I) as in the VP chain.

The divergence. ``exact_trace=True``: the full trace of the Jacobian, one vector-Jacobian
product per dimension (for tiny dims such as 2-D tests). Otherwise Hutchinson's estimator
div f~ ~= z^T (df~/dx) z with one fixed probe z per sample per solve (Rademacher or Gaussian),
one vector-Jacobian product by torch.autograd per evaluation (Grathwohl et al. 2019; Song et al.
2021, App. D.2).

Images. 8-bit values k are uniformly dequantized to y = 2 (k + u) / 256 - 1, u ~ U[0, 1), a
continuous variable on [-1, 1); since dy/d(k + u) = 1/128, E_u[-log p_y(y)] + D log 128 is an
upper bound on -log P(k) of the discrete data, i.e. bits/dim = -log p_y / (D ln 2) + 7
(Theis et al. 2016; Song et al. 2021, App. D.2; the "+7" is log2 128 for data in [-1, 1],
"+8" for data in [0, 1]). A scaling k / 127.5 - 1 would give log 127.5 instead; it is not used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

from diffcli.diffusion.likelihood import bits_per_dim
from diffcli.diffusion.schedules import NoiseSchedule

Probe = Literal["rademacher", "gaussian"]
ODEFunc = Callable[[float, Tensor], Tensor]

#: nats per dimension between the density of y in [-1, 1) and that of k + u in [0, 256).
DEQUANT_LOG_SCALE = math.log(128.0)


class SigmaDenoiser(Protocol):
    """What the ODE needs of :class:`~diffcli.diffusion.denoiser.Denoiser`."""

    schedule: NoiseSchedule

    def denoise(self, xbar: Tensor, sigma: float) -> Tensor:
        """D(xbar; sigma), the x0 estimate for xbar = x0 + sigma eps. (B, ...)"""
        ...


# Dormand & Prince (1980) RK5(4)7M: nodes c, stage matrix a, 5th-order weights b (= the last
# stage row, FSAL) and b - b* (5th minus embedded 4th order) for the error estimate.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_E = (35 / 384 - 5179 / 57600, 0.0, 500 / 1113 - 7571 / 16695, 125 / 192 - 393 / 640,
      -2187 / 6784 + 92097 / 339200, 11 / 84 - 187 / 2100, -1 / 40)


@dataclass
class ODESolution:
    """The state at the end time y1 (B, N), the function evaluations used, the accepted and
    rejected step counts."""

    y: Tensor
    nfe: int
    steps: int
    rejected: int


def _error_norm(err: Tensor, y0: Tensor, y1: Tensor, rtol: float, atol: float) -> float:
    """max over samples of the RMS over components of err / (atol + rtol max(|y0|, |y1|)).
    (B, N) each -> float; <= 1 accepts the step."""
    scale = atol + rtol * torch.maximum(y0.abs(), y1.abs())
    return float((err / scale).pow(2).mean(dim=1).sqrt().max())


def _initial_step(f: ODEFunc, t0: float, y0: Tensor, f0: Tensor, span: float,
                  rtol: float, atol: float) -> tuple[float, int]:
    """Hairer, Norsett & Wanner (1993, Sec. II.4) starting step for a 5th-order method; uses
    one extra evaluation. Returns (h, evaluations)."""
    scale = atol + rtol * y0.abs()
    d0 = float((y0 / scale).pow(2).mean(1).sqrt().max())
    d1 = float((f0 / scale).pow(2).mean(1).sqrt().max())
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, span)
    f1 = f(t0 + h0, y0 + h0 * f0)
    d2 = float(((f1 - f0) / scale).pow(2).mean(1).sqrt().max()) / h0
    big = max(d1, d2)
    h1 = max(1e-6, h0 * 1e-3) if big <= 1e-15 else (0.01 / big) ** (1 / 5)
    return min(100 * h0, h1, span), 1


def rk45_solve(f: ODEFunc, y0: Tensor, t0: float, t1: float, *, rtol: float = 1e-5,
               atol: float = 1e-5, max_steps: int = 10_000) -> ODESolution:
    """Integrate dy/dt = f(t, y) from t0 to t1 > t0 with the adaptive Dormand-Prince RK45 pair
    (5th-order solution, embedded 4th-order error estimate, first-same-as-last).

    y0: (B, N), every sample integrated on one shared step sequence; a step is accepted when
    the error norm (:func:`_error_norm`: the worst sample's scaled RMS) is <= 1, and the next
    step is h * clip(0.9 err^(-1/5), 0.2, 10) (at most h after a rejection).
    """
    if not t1 > t0:
        raise ValueError(f"need t1 > t0, got {t0} -> {t1}")
    t, y = t0, y0
    k1 = f(t, y)
    h, nfe = _initial_step(f, t0, y0, k1, t1 - t0, rtol, atol)
    nfe += 1
    steps = rejected = 0
    while t < t1:
        if steps + rejected >= max_steps:
            raise RuntimeError(f"RK45 did not reach t1 = {t1} in {max_steps} steps (t = {t})")
        last = h >= t1 - t
        h = t1 - t if last else h
        ks = [k1]
        for c, row in zip(_C[1:], _A[1:], strict=True):
            stage = y + h * sum(a * k for a, k in zip(row, ks, strict=False) if a != 0.0)
            ks.append(f(t + c * h, stage))
        nfe += 6
        y_new = stage  # the last stage is the 5th-order solution (FSAL)
        err = h * sum(e * k for e, k in zip(_E, ks, strict=True) if e != 0.0)
        norm = _error_norm(err, y, y_new, rtol, atol)
        if not math.isfinite(norm):
            raise FloatingPointError(f"non-finite RK45 error estimate at t = {t} (h = {h})")
        factor = 10.0 if norm == 0 else min(10.0, max(0.2, 0.9 * norm ** -0.2))
        if norm <= 1.0:
            t = t1 if last else t + h
            y, k1 = y_new, ks[-1]
            steps += 1
        else:
            factor = min(1.0, factor)
            rejected += 1
        h *= factor
    return ODESolution(y, nfe, steps, rejected)


def draw_probe(shape: tuple[int, ...], kind: Probe, *, dtype: torch.dtype,
               device: torch.device | str, generator: torch.Generator | None) -> Tensor:
    """A Hutchinson probe with E[z z^T] = I: Rademacher (+-1) or standard Gaussian. (shape)"""
    gen_device = generator.device if generator is not None else device
    if kind == "rademacher":
        z = torch.randint(0, 2, shape, generator=generator, device=gen_device).to(dtype) * 2 - 1
    elif kind == "gaussian":
        z = torch.randn(shape, generator=generator, device=gen_device, dtype=dtype)
    else:
        raise ValueError(f"probe must be 'rademacher' or 'gaussian', got {kind!r}")
    return z.to(device)


def _divergence(f: Tensor, x: Tensor, probe: Tensor | None) -> Tensor:
    """div_x f per sample: the exact trace of df/dx (``probe`` None: one vector-Jacobian product
    per dimension) or Hutchinson's z^T (df/dx) z. f, x, probe: (B, ...) -> (B,)"""
    if probe is not None:
        (vjp,) = torch.autograd.grad(f, x, probe)
        return (vjp * probe).flatten(1).sum(1)
    flat = f.flatten(1)
    total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    for i in range(flat.shape[1]):
        (row,) = torch.autograd.grad(flat[:, i].sum(), x, retain_graph=i + 1 < flat.shape[1])
        total = total + row.flatten(1)[:, i]
    return total


def _flow_field(denoiser: SigmaDenoiser, shape: tuple[int, ...],
                probe: Tensor | None) -> ODEFunc:
    """The joint right-hand side in lambda = log sigma for y = [xbar (flattened), int div]:
    (xbar - D(xbar; e^lambda), div(xbar - D)). (B, N + 1) -> (B, N + 1)"""

    def rhs(lam: float, y: Tensor) -> Tensor:
        with torch.enable_grad():
            x = y[:, :-1].reshape(shape).detach().requires_grad_(True)
            drift = x - denoiser.denoise(x, math.exp(lam))
            div = _divergence(drift, x, probe)
        return torch.cat([drift.detach().flatten(1), div.detach()[:, None]], dim=1)

    return rhs


def _sigma_range(schedule: NoiseSchedule, sigma_min: float | None,
                 sigma_max: float | None) -> tuple[float, float]:
    """The integration range in sigma, default the trained one [sigma_0, sigma_{T-1}]."""
    lo, hi = float(schedule.sigmas[0]), float(schedule.sigmas[-1])
    s_min = lo if sigma_min is None else float(sigma_min)
    s_max = hi if sigma_max is None else float(sigma_max)
    if not lo * (1 - 1e-12) <= s_min < s_max <= hi * (1 + 1e-12):
        raise ValueError(f"need {lo:.4g} <= sigma_min < sigma_max <= {hi:.4g} (the trained "
                         f"noise levels), got {s_min:.4g}, {s_max:.4g}")
    return s_min, s_max


def prior_log_prob(x: Tensor, sigma_max: float) -> Tensor:
    """log N(xbar; 0, (1 + sigma_max^2) I) summed over dimensions: the prior end of the
    variance-exploding flow (x_T ~ N(0, I) in the VP scale). (B, ...) -> (B,)"""
    var = 1.0 + sigma_max**2
    per_dim = -0.5 * math.log(2 * math.pi * var) - 0.5 * x.pow(2) / var
    return per_dim.flatten(1).sum(1)


def ode_log_likelihood(denoiser: SigmaDenoiser, x0: Tensor, *, rtol: float = 1e-5,
                       atol: float = 1e-5, exact_trace: bool = False,
                       probe: Probe = "rademacher", generator: torch.Generator | None = None,
                       sigma_min: float | None = None, sigma_max: float | None = None,
                       max_steps: int = 10_000) -> dict[str, Tensor | int]:
    """-log p(x0) under the probability-flow ODE of ``denoiser``, per sample, in nats.

    Solves the joint ODE of the module docstring from lambda = log sigma_min (xbar = x0,
    integral 0) to log sigma_max with :func:`rk45_solve` (rtol / atol on the joint state), then
    log p(x0) = log N(xbar_max; 0, (1 + sigma_max^2) I) + int div f~ dlambda. x0: (B, ...)
    continuous data; the probe (one per sample, fixed for the solve) is drawn from
    ``generator`` unless ``exact_trace``. The denoiser must treat samples independently.

    Returns ``nats`` (B,) = -log p_{sigma_min}(x0); ``bpd`` (B,) = nats / (D ln 2), D = the
    number of dimensions per sample (no dequantization offset: see :func:`image_nll`);
    ``prior_logp`` (B,), ``delta_logp`` (B,) (the integral), ``latent`` (B, ...) = xbar_max,
    ``nfe`` (int) network evaluations, ``steps`` (int) accepted steps.
    """
    s_min, s_max = _sigma_range(denoiser.schedule, sigma_min, sigma_max)
    z = None if exact_trace else draw_probe(tuple(x0.shape), probe, dtype=x0.dtype,
                                            device=x0.device, generator=generator)
    rhs = _flow_field(denoiser, tuple(x0.shape), z)
    y0 = torch.cat([x0.detach().flatten(1), x0.new_zeros(x0.shape[0], 1)], dim=1)
    sol = rk45_solve(rhs, y0, math.log(s_min), math.log(s_max), rtol=rtol, atol=atol,
                     max_steps=max_steps)
    latent = sol.y[:, :-1].reshape(x0.shape)
    prior, delta = prior_log_prob(latent, s_max), sol.y[:, -1]
    nats = -(prior + delta)
    return {"nats": nats, "bpd": bits_per_dim(nats, x0[0].numel()), "prior_logp": prior,
            "delta_logp": delta, "latent": latent, "nfe": sol.nfe, "steps": sol.steps}


def dequantize(x_uint8: Tensor, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> Tensor:
    """Uniform dequantization of 8-bit values k (B, ...) to y = 2 (k + u) / 256 - 1 in [-1, 1),
    u ~ U[0, 1) elementwise (Theis et al. 2016). (B, ...) in ``dtype``"""
    device = generator.device if generator is not None else x_uint8.device
    u = torch.rand(x_uint8.shape, generator=generator, dtype=dtype, device=device)
    return (x_uint8.to(dtype) + u.to(x_uint8.device)) / 128.0 - 1.0


def dequantized_nats(nats_y: Tensor, dims: int) -> Tensor:
    """The bound on -log P(k) of the 8-bit data from -log p_y(y) of its dequantized
    y = 2 (k + u) / 256 - 1: nats_y + D log 128 (the density of k + u is p_y / 128^D). (B,)"""
    return nats_y + dims * DEQUANT_LOG_SCALE


def image_nll(denoiser: SigmaDenoiser, x_uint8: Tensor, *,
              generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
              rtol: float = 1e-5, atol: float = 1e-5, exact_trace: bool = False,
              probe: Probe = "rademacher", sigma_min: float | None = None,
              sigma_max: float | None = None, max_steps: int = 10_000) -> dict[str, Tensor | int]:
    """Bits/dim of 8-bit images (B, C, H, W) in 0..255 under the ODE: dequantize with
    ``generator`` (:func:`dequantize`), run :func:`ode_log_likelihood` (the other arguments
    passed on; its probe drawn from the same generator) and add the dequantization offset:
    ``nats`` (B,) = -log p_y(y) + D log 128, ``bpd`` = nats / (D ln 2) = -log p_y / (D ln 2) + 7,
    ``nats_y`` = -log p_y(y); the remaining keys as :func:`ode_log_likelihood`'s."""
    y = dequantize(x_uint8, generator, dtype)
    out = ode_log_likelihood(denoiser, y, rtol=rtol, atol=atol, exact_trace=exact_trace,
                             probe=probe, generator=generator, sigma_min=sigma_min,
                             sigma_max=sigma_max, max_steps=max_steps)
    dims = x_uint8[0].numel()
    nats_y = out["nats"]
    assert isinstance(nats_y, Tensor)
    nats = dequantized_nats(nats_y, dims)
    return {**out, "nats_y": nats_y, "nats": nats, "bpd": bits_per_dim(nats, dims)}
