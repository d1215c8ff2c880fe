"""Post-hoc EMA: the EMA of any width after training, from stored snapshots of two (Karras et al.
2024, EDM2, Sec. 3.2 and Appendix C.3).

The power-function EMA with exponent ``gamma`` (:mod:`diffcli.lit.ema`) of the weights
``theta(tau)`` at training time ``t`` averages them with the density

    p_{gamma,t}(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),   0 <= tau <= t,

(EDM2 Eq. 2-3, the continuous form of ``beta_t = (1 - 1/t)^(gamma + 1)``). A snapshot of that
EMA taken at time ``t_i`` is the average with ``p_{gamma_i,t_i}``. Every snapshot is linear in
the training trajectory, so a combination ``sum_i x_i snapshot_i`` averages it with
``sum_i x_i p_i``; choosing ``x`` to make that density as close as possible (least squares in
L2 over tau) to ``p_{gamma_r,t_r}`` of the wanted width gives the wanted EMA without having
trained with it. The normal equations ``A x = b`` need only inner products of two power
profiles, which are closed-form (for ``t_a <= t_b``; swap the roles otherwise):

    <p_{a,t_a}, p_{b,t_b}> = integral_0^{t_a} (a+1)(b+1) tau^(a+b) / (t_a^(a+1) t_b^(b+1)) dtau
                           = (a+1)(b+1) / ((a+b+1) t_b) * (t_a / t_b)^b.

Times are in training steps (the EMA's update count, ``t >= 1``). Everything here is pure math on
numbers and tensors: no files, no Lightning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor

from diffcli.lit.ema import gamma_of_sigma_rel

__all__ = ["profile", "profile_inner", "reconstruct", "solve_weights"]


def profile(tau: Tensor, t: float, gamma: float) -> Tensor:
    """The averaging density ``p_{gamma,t}(tau)`` (EDM2 Eq. 2-3 in continuous time) at ``tau``
    (any shape): ``(gamma + 1) tau^gamma / t^(gamma + 1)`` on ``[0, t]``, 0 beyond."""
    tau = tau.double()
    inside = (tau >= 0) & (tau <= t)
    value = (gamma + 1) * (tau.clamp(min=0) / t) ** gamma / t
    return torch.where(inside, value, torch.zeros_like(value))


def profile_inner(t_a: Tensor, gamma_a: Tensor, t_b: Tensor, gamma_b: Tensor) -> Tensor:
    """``<p_{gamma_a,t_a}, p_{gamma_b,t_b}>`` in L2 over tau, elementwise over broadcast
    tensors (float64): ``(a+1)(b+1) / ((a+b+1) t_max) * (t_min / t_max)^g``, where ``g`` is the
    exponent of the profile that ends later (the module docstring's closed form)."""
    t_a, gamma_a, t_b, gamma_b = (torch.as_tensor(v, dtype=torch.float64)
                                  for v in (t_a, gamma_a, t_b, gamma_b))
    a_first = t_a <= t_b
    t_min, t_max = torch.minimum(t_a, t_b), torch.maximum(t_a, t_b)
    g_late = torch.where(a_first, gamma_b, gamma_a)
    return ((gamma_a + 1) * (gamma_b + 1) / ((gamma_a + gamma_b + 1) * t_max)
            * (t_min / t_max) ** g_late)


def solve_weights(times: Sequence[float], gammas: Sequence[float], t_target: float,
                  sigma_rel: float) -> Tensor:
    """Weights ``x`` ``(N,)`` (float64) of the ``N`` snapshots (snapshot ``i`` the EMA with
    exponent ``gammas[i]`` taken at step ``times[i]``) whose combination best matches the
    power-function EMA of width ``sigma_rel`` at step ``t_target`` (EDM2 App. C.3: least
    squares of the normal equations ``A x = b``, ``A_ij = <p_i, p_j>``, ``b_i = <p_i, p_r>``).
    Only snapshots taken at or before ``t_target`` can be used; ValueError (one line) when there
    are none, or for a bad width."""
    t = torch.as_tensor(times, dtype=torch.float64)
    g = torch.as_tensor(gammas, dtype=torch.float64)
    if t.ndim != 1 or t.shape != g.shape or len(t) == 0:
        raise ValueError("post-hoc EMA needs one exponent per snapshot and at least one snapshot")
    if bool((t > t_target).any()):
        raise ValueError(f"snapshots after step {t_target:g} cannot make its EMA: use those "
                         "taken at or before it")
    gamma_r = gamma_of_sigma_rel(sigma_rel)
    a = profile_inner(t[:, None], g[:, None], t[None, :], g[None, :])  # (N, N)
    b = profile_inner(t, g, torch.tensor(float(t_target)), torch.tensor(gamma_r))  # (N,)
    return torch.linalg.lstsq(a, b[:, None], driver="gelsd").solution[:, 0]


def reconstruct(snapshots: Iterable[Mapping[str, Tensor]],
                weights: Tensor) -> dict[str, Tensor]:
    """``sum_i weights[i] snapshots[i]`` per tensor, accumulated in float64 and returned in the
    dtype of the first snapshot's tensor; the snapshots may be a lazy iterable (one held at a
    time). ValueError (one line) when their number, keys or shapes differ."""
    acc: dict[str, Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    count = 0
    for w, snap in zip(weights.tolist(), snapshots, strict=False):
        if count and (snap.keys() != acc.keys()
                      or any(snap[k].shape != acc[k].shape for k in acc)):
            raise ValueError("the snapshots differ in their tensors: they are not of one run")
        for key, value in snap.items():
            if key not in acc:
                acc[key] = torch.zeros(value.shape, dtype=torch.float64)
                dtypes[key] = value.dtype
            acc[key] += w * value.double()
        count += 1
    if count != len(weights) or not count:
        raise ValueError(f"{count} snapshots for {len(weights)} weights")
    return {k: v.to(dtypes[k]) for k, v in acc.items()}
