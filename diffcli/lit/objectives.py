"""Training objectives as the ``loss`` config group: ``simple``, ``hybrid``, ``vlb``.

Each objective draws the timesteps of a batch and returns the loss
(:mod:`diffcli.diffusion.losses` has the maths; the network is an argument):

* :class:`Simple`: L_simple (Ho et al. 2020, eq. 14), t uniform, optionally Min-SNR weighted;
* :class:`Hybrid`: L_simple + lambda L_vlb with the mean detached (Nichol & Dhariwal 2021,
  Sec. 3.1, lambda = 0.001): L_vlb trains the learned variances only;
* :class:`VLB`: L_vlb alone with importance-sampled t (Sec. 3.3: p_t proportional to
  sqrt(E[L_t^2]) over the last ``history`` values of each L_t).

Hybrid and VLB need a network that learns its variances (``model.learn_sigma=true``); L_simple
trains no variance, so a learned-variance network needs one of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from diffcli.diffusion.losses import ImportanceSampler, diffusion_loss, hybrid_loss, vlb_loss
from diffcli.diffusion.process import Parameterization, randint_timesteps
from diffcli.diffusion.schedules import NoiseSchedule

Network = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Step:
    """What one training step needs: the network as the loss calls it, the schedule, what
    the network predicts, whether it learns variances, and the data's decoder."""

    net: Network
    schedule: NoiseSchedule
    prediction: Parameterization
    learned_variance: bool
    decoder: str  # "discrete" (8-bit images) or "continuous" (points)
    min_snr_gamma: float | None = None


class Objective(ABC):
    """Base: ``loss(step, x0) -> scalar``; ``trains_variance`` says whether it can train a
    learned variance; ``module()`` is state to keep in checkpoints (or None)."""

    name = "objective"
    trains_variance = False

    @abstractmethod
    def loss(self, step: Step, x0: Tensor) -> Tensor:
        """The batch's loss, a scalar with gradients."""

    def module(self) -> nn.Module | None:
        return None

    def check(self, learned_variance: bool, min_snr_gamma: float | None) -> None:
        """A learned-variance network needs hybrid or vlb; the others need none."""
        if learned_variance and not self.trains_variance:
            raise ValueError(f"loss={self.name} does not train the variances of "
                             "model.learn_sigma=true: use loss=hybrid or loss=vlb")
        if not learned_variance and self.trains_variance and self.name == "hybrid":
            raise ValueError("loss=hybrid trains learned variances: set model.learn_sigma=true "
                             "(or use loss=simple)")


def _uniform_t(x0: Tensor, schedule: NoiseSchedule) -> Tensor:
    return randint_timesteps(x0.shape[0], schedule.num_timesteps, device=x0.device)


@dataclass
class Simple(Objective):
    """L_simple, t uniform (Ho et al. 2020, Algorithm 1)."""

    name = "simple"

    def loss(self, step: Step, x0: Tensor) -> Tensor:
        t = _uniform_t(x0, step.schedule)
        return diffusion_loss(step.net, step.schedule, x0, t, torch.randn_like(x0),
                              step.prediction, step.min_snr_gamma)


@dataclass
class Hybrid(Objective):
    """L_hybrid = L_simple + ``vlb_weight`` L_vlb, t uniform (Nichol & Dhariwal 2021)."""

    vlb_weight: float = 0.001
    name = "hybrid"
    trains_variance = True

    def __post_init__(self) -> None:
        if not (isinstance(self.vlb_weight, int | float) and self.vlb_weight >= 0):
            raise ValueError(f"vlb_weight={self.vlb_weight!r} must be >= 0 (paper: 0.001)")

    def loss(self, step: Step, x0: Tensor) -> Tensor:
        t = _uniform_t(x0, step.schedule)
        return hybrid_loss(step.net, step.schedule, x0, t, torch.randn_like(x0),
                           step.prediction, self.vlb_weight, decoder=step.decoder,
                           min_snr_gamma=step.min_snr_gamma)


@dataclass
class VLB(Objective):
    """L_vlb with importance-sampled t; the sampler's history is kept in checkpoints."""

    history: int = 10
    uniform_prob: float = 0.001
    name = "vlb"
    trains_variance = True
    _sampler: ImportanceSampler | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.history, int) and self.history >= 1):
            raise ValueError(f"history={self.history!r} must be an integer >= 1 (paper: 10)")
        if not (isinstance(self.uniform_prob, int | float) and 0 <= self.uniform_prob <= 1):
            raise ValueError(f"uniform_prob={self.uniform_prob!r} must be in [0, 1]")

    def bind(self, num_timesteps: int) -> VLB:
        """Create the importance sampler for a schedule of ``num_timesteps`` steps."""
        self._sampler = ImportanceSampler(num_timesteps, self.history, self.uniform_prob)
        return self

    def module(self) -> nn.Module | None:
        return self._sampler

    def check(self, learned_variance: bool, min_snr_gamma: float | None) -> None:
        super().check(learned_variance, min_snr_gamma)
        if min_snr_gamma is not None:
            raise ValueError("module.min_snr_gamma weights L_simple; loss=vlb has no L_simple "
                             "(use loss=hybrid or leave min_snr_gamma null)")

    def loss(self, step: Step, x0: Tensor) -> Tensor:
        if self._sampler is None:
            self.bind(step.schedule.num_timesteps)
        assert self._sampler is not None
        t, weights = self._sampler.sample(x0.shape[0], device=x0.device)
        loss, terms = vlb_loss(step.net, step.schedule, x0, t, torch.randn_like(x0),
                               step.prediction, weights, decoder=step.decoder,
                               learned_variance=step.learned_variance)
        self._sampler.update(t, terms)
        return loss


def describe(objective: Any) -> str:
    """"L_simple", "L_hybrid (lambda 0.001)", "L_vlb (importance-sampled t)"."""
    if isinstance(objective, Hybrid):
        return f"L_hybrid (lambda {objective.vlb_weight:g})"
    if isinstance(objective, VLB):
        return "L_vlb (importance-sampled t)"
    return "L_simple"
