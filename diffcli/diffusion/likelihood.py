"""The variational bound on the negative log-likelihood of a diffusion model, term by term.

Ho et al. 2020, eq. 5, with Nichol & Dhariwal 2021 ("IDDPM"), Sec. 2.1 and 3.1:

    L_vlb = L_T + sum_{t>1} L_{t-1} + L_0,
    L_T     = KL(q(x_T | x_0) || N(0, I)),
    L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)),
    L_0     = -log p(x_0 | x_1).

In code the timestep index t runs 0..T-1 and stands for the paper's t+1, so index t > 0 carries
the KL term L_t-in-code = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) and index 0 the decoder
term -log p(x_0 | x_{t=0}). All terms are in nats, summed over data dimensions, per sample (B,).
Shapes: x0, x_t (B, ...) data tensors; t (B,) long; log-variances broadcastable to x0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from diffcli.diffusion.process import (
    Prediction,
    learned_log_variance,
    posterior_coefficients,
    q_mean_variance,
    q_sample,
    step_log_variances,
)
from diffcli.diffusion.schedules import NoiseSchedule

Decoder = Literal["discrete", "continuous"]
FixedVariance = Literal["beta", "beta_tilde"]
PredictFn = Callable[[Tensor, Tensor], Prediction]
LogVarianceFn = Callable[[Tensor], Tensor]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
#: Half the width of one of the 256 bins of 8-bit data scaled to [-1, 1] (Ho et al. 2020, eq. 13).
BIN_HALF_WIDTH = 1.0 / 255.0


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats:

    1/2 [logvar2 - logvar1 + e^(logvar1 - logvar2) + (mean1 - mean2)^2 e^-logvar2 - 1].
    Inputs broadcast against each other; the result has the broadcast shape.
    """
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2).pow(2) * torch.exp(-logvar2) - 1.0)


def continuous_gaussian_log_likelihood(x0: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log N(x0; mean, e^(2 log_scale)) elementwise, in nats, for non-quantized data such as
    2-D points: -log(2 pi)/2 - log_scale - (x0 - mean)^2 e^(-2 log_scale) / 2. (B, ...)"""
    z = (x0 - mean) * torch.exp(-log_scale)
    return -_HALF_LOG_2PI - log_scale - 0.5 * z.pow(2)


class _LogNdtr(torch.autograd.Function):
    """log Phi(x) (``torch.special.log_ndtr``) with the gradient d/dx log Phi(x) = phi(x) / Phi(x)
    = sqrt(2 / pi) / erfcx(-x / sqrt(2)), which is stable in both tails (torch's own backward
    of log_ndtr returns nan or wrong values for |x| >~ 1e3 in float32)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.special.log_ndtr(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * math.sqrt(2 / math.pi) / torch.special.erfcx(-x / math.sqrt(2))


def _log_ndtr(x: Tensor) -> Tensor:
    """log Phi(x) elementwise, with a stable gradient (:class:`_LogNdtr`)."""
    return _LogNdtr.apply(x)


def _log_sub_exp(log_big: Tensor, log_small: Tensor) -> Tensor:
    """log(e^log_big - e^log_small) for log_big >= log_small, as log_big + log(-expm1(diff)),
    the argument of the outer log clamped at the dtype's tiny so no branch yields -inf / nan."""
    tiny = torch.finfo(log_big.dtype).tiny
    return log_big + torch.log((-torch.expm1(log_small - log_big)).clamp(min=tiny))


def _log_normal_mass(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Phi(hi) - Phi(lo)), hi > lo, for the standard normal CDF Phi, stable in both tails:
    for a bin above zero it uses the mirror image Phi(-lo) - Phi(-hi), so both log-CDFs stay in
    the lower tail where ``log_ndtr`` is accurate. For a bin narrower than 1e-4 standard
    deviations near the centre it uses the midpoint rule log(phi(mid) (hi - lo)), whose relative
    error there is below (hi - lo)^2 (1 + mid^2) / 24 < 1e-8."""
    upper = (lo + hi) > 0
    a = torch.where(upper, -hi, lo)
    b = torch.where(upper, -lo, hi)
    exact = _log_sub_exp(_log_ndtr(b), _log_ndtr(a))
    width, mid = hi - lo, 0.5 * (hi + lo)
    tiny = torch.finfo(width.dtype).tiny
    midpoint = -_HALF_LOG_2PI - 0.5 * mid.pow(2) + torch.log(width.clamp(min=tiny))
    narrow = (width < 1e-4) & (mid.abs() < 10)
    return torch.where(narrow, midpoint, exact)


def discretized_gaussian_log_likelihood(x0: Tensor, mean: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x0) of 8-bit data scaled to [-1, 1] under N(mean, e^(2 log_scale)) integrated over
    each value's bin (Ho et al. 2020, eq. 13), elementwise in nats:

        P(x) = Phi((x + 1/255 - mean)/scale) - Phi((x - 1/255 - mean)/scale),

    with the lowest bin (x = -1) extended to -inf and the highest (x = 1) to +inf, so the 256
    probabilities sum to one. x0 takes the values k/127.5 - 1, k = 0..255. Stable for extreme
    means and scales (log-CDF differences, see :func:`_log_normal_mass`). (B, ...)
    """
    inv_scale = torch.exp(-log_scale)
    centered = x0 - mean
    lo = (centered - BIN_HALF_WIDTH) * inv_scale
    hi = (centered + BIN_HALF_WIDTH) * inv_scale
    mass = _log_normal_mass(lo, hi)
    lower_edge = _log_ndtr(hi)  # log Phi(hi): the bin of x = -1
    upper_edge = _log_ndtr(-lo)  # log(1 - Phi(lo)): the bin of x = 1
    return torch.where(x0 < -0.999, lower_edge, torch.where(x0 > 0.999, upper_edge, mass))


def bits_per_dim(nats: Tensor, dims: int) -> Tensor:
    """Convert a negative log-likelihood in nats per sample (B,) to bits per dimension:
    nats / (dims ln 2). (B,)"""
    return nats / (dims * math.log(2.0))


def prior_kl(schedule: NoiseSchedule, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_T | x_0) || N(0, I)) summed over dimensions, in nats (Ho et al. 2020, eq. 5),
    x_T the last timestep (index T-1). Independent of the model. x0: (B, ...) -> (B,)"""
    t = torch.full((x0.shape[0],), schedule.num_timesteps - 1, dtype=torch.long,
                   device=x0.device)
    mean, var = q_mean_variance(schedule, x0, t)
    zero = torch.zeros((), dtype=x0.dtype, device=x0.device)
    return normal_kl(mean, var.log(), zero, zero).flatten(1).sum(1)


def model_log_variance(schedule: NoiseSchedule, t: Tensor, like: Tensor,
                       var_frac: Tensor | None = None,
                       fixed: FixedVariance = "beta_tilde") -> Tensor:
    """log Sigma_theta(x_t, t) of the reverse step p(x_{t-1} | x_t), in ``like``'s dtype.

    * learned (``var_frac`` (B, ...) given): v log beta_t + (1 - v) log beta-tilde_t
      (Nichol & Dhariwal 2021, eq. 15), beta-tilde at index 0 clipped to index 1's; (B, ...);
    * fixed ``"beta"``: log beta_t (Ho et al. 2020, Sec. 3.2, sigma_t^2 = beta_t);
    * fixed ``"beta_tilde"``: log beta-tilde_t, clipped at index 0 to beta-tilde at index 1
      (sigma_t^2 = beta-tilde_t; the clip keeps the decoder's variance finite).

    t: (B,) long. Fixed variances are shaped (B, 1, ..., 1) like ``like``.
    """
    log_beta, log_tilde = step_log_variances(schedule, t, like)
    if var_frac is not None:
        return learned_log_variance(var_frac, log_beta.exp(), log_tilde.exp())
    if fixed == "beta":
        return log_beta
    if fixed == "beta_tilde":
        return log_tilde
    raise ValueError(f"fixed variance must be 'beta' or 'beta_tilde', got {fixed!r}")


def _gather(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """values[t] kept in float64 (values (T,) float64, t (B,)), reshaped to (B, 1, ..., 1)."""
    return values.to(t.device)[t].reshape(t.shape[0], *([1] * (like.ndim - 1)))


def posterior_mean_coefficients(schedule: NoiseSchedule, t: Tensor,
                                like: Tensor) -> tuple[Tensor, Tensor]:
    """(c0, ct) of the posterior mean mu-tilde_t = c0 x0 + ct x_t (Ho et al. 2020, eq. 7),
    computed in float64 and then cast to ``like``'s dtype, so c0 = 1, ct = 0 at index 0 hold
    to float64 precision even for float32 data. (B, 1, ..., 1) each."""
    abar = _gather(schedule.alphas_cumprod, t, like)
    abar_prev = _gather(schedule.alphas_cumprod_prev, t, like)
    c0, ct, _ = posterior_coefficients(abar, abar_prev)
    return c0.to(like.dtype), ct.to(like.dtype)


def vlb_terms(pred: Prediction, schedule: NoiseSchedule, x0: Tensor, x_t: Tensor, t: Tensor, *,
              decoder: Decoder = "discrete", fixed_variance: FixedVariance = "beta_tilde",
              detach_mean: bool = False, log_variance: Tensor | None = None) -> Tensor:
    """One term of the bound per sample, in nats summed over dimensions. (B,)

    The model's reverse step is p(x_{t-1} | x_t) = N(mu-tilde_t(x0_hat, x_t), Sigma_theta) with
    x0_hat = ``pred.x0`` (Ho et al. 2020, eq. 7 / 11) and log Sigma_theta from
    :func:`model_log_variance` (learned from ``pred.var_frac`` when present, else
    ``fixed_variance``), or ``log_variance`` (broadcastable to x0) when given explicitly.

    * t > 0: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), q's variance beta-tilde_t (eq. 6-7);
    * t == 0: -log p(x_0 | x_{t=0}) with mean mu-tilde_0 = x0_hat and the model's variance at
      t = 0; ``decoder="discrete"``: the 256-bin decoder of eq. 13 (x0 8-bit data in [-1, 1]);
      ``"continuous"``: the Gaussian density (non-quantized data).

    ``detach_mean``: stop the gradient through the mean (x0_hat) but keep it through the
    variance: the L_vlb part of IDDPM's L_hybrid (Nichol & Dhariwal 2021, Sec. 3.1).
    x0, x_t: (B, ...); t: (B,) long.
    """
    x0_hat = pred.x0.detach() if detach_mean else pred.x0
    c0, ct = posterior_mean_coefficients(schedule, t, x0)
    model_mean = c0 * x0_hat + ct * x_t
    if log_variance is None:
        log_variance = model_log_variance(schedule, t, x0, pred.var_frac, fixed_variance)
    true_mean = c0 * x0 + ct * x_t
    true_logvar = step_log_variances(schedule, t, x0)[1]  # clipped at t = 0 (branch unused)
    kl = normal_kl(true_mean, true_logvar, model_mean, log_variance)
    nll = -_decoder_log_likelihood(decoder, x0, model_mean, 0.5 * log_variance)
    kl, nll = (v.expand_as(x0).flatten(1).sum(1) for v in (kl, nll))
    return torch.where(t == 0, nll, kl)


def _decoder_log_likelihood(decoder: Decoder, x0: Tensor, mean: Tensor,
                            log_scale: Tensor) -> Tensor:
    """log p(x_0 | x_1) elementwise with the chosen decoder. (B, ...)"""
    if decoder == "discrete":
        return discretized_gaussian_log_likelihood(x0, mean, log_scale)
    if decoder == "continuous":
        return continuous_gaussian_log_likelihood(x0, mean, log_scale)
    raise ValueError(f"decoder must be 'discrete' or 'continuous', got {decoder!r}")


def geometric_strata(num_timesteps: int, num_strata: int) -> list[tuple[int, int]]:
    """Split the KL timesteps 1..T-1 into at most ``num_strata`` contiguous strata [lo, hi) with
    geometrically growing lengths (edges round(geomspace(1, T, K + 1)), duplicates dropped), so
    that the small t, where L_t is largest and changes fastest (IDDPM, Fig. 2), get short
    strata."""
    if num_timesteps < 2:
        return []
    edges = torch.logspace(0, math.log10(num_timesteps), max(1, num_strata) + 1,
                           dtype=torch.float64).round().long().unique().tolist()
    edges[0], edges[-1] = 1, num_timesteps
    return [(lo, hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo]


def stratified_terms(num_timesteps: int, num_terms: int) -> tuple[list[int], list[float]]:
    """A deterministic K-term quadrature of the bound's KL sum: one timestep per
    :func:`geometric_strata` stratum [lo, hi), at its geometric middle round(sqrt(lo (hi - 1))),
    weighted by the stratum's length; plus t = 0 with weight 1. L_t falls off roughly like 1 / t
    (Nichol & Dhariwal 2021, Fig. 2), where right-endpoint (strided) terms underestimate the sum
    badly and geometric middles do not. Returns (timesteps, weights), t = 0 first."""
    strata = geometric_strata(num_timesteps, num_terms)
    steps = [0] + [int(round(math.sqrt(lo * (hi - 1)))) for lo, hi in strata]
    return steps, [1.0] + [float(hi - lo) for lo, hi in strata]


def term_weights(timesteps: Sequence[int], num_timesteps: int) -> Tensor:
    """Weights w_k with which the evaluated terms L_{t_k} estimate the full sum over t = 0..T-1.

    The decoder term (t = 0) is always evaluated, once, with weight 1. The KL terms at the other
    sorted timesteps t_1 < ... < t_K stand for blocks of steps: t_k for (t_{k-1}, t_k]
    (t_0 = 0), the last one also for the steps after it up to T - 1; the weight is the block's
    length, t_k - t_{k-1} (a Riemann sum of the KL curve). On a grid 0, s, 2s, ..., T - 1 every
    KL weight is the stride s; all T timesteps give all weights 1, the exact sum.
    (K + 1,) float64
    """
    steps = sorted({int(s) for s in timesteps} | {0})
    if steps[-1] >= num_timesteps:
        raise ValueError(f"timesteps must lie in 0..{num_timesteps - 1}, got {steps[-1]}")
    if steps[0] < 0:
        raise ValueError(f"timesteps must be non-negative, got {steps[0]}")
    weights = [1.0] + [float(k - p) for p, k in zip(steps[:-1], steps[1:], strict=True)]
    if len(steps) > 1:
        weights[-1] += num_timesteps - 1 - steps[-1]
    return torch.tensor(weights, dtype=torch.float64)


def _noise_like(x0: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise shaped like x0, drawn on the generator's device."""
    device = generator.device if generator is not None else x0.device
    out = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=device)
    return out.to(x0.device)


@torch.no_grad()
def nll_vlb(denoiser: PredictFn, schedule: NoiseSchedule, x0: Tensor, *,
            timesteps: Sequence[int] | None = None, generator: torch.Generator | None = None,
            decoder: Decoder = "discrete", fixed_variance: FixedVariance = "beta_tilde",
            log_variance: LogVarianceFn | None = None, clip_x0: bool = False,
            on_step: Callable[[int, int], None] | None = None,
            weights: Sequence[float] | None = None) -> dict[str, Tensor]:
    """The variational bound L_vlb = L_T + sum_t L_t per sample (Ho et al. 2020, eq. 5).

    For each evaluated timestep t one noise draw eps ~ N(0, I) (from ``generator``, shared by
    nothing else) gives x_t = q_sample(x0, t, eps) and the term :func:`vlb_terms` of
    ``denoiser(x_t, t)``: a single-sample Monte-Carlo estimate of E_q[L_t]. With ``timesteps``
    None every t in 0..T-1 is evaluated and the total is the bound itself (its one-sample
    estimate); with a subset, the KL terms are weighted by :func:`term_weights` (t_k stands
    for the steps (t_{k-1}, t_k]; a stride-s grid gives weights s) and the total is a
    Riemann-sum estimate of the bound, not a bound. The decoder term t = 0 is always
    included; explicit ``weights`` (one per sorted timestep, t = 0 first) replace the Riemann
    weights (:func:`stratified_terms`). ``log_variance(t (B,)) -> (B, ...)`` overrides the model's
    reverse log-variances (e.g. the exact ones of a known distribution); ``clip_x0`` clamps
    x0_hat to [-1, 1] (image models). ``on_step(i, n)`` is called after each of the n terms.

    Returns (nats summed over the D = x0[0].numel() dimensions):
    ``nats`` (B,) the total; ``bpd`` (B,) nats / (D ln 2), for 8-bit images in [-1, 1] with the
    discrete decoder the bits/dim of the 8-bit data; ``prior`` (B,) L_T; ``terms`` (K,) the
    batch mean of each evaluated L_t (unweighted, for a curve of L_t against t);
    ``timesteps`` (K,) long; ``weights`` (K,) float64.
    """
    chosen = range(schedule.num_timesteps) if timesteps is None else timesteps
    steps = sorted({int(s) for s in chosen} | {0})
    if weights is None:
        weights = term_weights(steps, schedule.num_timesteps)
    else:  # explicit quadrature weights, one per sorted timestep (e.g. stratified_terms)
        weights = torch.as_tensor(list(weights), dtype=torch.float64)
        if len(weights) != len(steps):
            raise ValueError(f"{len(weights)} weights for {len(steps)} timesteps")
    total = prior_kl(schedule, x0)
    prior = total.clone()
    means = []
    for i, (step, w) in enumerate(zip(steps, weights.tolist(), strict=True)):
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
        x_t = q_sample(schedule, x0, t, _noise_like(x0, generator))
        pred = denoiser(x_t, t)
        if clip_x0:
            pred = pred._replace(x0=pred.x0.clamp(-1.0, 1.0))
        logvar = None if log_variance is None else log_variance(t)
        term = vlb_terms(pred, schedule, x0, x_t, t, decoder=decoder,
                         fixed_variance=fixed_variance, log_variance=logvar)
        total = total + w * term
        means.append(term.mean())
        if on_step is not None:
            on_step(i, len(steps))
    dims = x0[0].numel()
    return {"nats": total, "bpd": bits_per_dim(total, dims), "prior": prior,
            "terms": torch.stack(means), "timesteps": torch.tensor(steps, dtype=torch.long),
            "weights": weights}
