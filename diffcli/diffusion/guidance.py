"""Guidance as wrappers of the denoiser: every sampler gets guided sampling unchanged, because
samplers only call :meth:`Denoiser.evaluate` (through ``__call__``, ``predict`` and ``denoise``).

* :class:`ClassifierFreeGuidance` (Ho & Salimans 2022): a class-conditional network
  ``net(x_t, t, y)`` evaluated with the labels and with the null label, combined as
  out_uncond + w (out_cond - out_uncond) (eq. 6), optionally only on a sigma interval
  (Kynkäänniemi et al. 2024) and with Lin et al.'s (2024) rescale.
* :class:`ClassifierGuidance` (Dhariwal & Nichol 2021): any denoiser's eps shifted by
  -s sqrt(1 - abar) grad_{x_t} log p(y | x_t) of a noise-aware classifier (Sec. 4.2,
  Algorithm 2).

Shapes: x_t (B, ...), t (B,) long (training timesteps) or float64 (between them), abar
broadcastable to x_t (B, 1, ...), labels (B,) int64.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from diffcli.diffusion.denoiser import Denoiser, split_learned
from diffcli.diffusion.process import Prediction, eps_from_x0, x0_from_eps

Classifier = Callable[[Tensor, Tensor], Tensor]


def _check_scale(scale: object, name: str) -> None:
    ok = isinstance(scale, int | float) and not isinstance(scale, bool)
    if not (ok and math.isfinite(scale) and scale >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {scale!r}")


def _check_labels(labels: Tensor | None, num_classes: int | None = None) -> Tensor | None:
    """labels as (B,) int64, checked to be classes 0..num_classes-1 (when num_classes is known).
    None passes through."""
    if labels is None:
        return None
    if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.is_floating_point() \
            or labels.dtype == torch.bool or labels.is_complex():
        raise ValueError(f"labels must be a (B,) integer tensor of classes, got {labels!r}")
    if num_classes is not None and labels.numel() and bool(
            ((labels < 0) | (labels >= num_classes)).any()):
        raise ValueError(f"labels must be classes 0..{num_classes - 1} (num_classes="
                         f"{num_classes}; {num_classes} is the null label), got values "
                         f"{int(labels.min())}..{int(labels.max())}")
    return labels.long()


def _check_tokens(tokens: Tensor | None, null: Tensor) -> Tensor | None:
    """Conditions of a net whose null condition is the tensor ``null`` (e.g. token ids (L,)):
    (B, *null.shape) integers. None passes through."""
    if tokens is None:
        return None
    if not isinstance(tokens, Tensor) or tuple(tokens.shape[1:]) != tuple(null.shape) \
            or tokens.is_floating_point() or tokens.dtype == torch.bool:
        raise ValueError(f"conditions must be integer tensors of shape (B, {tuple(null.shape)}), "
                         f"like the null condition, got {tokens!r}")
    return tokens.long()


def _batch_labels(labels: Tensor, x_t: Tensor) -> Tensor:
    """labels (B,) on x_t's device, checked against the batch size B of x_t."""
    if labels.shape[0] != x_t.shape[0]:
        raise ValueError(f"got {labels.shape[0]} labels for a batch of {x_t.shape[0]}")
    return labels.to(x_t.device)


def sigma_of(denoiser: Denoiser, t: Tensor) -> Tensor:
    """The noise level sigma_t = sqrt((1 - abar_t) / abar_t) of timesteps t (B,), in float64:
    the schedule's table on training timesteps, its log-sigma interpolation between them.
    (B,) float64"""
    return denoiser.schedule.sigma_at(t)


def rescaled_x0(x0_guided: Tensor, x0_cond: Tensor, phi: float) -> Tensor:
    """Lin et al. (2024), Sec. 3.4 (eqs. 15-18) on the x0 estimate: per sample,
    x_rescaled = x_cfg std(x_pos) / std(x_cfg), then phi x_rescaled + (1 - phi) x_cfg, the
    stds over all non-batch dimensions. x0_guided, x0_cond: (B, ...) -> (B, ...)"""
    dims = tuple(range(1, x0_guided.ndim))
    std_cfg = x0_guided.std(dim=dims, correction=0, keepdim=True)
    std_pos = x0_cond.std(dim=dims, correction=0, keepdim=True)
    ratio = torch.where(std_cfg > 0, std_pos / std_cfg, torch.ones_like(std_cfg))
    return phi * (x0_guided * ratio) + (1 - phi) * x0_guided


@dataclass(frozen=True, eq=False, kw_only=True)
class ClassifierFreeGuidance(Denoiser):
    """Classifier-free guidance (Ho & Salimans 2022) of a class-conditional ``net(x_t, t, y)``.

    Output = out_uncond + w (out_cond - out_uncond) (eq. 6, written there for eps) with
    out_cond = net(x_t, t, labels), out_uncond = net(x_t, t, num_classes) (the null label)
    and w = ``scale``: w = 0 is the unconditional model, w = 1 the conditional one, w > 1
    sharpens toward the class. The combination is applied to the raw output in the net's own
    parameterization; for eps, x0 or v it is the same, because at fixed (x_t, t) each is an
    affine function of the others with coefficients of the output summing to one
    (x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar), v = sqrt(abar) eps - sqrt(1 - abar) x0), and
    affine maps commute with the weights (1 - w, w), which sum to one.

    Fields: ``num_classes`` K (labels 0..K-1, K the null label), or instead ``null``: the null
    condition of one sample as a tensor, e.g. the empty prompt's token ids (L,) of a
    text-to-image net (Rombach et al. 2022; ``labels`` are then (B, L) token ids, and the null
    branch gets ``null`` for every sample); ``scale`` w >= 0; ``labels``
    (B,) int64 (None: the null label for every sample, i.e. unconditional sampling);
    ``interval`` [lo, hi]: apply guidance only where lo <= sigma_t <= hi, elsewhere w = 1
    (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval"); ``rescale`` phi in
    [0, 1]: Lin et al. (2024, Sec. 3.4), applied to the x0 estimate: the guided x0's
    per-sample std is rescaled to the conditional x0's, mixed by phi (eps then follows from x0
    and x_t). phi = 0 leaves the guided output untouched.

    With ``learned_variance`` (a net of 2C outputs, split by
    :func:`~diffcli.diffusion.denoiser.split_learned`), eq. 6 combines the prediction halves
    only, and ``var_frac`` is the conditional branch's on every sample (as GLIDE, Nichol et al.
    2022, samples: the guided mean with the conditional variance); the rescale leaves it alone.
    Without labels it is the null branch's (the unconditional model's).

    Network evaluations: w = 0 (with rescale 0) or no labels: one forward of B with the null
    label (with ``learned_variance`` and labels, w = 0 still needs the conditional branch for
    its variance, so it takes the 2B path); w = 1 or no sample inside ``interval``: one
    forward of B with the labels; else one batched forward of 2B (cat of [x_t, x_t], [t, t],
    [labels, null]), split in halves.
    """

    num_classes: int | None = None
    scale: float = 1.0
    labels: Tensor | None = None
    interval: tuple[float, float] | None = None
    rescale: float = 0.0
    null: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        k = self.num_classes
        _check_scale(self.scale, "scale")
        if self.null is not None:
            object.__setattr__(self, "labels", _check_tokens(self.labels, self.null))
        elif not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {k!r}")
        else:
            object.__setattr__(self, "labels", _check_labels(self.labels, k))
        self._check_interval()
        r = self.rescale
        if not (isinstance(r, int | float) and not isinstance(r, bool) and 0 <= r <= 1):
            raise ValueError(f"rescale must be in [0, 1], got {r!r}")

    def _check_interval(self) -> None:
        if self.interval is None:
            return
        try:
            lo, hi = (float(v) for v in self.interval)
        except (TypeError, ValueError):
            raise ValueError(f"interval must be a pair [lo, hi] of sigmas, got "
                             f"{self.interval!r}") from None
        if math.isnan(lo) or math.isnan(hi) or not 0 <= lo <= hi:
            raise ValueError(f"interval must be sigmas 0 <= lo <= hi, got {self.interval!r}")
        object.__setattr__(self, "interval", (lo, hi))

    @property
    def takes_labels(self) -> bool:
        return True

    def with_labels(self, labels: Tensor | None) -> ClassifierFreeGuidance:
        """The same guidance with ``labels`` (B,) int64 (None: the null label for all)."""
        return dataclasses.replace(self, labels=labels)

    def null_batch(self, x_t: Tensor) -> Tensor:
        """The null condition for a batch x_t (B, ...): labels (B,) all K, or ``null`` repeated
        (B, *null.shape)."""
        b = x_t.shape[0]
        if self.null is not None:
            return self.null.to(x_t.device).expand(b, *self.null.shape)
        return torch.full((b,), int(self.num_classes or 0), dtype=torch.long, device=x_t.device)

    def guided(self, t: Tensor) -> Tensor:
        """Which samples are guided: sigma_t inside ``interval`` (all when it is None). (B,) bool"""
        if self.interval is None:
            return torch.ones(t.shape[0], dtype=torch.bool, device=t.device)
        sigma = sigma_of(self, t)
        return (sigma >= self.interval[0]) & (sigma <= self.interval[1])

    def _forward(self, x_t: Tensor, t: Tensor, y: Tensor, abar: Tensor) -> Prediction:
        return self.prediction_of(self.net(*self.net_inputs(x_t, t), y), x_t, t, abar)

    def evaluate(self, x_t: Tensor, t: Tensor, abar: Tensor) -> Prediction:
        """(x0, eps[, var_frac]) of the guided output for x_t (B, ...) at t (B,); each
        (B, ...)."""
        null = self.null_batch(x_t)
        if self.labels is None:
            return self._forward(x_t, t, null, abar)
        labels = _batch_labels(self.labels, x_t)
        mask = self.guided(t)
        if self.scale == 1 or not bool(mask.any()):
            return self._forward(x_t, t, labels, abar)
        unconditional = self.scale == 0 and self.rescale == 0 and not self.learned_variance
        if unconditional and bool(mask.all()):
            return self._forward(x_t, t, null, abar)
        x_in, t_in = self.net_inputs(x_t, t)
        out = self.net(torch.cat([x_in, x_in]), torch.cat([t_in, t_in]),
                       torch.cat([labels, null]))
        out_c, out_u = out.chunk(2)
        var_frac = None
        if self.learned_variance:  # (B, 2C, ...) each: guide the prediction half only
            (out_c, var_frac), (out_u, _) = split_learned(out_c), split_learned(out_u)
        return self._combine(x_t, t, abar, out_c, out_u, mask)._replace(var_frac=var_frac)

    def _combine(self, x_t: Tensor, t: Tensor, abar: Tensor, out_c: Tensor, out_u: Tensor,
                 mask: Tensor) -> Prediction:
        """eq. 6 on the guided samples (mask (B,)) of the predictions out_c, out_u (B, C, ...),
        the conditional one on the others, then the rescale of the x0 estimate. (x0, eps) each
        (B, ...)."""
        rows = mask.reshape(-1, *([1] * (x_t.ndim - 1)))
        out = torch.where(rows, out_u + self.scale * (out_c - out_u), out_c)
        pred = self.to_prediction(out, x_t, t, abar)
        if self.rescale == 0:
            return pred
        x0_c = self.to_prediction(out_c, x_t, t, abar).x0
        x0 = torch.where(rows, rescaled_x0(pred.x0, x0_c, self.rescale), pred.x0)
        return Prediction(x0, eps_from_x0(x_t, x0, abar))


@dataclass(frozen=True, eq=False, kw_only=True)
class ClassifierGuidance(Denoiser):
    """Classifier guidance (Dhariwal & Nichol 2021, Sec. 4.2 and Algorithm 2) of ``base``.

    eps' = eps - s sqrt(1 - abar) grad_{x_t} log p_phi(y | x_t) and
    x0' = (x_t - sqrt(1 - abar) eps') / sqrt(abar), with eps from ``base`` (any denoiser, e.g.
    a :class:`ClassifierFreeGuidance`), ``classifier(x_t, t) -> logits (B, K)`` a noise-aware
    classifier of the variance-preserving x_t, s = ``scale`` >= 0 and y = ``labels`` (B,).
    As -eps / sqrt(1 - abar) is the score, s = 1 with the exact classifier around the exact
    unconditional denoiser is the exact conditional one: grad log p(x | y) = grad log p(x) +
    grad log p(y | x). Build it with :meth:`around`.

    The variance is ``base``'s: a learned ``var_frac`` passes through unchanged (the shift
    moves the mean only, as in Algorithm 1).

    Samplers run under ``torch.inference_mode``; the gradient is taken with inference mode
    switched off, on a fresh copy of x_t (and t). One classifier forward and backward of B per
    evaluation, besides ``base``'s own.
    """

    base: Denoiser
    classifier: Classifier
    scale: float
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_scale(self.scale, "scale")
        object.__setattr__(self, "labels", _check_labels(self.labels))

    @classmethod
    def around(cls, base: Denoiser, classifier: Classifier, scale: float,
               labels: Tensor | None = None) -> ClassifierGuidance:
        """Guide ``base`` (its net, schedule and prediction are copied) by ``classifier``."""
        return cls(base.net, base.schedule, base.prediction, base=base, classifier=classifier,
                   scale=scale, labels=labels, learned_variance=base.learned_variance,
                   objective=base.objective)

    @property
    def takes_labels(self) -> bool:
        return True

    def with_labels(self, labels: Tensor | None) -> ClassifierGuidance:
        """The same guidance toward ``labels`` (B,); a conditional ``base`` gets them too."""
        base = self.base.with_labels(labels) if self.base.takes_labels else self.base
        return dataclasses.replace(self, base=base, labels=labels)

    def log_prob_grad(self, x_t: Tensor, t: Tensor) -> Tensor:
        """grad_{x_t} log softmax(classifier(x_t, t))[y] per sample (the batch sum's gradient,
        as samples are independent), computed outside inference mode. (B, ...)"""
        if self.labels is None:
            raise ValueError("classifier guidance needs class labels: give labels (B,) to "
                             "sample toward")
        labels = _batch_labels(self.labels, x_t)
        with torch.inference_mode(False), torch.enable_grad():
            x = x_t.detach().clone().requires_grad_(True)
            logits = self.classifier(x, t.clone())
            if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                raise ValueError(f"the classifier must return logits (B, K), got "
                                 f"{tuple(logits.shape)}")
            _check_labels(labels, logits.shape[1])
            log_p = torch.log_softmax(logits, dim=1)
            picked = log_p.gather(1, labels[:, None]).sum()
            (grad,) = torch.autograd.grad(picked, x)
        return grad.detach()

    def evaluate(self, x_t: Tensor, t: Tensor, abar: Tensor) -> Prediction:
        """(x0', eps') for x_t (B, ...) at t (B,) (Algorithm 2), with ``base``'s var_frac
        (None for fixed variances). Each (B, ...)."""
        grad = self.log_prob_grad(x_t, t)
        pred = self.base.evaluate(x_t, t, abar)
        eps = pred.eps - self.scale * (1 - abar).sqrt() * grad.to(pred.eps)
        return Prediction(x0_from_eps(x_t, eps, abar), eps, pred.var_frac)
