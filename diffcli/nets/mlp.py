"""A small time-conditioned MLP for 2-D toy data (swiss roll, moons, 8 gaussians).

The timestep is embedded as in DDPM (Ho et al. 2020, Appendix B: sinusoidal features
then a two-layer MLP) and a separate linear projection of that embedding is added to
every hidden layer, so each layer is conditioned on the noise level rather than only
the first one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from diffcli.nets.layers import TimeEmbedding

__all__ = ["MLP"]


class MLP(nn.Module):
    """Noise-prediction MLP for points ``(B, dim)``.

    ``h_0 = W_in x + P_0 e``, ``h_i = W_i SiLU(h_{i-1}) + P_i e`` for ``i < depth``,
    output ``W_out SiLU(h_{depth-1})``, where ``e = SiLU(TimeEmbedding(t))``.

    Args:
        dim: data dimension (input and output width).
        hidden: hidden layer width.
        depth: number of hidden layers, at least 1.
        emb_dim: width of the sinusoidal features and of the timestep embedding. Raw
            integer steps 0..T-1 (as floats) are the intended input.
        data_shape: one sample's shape ``(D,)``, the keyword every diffcli network takes
            from the data (sets ``dim``).
        num_classes: class-conditional with this many labels: a learned label embedding
            (row ``num_classes`` = the null label of classifier-free guidance, Ho & Salimans
            2022) is added to the timestep embedding. None: unconditional.
        out_dim: output width (default ``dim``, or ``2 * dim`` with ``learn_sigma``; the number
            of classes for a classifier).
        learn_sigma: also predict the reverse-process variances (Nichol & Dhariwal 2021,
            eq. 15): ``out_dim = 2 * dim``, the prediction (eps / x0 / v) then a raw r per
            coordinate, read as v = (r + 1) / 2 (see
            :class:`~diffcli.diffusion.denoiser.Denoiser`).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64, *,
                 data_shape: Sequence[int] | None = None,
                 num_classes: int | None = None, out_dim: int | None = None,
                 learn_sigma: bool = False) -> None:
        super().__init__()
        if data_shape is not None:  # the interface every diffcli network takes
            if len(data_shape) != 1:
                raise ValueError(f"the MLP takes points (D,), but the data are images of shape "
                                 f"{tuple(data_shape)}; use an image network (model=unet)")
            dim = int(data_shape[0])
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"MLP num_classes must be >= 1 or null, got {num_classes}")
        if depth < 1:
            raise ValueError(f"MLP depth must be >= 1, got {depth}")
        self.dim = dim
        self.depth = depth
        self.learn_sigma = bool(learn_sigma)
        if out_dim is None:
            out_dim = 2 * dim if self.learn_sigma else dim
        self.out_dim = out_dim
        self.num_classes = num_classes
        self.time_embed = TimeEmbedding(emb_dim, emb_dim)
        self.label_embed = None if num_classes is None else nn.Embedding(num_classes + 1, emb_dim)
        # One projection producing the additive time bias of every hidden layer.
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, depth * hidden))
        self.in_proj = nn.Linear(dim, hidden)
        self.hidden_layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.act = nn.SiLU()
        self.out_proj = nn.Linear(hidden, out_dim)

    def embed(self, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The timestep embedding ``(B, emb_dim)``, plus the label's for a conditional MLP
        (``y`` (B,) in 0..num_classes; None = the null label)."""
        emb = self.time_embed(t)
        if self.label_embed is None:
            if y is not None:
                raise ValueError("the MLP got class labels y but was built with num_classes=null")
            return emb
        if y is None:
            y = torch.full((emb.shape[0],), self.num_classes, dtype=torch.long, device=emb.device)
        return emb + self.label_embed(y).to(emb.dtype)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """Map points ``x`` ``(B, dim)`` at timesteps ``t`` ``(B,)`` (labels ``y`` (B,) for a
        conditional MLP) to ``(B, out_dim)``."""
        biases = self.emb_proj(self.embed(t, y)).chunk(self.depth, dim=1)  # depth x (B, hidden)
        h = self.in_proj(x) + biases[0]  # (B, hidden)
        for layer, bias in zip(self.hidden_layers, biases[1:], strict=True):
            h = layer(self.act(h)) + bias
        return self.out_proj(self.act(h))  # (B, out_dim)
