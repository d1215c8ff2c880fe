"""Training objectives. The network is an argument; nothing here owns it.

* :func:`diffusion_loss`: L_simple (Ho et al. 2020, eq. 14);
* :func:`hybrid_loss`: L_hybrid = L_simple + lambda L_vlb for a network that learns its
  variances (Nichol & Dhariwal 2021, "IDDPM", Sec. 3.1);
* :func:`vlb_loss` with :class:`ImportanceSampler`: L_vlb alone with importance-sampled
  timesteps (IDDPM, Sec. 3.3);
* :func:`vlb_estimate`: a cheap stratified estimate of the bound in bits/dim for logging.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from diffcli.diffusion.likelihood import (
    Decoder,
    FixedVariance,
    bits_per_dim,
    geometric_strata,
    prior_kl,
    vlb_terms,
)
from diffcli.diffusion.process import (
    Parameterization,
    Prediction,
    extract,
    q_sample,
    target_for,
    to_x0_eps,
)
from diffcli.diffusion.schedules import NoiseSchedule

Network = Callable[[Tensor, Tensor], Tensor]


def min_snr_weight(snr: Tensor, gamma: float, kind: Parameterization | str) -> Tensor:
    """Min-SNR-gamma loss weight (Hang et al. 2023, eq. 7 and Sec. 3.4).

    The x0-space weight is min(SNR, gamma); expressed for the network's own target it becomes
    min(SNR, gamma)/SNR for eps, min(SNR, gamma) for x0 and min(SNR, gamma)/(SNR + 1) for v.
    """
    clipped = torch.clamp(snr, max=gamma)
    kind = Parameterization(kind)
    if kind is Parameterization.EPS:
        return clipped / snr
    if kind is Parameterization.X0:
        return clipped
    return clipped / (snr + 1)


def diffusion_loss(
    net: Network,
    schedule: NoiseSchedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    prediction: Parameterization | str = Parameterization.EPS,
    min_snr_gamma: float | None = None,
) -> Tensor:
    """L_simple (Ho et al. 2020, eq. 14) on the chosen target, optionally Min-SNR weighted.

    x0, noise: (B, ...); t: (B,) long. Returns a scalar: the batch mean of the per-sample
    mean squared error between ``net(x_t, t)`` and the target (eps, x0 or v).
    """
    x_t = q_sample(schedule, x0, t, noise)
    abar = extract(schedule.alphas_cumprod, t, x0)
    target = target_for(prediction, x0, noise, abar)
    per_sample = (net(x_t, t) - target).pow(2).flatten(1).mean(dim=1)  # (B,)
    if min_snr_gamma is not None:
        snr = schedule.snr.to(t.device)[t].to(per_sample.dtype)
        per_sample = per_sample * min_snr_weight(snr, min_snr_gamma, prediction)
    return per_sample.mean()


def split_learned(output: Tensor) -> tuple[Tensor, Tensor]:
    """Split the 2C-channel output of a network with learned variances (IDDPM, Sec. 3.1) along
    dim 1: the first C channels are the prediction (eps / x0 / v), the last C the raw variance
    output r (nominally in [-1, 1]), mapped to var_frac v = (r + 1) / 2 of IDDPM's eq. 15
    (log Sigma = v log beta_t + (1 - v) log beta-tilde_t). (B, 2C, ...) -> 2 x (B, C, ...)"""
    if output.ndim < 2 or output.shape[1] % 2:
        raise ValueError(f"a learned-variance output needs an even channel dim 1, got shape "
                         f"{tuple(output.shape)}")
    mean_out, raw = output.chunk(2, dim=1)
    return mean_out, (raw + 1) / 2


def learned_prediction(output: Tensor, prediction: Parameterization | str, x_t: Tensor,
                       abar: Tensor) -> Prediction:
    """The :class:`Prediction` (x0, eps, var_frac) of a learned-variance output (B, 2C, ...):
    :func:`split_learned`, then :func:`~diffcli.diffusion.process.to_x0_eps` on the mean
    half. abar: (B, 1, ...)."""
    mean_out, var_frac = split_learned(output)
    return to_x0_eps(mean_out, prediction, x_t, abar)._replace(var_frac=var_frac)


def _dims(x0: Tensor) -> int:
    return x0[0].numel()


def hybrid_loss(
    net: Network,
    schedule: NoiseSchedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    prediction: Parameterization | str = Parameterization.EPS,
    vlb_weight: float = 0.001,
    *,
    decoder: Decoder = "discrete",
    min_snr_gamma: float | None = None,
) -> Tensor:
    """L_hybrid = L_simple + lambda L_vlb (Nichol & Dhariwal 2021, Sec. 3.1; lambda = 0.001).

    ``net(x_t, t)`` outputs 2C channels (:func:`split_learned`). L_simple is the per-sample
    mean squared error of the first C channels against the target, as in
    :func:`diffusion_loss` (optionally Min-SNR weighted). L_vlb is the single-timestep estimate
    T L_t of the bound's sum over t (uniform t: E_t[T L_t] = sum_t L_t; L_T has no
    parameters), with L_t from :func:`~diffcli.diffusion.likelihood.vlb_terms` with the mean
    **detached**, so L_vlb trains only the variance channels, and measured in bits per
    dimension (nats summed over the D dims / (D ln 2)), as IDDPM does (its ``vb`` term times
    T / 1000 with lambda folded in): lambda keeps its paper meaning. x0, noise: (B, C, ...);
    t: (B,) long. Returns the batch mean, a scalar.
    """
    x_t = q_sample(schedule, x0, t, noise)
    abar = extract(schedule.alphas_cumprod, t, x0)
    mean_out, var_frac = split_learned(net(x_t, t))
    pred = to_x0_eps(mean_out, prediction, x_t, abar)._replace(var_frac=var_frac)
    simple = (mean_out - target_for(prediction, x0, noise, abar)).pow(2).flatten(1).mean(dim=1)
    if min_snr_gamma is not None:
        snr = schedule.snr.to(t.device)[t].to(simple.dtype)
        simple = simple * min_snr_weight(snr, min_snr_gamma, prediction)
    nats = vlb_terms(pred, schedule, x0, x_t, t, decoder=decoder, detach_mean=True)
    vlb = schedule.num_timesteps * bits_per_dim(nats, _dims(x0))
    return (simple + vlb_weight * vlb).mean()


def vlb_loss(
    net: Network,
    schedule: NoiseSchedule,
    x0: Tensor,
    t: Tensor,
    noise: Tensor,
    prediction: Parameterization | str = Parameterization.EPS,
    weights: Tensor | None = None,
    *,
    decoder: Decoder = "discrete",
    learned_variance: bool = True,
    fixed_variance: FixedVariance = "beta_tilde",
) -> tuple[Tensor, Tensor]:
    """L_vlb alone (Nichol & Dhariwal 2021, Sec. 3.3), the mean not detached.

    Per sample the term L_{t_b} (:func:`~diffcli.diffusion.likelihood.vlb_terms`) in bits per
    dimension, times its importance weight w_b = 1 / (T p_{t_b}) (``weights`` from
    :meth:`ImportanceSampler.sample`; None: uniform t, all 1). Then
    E_{t ~ p}[w_t L_t] = (1/T) sum_t L_t: the loss (the batch mean) is an unbiased estimate of
    (L_vlb - L_T) / T in bits/dim. ``learned_variance``: the net outputs 2C channels
    (:func:`split_learned`), else C channels with the ``fixed_variance``.
    Returns (loss scalar, the unweighted per-sample terms (B,) detached, for
    :meth:`ImportanceSampler.update`).
    """
    x_t = q_sample(schedule, x0, t, noise)
    abar = extract(schedule.alphas_cumprod, t, x0)
    output = net(x_t, t)
    pred = (learned_prediction(output, prediction, x_t, abar) if learned_variance
            else to_x0_eps(output, prediction, x_t, abar))
    nats = vlb_terms(pred, schedule, x0, x_t, t, decoder=decoder, fixed_variance=fixed_variance)
    terms = bits_per_dim(nats, _dims(x0))
    weighted = terms if weights is None else terms * weights.to(terms)
    return weighted.mean(), terms.detach()


class ImportanceSampler(nn.Module):
    """Importance sampling of timesteps for L_vlb (Nichol & Dhariwal 2021, Sec. 3.3):
    p_t proportional to sqrt(E[L_t^2]) over the last ``history`` values of each L_t, uniform
    until every t has ``history`` values, then mixed with ``uniform_prob`` of the uniform
    distribution (p = (1 - u) p + u / T, as IDDPM's implementation does).

    The history lives in two buffers, ``loss_history`` (T, history) float64 and ``counts``
    (T,) long, so that as a submodule of a LightningModule it is saved and restored with the
    checkpoint's state_dict (and moves with ``.to(device)``).
    """

    loss_history: Tensor
    counts: Tensor

    def __init__(self, num_timesteps: int, history: int = 10, uniform_prob: float = 0.001):
        super().__init__()
        if num_timesteps < 1 or history < 1 or not 0.0 <= uniform_prob <= 1.0:
            raise ValueError("need num_timesteps >= 1, history >= 1, 0 <= uniform_prob <= 1")
        self.num_timesteps, self.history, self.uniform_prob = num_timesteps, history, uniform_prob
        self.register_buffer("loss_history", torch.zeros(num_timesteps, history,
                                                         dtype=torch.float64))
        self.register_buffer("counts", torch.zeros(num_timesteps, dtype=torch.long))

    @property
    def warmed_up(self) -> bool:
        """Whether every timestep has a full history."""
        return bool((self.counts >= self.history).all())

    def probabilities(self) -> Tensor:
        """p_t, (T,) float64 summing to 1: uniform before warm-up, else
        (1 - u) sqrt(E[L_t^2]) / sum_s sqrt(E[L_s^2]) + u / T."""
        uniform = torch.full((self.num_timesteps,), 1.0 / self.num_timesteps,
                             dtype=torch.float64, device=self.counts.device)
        if not self.warmed_up:
            return uniform
        rms = self.loss_history.pow(2).mean(dim=1).sqrt()
        if not float(rms.sum()) > 0.0:
            return uniform
        return (1 - self.uniform_prob) * rms / rms.sum() + self.uniform_prob * uniform

    def sample(self, batch: int, *, generator: torch.Generator | None = None,
               device: torch.device | str | None = None) -> tuple[Tensor, Tensor]:
        """t ~ p (B,) long and the weights 1 / (T p_t) (B,) float32 that make a weighted mean
        an unbiased estimate of the uniform average over t, on ``device`` (default the
        buffers'); drawn on the generator's device."""
        p = self.probabilities()
        draw_on = generator.device if generator is not None else p.device
        t = torch.multinomial(p.to(draw_on), batch, replacement=True, generator=generator)
        weights = 1.0 / (self.num_timesteps * p.to(draw_on)[t])
        device = p.device if device is None else device
        return t.to(device), weights.to(device=device, dtype=torch.float32)

    @torch.no_grad()
    def update(self, t: Tensor, losses: Tensor) -> None:
        """Append each loss value to its timestep's history, in batch order (the oldest value
        drops out of a full history). t: (B,) long, losses: (B,)."""
        history = self.loss_history.cpu()
        counts = self.counts.cpu()
        for step, loss in zip(t.tolist(), losses.detach().double().cpu().tolist(), strict=True):
            n = int(counts[step])
            if n < self.history:
                history[step, n] = loss
                counts[step] = n + 1
            else:
                history[step, :-1] = history[step, 1:].clone()
                history[step, -1] = loss
        self.loss_history.copy_(history)
        self.counts.copy_(counts)


def net_predictor(net: Network, schedule: NoiseSchedule,
                  prediction: Parameterization | str = Parameterization.EPS,
                  learned_variance: bool = False) -> Callable[[Tensor, Tensor], Prediction]:
    """``net`` as a (x_t, t) -> :class:`Prediction` callable on training timesteps t (B,) long,
    splitting 2C-channel outputs when ``learned_variance`` (:func:`learned_prediction`)."""

    def predict(x_t: Tensor, t: Tensor) -> Prediction:
        abar = extract(schedule.alphas_cumprod, t, x_t)
        output = net(x_t, t)
        if learned_variance:
            return learned_prediction(output, prediction, x_t, abar)
        return to_x0_eps(output, prediction, x_t, abar)

    return predict


@torch.no_grad()
def vlb_estimate(
    net: Network,
    schedule: NoiseSchedule,
    x0: Tensor,
    prediction: Parameterization | str = Parameterization.EPS,
    *,
    learned_variance: bool = False,
    num_terms: int = 8,
    generator: torch.Generator | None = None,
    decoder: Decoder = "discrete",
    fixed_variance: FixedVariance = "beta_tilde",
) -> Tensor:
    """A cheap unbiased estimate of the bound for logging (e.g. ``train/vlb``), the batch mean
    in bits per dimension: L_T + L_0 + sum over :func:`geometric_strata` of |stratum| L_t at
    one timestep t drawn uniformly in the stratum (stratified sampling; shared by the batch),
    each L_t at one noise draw. Unbiased for the bound over the random timesteps and noise;
    ``num_terms`` + 1 network calls. Scalar, no gradient."""
    predict = net_predictor(net, schedule, prediction, learned_variance)
    total = prior_kl(schedule, x0)
    strata = [(0, 1)] + geometric_strata(schedule.num_timesteps, num_terms)
    for lo, hi in strata:
        step = int(torch.randint(lo, hi, (1,), generator=generator))
        t = torch.full((x0.shape[0],), step, dtype=torch.long, device=x0.device)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                            device=generator.device if generator is not None else x0.device)
        x_t = q_sample(schedule, x0, t, noise.to(x0.device))
        term = vlb_terms(predict(x_t, t), schedule, x0, x_t, t, decoder=decoder,
                         fixed_variance=fixed_variance)
        total = total + (hi - lo) * term
    return bits_per_dim(total, _dims(x0)).mean()
