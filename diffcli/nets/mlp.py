"""A small time-conditioned MLP for 2-D toy data (swiss roll, moons, 8 gaussians).

The timestep is embedded as in DDPM (Ho et al. 2020, Appendix B: sinusoidal features
then a two-layer MLP) and a separate linear projection of that embedding is added to
every hidden layer, so each layer is conditioned on the noise level rather than only
the first one.
"""

from __future__ import annotations

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
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, emb_dim: int = 64) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"MLP depth must be >= 1, got {depth}")
        self.dim = dim
        self.depth = depth
        self.time_embed = TimeEmbedding(emb_dim, emb_dim)
        # One projection producing the additive time bias of every hidden layer.
        self.emb_proj = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, depth * hidden))
        self.in_proj = nn.Linear(dim, hidden)
        self.hidden_layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.act = nn.SiLU()
        self.out_proj = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Map points ``x`` ``(B, dim)`` at timesteps ``t`` ``(B,)`` to ``(B, dim)``."""
        biases = self.emb_proj(self.time_embed(t)).chunk(self.depth, dim=1)  # depth x (B, hidden)
        h = self.in_proj(x) + biases[0]  # (B, hidden)
        for layer, bias in zip(self.hidden_layers, biases[1:], strict=True):
            h = layer(self.act(h)) + bias
        return self.out_proj(self.act(h))  # (B, dim)
