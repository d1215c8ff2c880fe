"""Vector quantisation of latents (van den Oord et al. 2017), the VQ-reg of latent diffusion.

:class:`VectorQuantizer` maps each latent vector of ``z`` ``(B, D, h, w)`` to its nearest
code of a codebook ``(K, D)`` (:func:`nearest_codes`, eq. 1), passes gradients straight
through (:func:`straight_through`, Sec. 3.1) and returns the codebook / commitment loss
(:func:`vq_losses`, eq. 3), or keeps the codebook by exponential moving averages (App. A.1).
It sits inside the decoder of :class:`~diffcli.nets.autoencoder.VQAutoencoder` (VQGAN, Esser
et al. 2021; Rombach et al. 2022, Sec. 3.1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["VectorQuantizer", "nearest_codes", "straight_through", "vq_losses"]

def nearest_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest code ``argmin_k ||z - e_k||^2`` (van den Oord et al. 2017, eq. 1).

    ``z`` is ``(N, D)``, ``codebook`` ``(K, D)``; returns ``(N,)`` long. Distances are
    computed in float32 as ``|z|^2 - 2 z.e + |e|^2``; ties go to the lowest index.
    """
    z = z.detach().float()
    e = codebook.detach().float()
    dist = z.pow(2).sum(1, keepdim=True) - 2.0 * z @ e.t() + e.pow(2).sum(1)[None, :]  # (N, K)
    return dist.argmin(dim=1)


def vq_losses(z: Tensor, z_q: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """``(codebook_loss, commitment_loss)`` of van den Oord et al. 2017, eq. 3.

    ``codebook_loss = mean((sg[z] - e)^2)`` moves the codes, ``commitment_loss = beta *
    mean((z - sg[e])^2)`` keeps the encoder near them; means over all elements of ``z``
    and ``z_q`` (same shape, any layout).
    """
    codebook_loss = F.mse_loss(z_q, z.detach())
    commitment_loss = beta * F.mse_loss(z, z_q.detach())
    return codebook_loss, commitment_loss


def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
    """``z + sg[z_q - z]``: the value of ``z_q`` with the gradient of ``z`` (straight-through
    estimator; van den Oord et al. 2017, Sec. 3.1)."""
    return z + (z_q - z).detach()


def _code_stats(counts: Tensor) -> dict[str, Tensor]:
    """Perplexity ``exp(H(p))`` of the code histogram ``counts`` ``(K,)`` and the fraction of
    codes used at least once."""
    probs = counts / counts.sum().clamp_min(1.0)
    entropy = -(probs * torch.log(probs.clamp_min(1e-10))).sum()
    return {"perplexity": entropy.exp(), "usage": (counts > 0).float().mean()}


class VectorQuantizer(nn.Module):
    """Map each latent vector to its nearest code (van den Oord et al. 2017, Sec. 3.1).

    With ``ema=True`` the codebook is a buffer updated by exponential moving averages
    (van den Oord et al. 2017, App. A.1): per code ``k`` with ``n_k`` assigned vectors of
    sum ``s_k`` in the batch, ``N_k <- decay N_k + (1 - decay) n_k``, ``m_k <- decay m_k +
    (1 - decay) s_k`` and ``e_k = m_k / N~_k`` with the Laplace-smoothed counts
    ``N~_k = (N_k + eps) / (sum N + K eps) * sum N``; the loss is the commitment term only.
    With ``ema=False`` the codebook is an ``nn.Parameter`` trained by the codebook loss.

    Dead-code restart (``restart_dead``): in training, codes whose moving-average count
    ``cluster_size`` fell below ``dead_threshold`` are set to random encoder outputs of the
    current batch (torch's global RNG), and their count reset to 1.

    Buffers: ``cluster_size`` ``(K,)``, ``embed_sum`` ``(K, D)`` (EMA only); the codebook is
    ``embed`` ``(K, D)`` in both modes. Updates happen only in training mode.
    """

    def __init__(self, n_embed: int, embed_dim: int, *, beta: float = 0.25, ema: bool = True,
                 decay: float = 0.99, eps: float = 1e-5, restart_dead: bool = True,
                 dead_threshold: float = 1e-3) -> None:
        super().__init__()
        _check_quantizer_args(n_embed, embed_dim, beta, decay)
        self.n_embed, self.embed_dim = n_embed, embed_dim
        self.beta, self.ema, self.decay, self.eps = beta, ema, decay, eps
        self.restart_dead, self.dead_threshold = restart_dead, dead_threshold
        embed = torch.randn(n_embed, embed_dim)
        if ema:
            self.register_buffer("embed", embed)
            self.register_buffer("embed_sum", embed.clone())
        else:
            self.embed = nn.Parameter(embed)
        self.register_buffer("cluster_size", torch.ones(n_embed))

    @property
    def codebook(self) -> Tensor:
        """The codes ``(K, D)``."""
        return self.embed

    def lookup(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Quantise ``z`` ``(B, D, h, w)`` without touching the codebook state.

        Returns ``(z_q, indices)``: the nearest codes ``(B, D, h, w)`` (no straight-through)
        and their indices ``(B, h, w)`` long.
        """
        if z.ndim != 4 or z.shape[1] != self.embed_dim:
            raise ValueError(f"the quantizer takes latents (B, {self.embed_dim}, h, w), "
                             f"got shape {tuple(z.shape)}")
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d)  # (N, D)
        idx = nearest_codes(flat, self.codebook)  # (N,)
        z_q = self.codebook[idx].to(z.dtype).reshape(b, h, w, d).permute(0, 3, 1, 2)
        return z_q, idx.reshape(b, h, w)

    def quantize(self, z: Tensor) -> Tensor:
        """Straight-through quantisation of ``z`` ``(B, D, h, w)`` with no state update."""
        z_q, _ = self.lookup(z)
        return straight_through(z, z_q)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """Quantise ``z`` ``(B, D, h, w)``; in training also update the codebook state.

        Returns ``(z_q, loss, indices, stats)``: straight-through ``z_q`` ``(B, D, h, w)``;
        scalar loss (commitment, plus the codebook term when ``ema=False``); indices
        ``(B, h, w)`` long; stats ``{"perplexity", "usage"}`` of this batch (scalars).
        """
        z_q, idx = self.lookup(z)
        codebook_loss, commitment_loss = vq_losses(z, z_q, self.beta)
        loss = commitment_loss if self.ema else codebook_loss + commitment_loss
        flat = z.detach().permute(0, 2, 3, 1).reshape(-1, self.embed_dim).float()  # (N, D)
        counts = torch.bincount(idx.reshape(-1), minlength=self.n_embed).float()  # (K,)
        if self.training:
            self._update(flat, idx.reshape(-1), counts)
        return straight_through(z, z_q), loss, idx, _code_stats(counts)

    @torch.no_grad()
    def _update(self, flat: Tensor, idx: Tensor, counts: Tensor) -> None:
        """Moving-average counts, EMA codebook (when ``ema``) and dead-code restart."""
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1.0 - self.decay)
        if self.ema:
            sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, flat)  # (K, D)
            self.embed_sum.mul_(self.decay).add_(sums, alpha=1.0 - self.decay)
            self.embed.copy_(self.embed_sum / self._smoothed_counts()[:, None])
        if self.restart_dead:
            self._restart(flat)

    def _smoothed_counts(self) -> Tensor:
        """Laplace-smoothed cluster sizes ``(K,)`` (never zero)."""
        n = self.cluster_size.sum()
        k = self.n_embed
        return (self.cluster_size + self.eps) / (n + k * self.eps) * n

    def _restart(self, flat: Tensor) -> None:
        """Re-initialise codes with ``cluster_size < dead_threshold`` to random rows of
        ``flat`` ``(N, D)`` (the current batch's encoder outputs)."""
        dead = (self.cluster_size < self.dead_threshold).nonzero().flatten()  # (n_dead,)
        if dead.numel() == 0:
            return
        pick = torch.randint(0, flat.shape[0], (dead.numel(),), device=flat.device)
        vectors = flat[pick]  # (n_dead, D)
        self.embed.data[dead] = vectors.to(self.embed.dtype)
        self.cluster_size[dead] = 1.0
        if self.ema:
            self.embed_sum[dead] = vectors


def _check_quantizer_args(n_embed: int, embed_dim: int, beta: float, decay: float) -> None:
    """One-line ``ValueError`` s for impossible :class:`VectorQuantizer` settings."""
    if n_embed < 1 or embed_dim < 1:
        raise ValueError(f"the quantizer needs n_embed >= 1 and embed_dim >= 1, got "
                         f"n_embed={n_embed}, embed_dim={embed_dim}")
    if beta < 0:
        raise ValueError(f"the commitment weight beta must be >= 0, got {beta}")
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"the codebook EMA decay must be in [0, 1), got {decay}; use e.g. 0.99")
