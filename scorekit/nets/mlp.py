"""MLP score network for tabular / 2-D data with a Fourier-feature noise embedding."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from scorekit.nets.param import ScoreModel
from scorekit.processes import SDE


class FourierEmbedding(nn.Module):
    """Random Fourier features of a scalar noise label (Tancik et al. 2020); c: (B,) -> (B, dim)."""

    def __init__(self, dim: int, scale: float = 16.0, generator: torch.Generator | None = None):
        super().__init__()
        if dim % 2:
            raise ValueError(f"embedding dim must be even, got {dim}")
        self.register_buffer("freqs", torch.randn(dim // 2, generator=generator) * scale)

    def forward(self, c: Tensor) -> Tensor:
        arg = 2 * math.pi * c[:, None] * self.freqs.to(c.dtype)
        return torch.cat([arg.cos(), arg.sin()], dim=1)


class MLP(nn.Module):
    """Backbone `F(x_in, c_noise)`: concat(x, embed(c)) -> depth x (Linear, SiLU) -> Linear.

    `x_features > 0` also feeds random Fourier features of x (`x_features` of them, frequencies
    ~ N(0, x_scale^2) per input unit): a plain MLP resolves structure finer than ~1/4 of the
    input's scale only slowly, and sharp low-noise scores (narrow modes) are exactly that.
    """

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, emb_dim: int = 64,
                 fourier_scale: float = 4.0, x_features: int = 0, x_scale: float = 1.0):
        super().__init__()
        for name, val in (("dim", dim), ("hidden", hidden), ("depth", depth), ("emb_dim", emb_dim)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"MLP {name} must be an integer >= 1, got {val!r}")
        if not isinstance(x_features, int) or x_features < 0 or x_features % 2:
            raise ValueError(f"MLP x_features must be an even integer >= 0, got {x_features!r}")
        gen = torch.Generator().manual_seed(0)
        self.embed = FourierEmbedding(emb_dim, fourier_scale, generator=gen)
        self.register_buffer("x_freqs", torch.randn(dim, x_features // 2, generator=gen) * x_scale)
        layers: list[nn.Module] = []
        width = dim + emb_dim + x_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """x: (B, *D) -> (B, *D)."""
        xf = x.flatten(1)
        parts = [xf, self.embed(c_noise).to(x.dtype)]
        if self.x_freqs.shape[1]:
            arg = 2 * math.pi * xf @ self.x_freqs.to(x.dtype)
            parts += [arg.cos(), arg.sin()]
        h = torch.cat(parts, dim=1)
        return self.layers(h).reshape(x.shape)


class MLPScore(ScoreModel):
    """MLP score model: `model(x, t)` returns the score of x: (B, *D) at t: (B,)."""

    def __init__(self, dim: int, sde: SDE, hidden: int = 128, depth: int = 3, emb_dim: int = 64,
                 fourier_scale: float = 4.0, x_features: int = 0, x_scale: float = 1.0,
                 parameterization: str = "eps", sigma_data: float = 1.0):
        super().__init__(MLP(dim, hidden, depth, emb_dim, fourier_scale, x_features, x_scale), sde,
                         parameterization=parameterization, sigma_data=sigma_data)
