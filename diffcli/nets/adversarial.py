"""Adversarial training of the autoencoders (Esser et al. 2021, Sec. 3.1).

:class:`PatchDiscriminator` (PatchGAN, Isola et al. 2017) gives one real / fake logit per
image patch ``(B, 1, h, w)``; :func:`hinge_d_loss` is its hinge loss and
:func:`adaptive_gan_weight` the adaptive weight of the generator's GAN loss (Esser et al.
2021, eq. 7), taken at the decoder's last layer
(:attr:`~diffcli.nets.autoencoder.KLAutoencoder.last_layer`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PatchDiscriminator", "adaptive_gan_weight", "hinge_d_loss"]


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator (Isola et al. 2017, Sec. 3.2.2) as used by Esser et al. 2021.

    ``num_layers`` 4x4 stride-2 convs (widths ``base * min(2^n, 8)``; BatchNorm after all
    but the first; LeakyReLU 0.2), one 4x4 stride-1 conv, and a 4x4 stride-1 conv to one
    logit per patch. ``(B, C, H, W) -> (B, 1, h, w)``; with 3 layers a 28x28 input gives
    1x1 and 32x32 gives 2x2. Weights ``N(0, 0.02)``, BatchNorm scales ``N(1, 0.02)``
    (Radford et al. 2016).
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"the discriminator needs num_layers >= 1, got {num_layers}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, 2, 1),
                                   nn.LeakyReLU(0.2)]
        ch = base_channels
        for n in range(1, num_layers + 1):
            out = base_channels * min(2**n, 8)
            stride = 2 if n < num_layers else 1
            layers += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2)]
            ch = out
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        self.apply(_init_gan_weights)

    def forward(self, x: Tensor) -> Tensor:
        """Patch logits ``(B, 1, h, w)`` of images ``x`` ``(B, C, H, W)``."""
        return self.main(x)


def _init_gan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv ``N(0, 0.02)``; BatchNorm weight ``N(1, 0.02)``, bias 0."""
    if isinstance(module, nn.Conv2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def hinge_d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Hinge discriminator loss ``0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``
    (Lim & Ye 2017; as in Esser et al. 2021). Logits of any shape; returns a scalar."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def adaptive_gan_weight(rec_loss: Tensor, g_loss: Tensor, last_layer: Tensor,
                        max_weight: float = 1e4) -> Tensor:
    """Adaptive weight of the GAN loss (Esser et al. 2021, eq. 7).

    ``lambda = ||grad_L rec_loss|| / (||grad_L g_loss|| + 1e-4)`` with the gradients taken
    w.r.t. the decoder's last layer ``L``, clamped to ``[0, max_weight]`` and detached. Both
    graphs are kept (``retain_graph=True``) for the backward pass that follows.
    """
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    weight = rec_grad.norm() / (g_grad.norm() + 1e-4)
    return weight.clamp(0.0, max_weight).detach()

