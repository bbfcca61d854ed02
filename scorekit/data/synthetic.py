"""2-D toy distributions.

Each sampler: `fn(n, generator=None, dtype=float32, **params) -> (n, 2)`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def gmm_params(layout: str = "ring", n_modes: int = 8, radius: float = 2.0, std: float = 0.1,
               weights: list[float] | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(weights (K,), means (K, 2), covs (K, 2, 2)) in float64.

    "ring": K equal modes on a circle, isotropic std; "three": a fixed 3-mode mixture with
    unequal weights 0.5 / 0.3 / 0.2 and full covariances.
    """
    if layout == "three":
        means = torch.tensor([[-1.5, 0.0], [1.5, 0.5], [0.0, -1.8]], dtype=torch.float64)
        covs = torch.tensor([[[0.30, 0.10], [0.10, 0.15]], [[0.10, -0.05], [-0.05, 0.20]],
                             [[0.05, 0.0], [0.0, 0.05]]], dtype=torch.float64)
        w = torch.tensor(weights if weights is not None else [0.5, 0.3, 0.2], dtype=torch.float64)
    elif layout == "ring":
        if not isinstance(n_modes, int) or n_modes < 1:
            raise ValueError(f"n_modes must be an integer >= 1, got {n_modes!r}")
        if radius < 0 or std <= 0:
            raise ValueError(f"need radius >= 0 and std > 0, got radius={radius}, std={std}")
        ang = torch.arange(n_modes, dtype=torch.float64) * (2 * math.pi / n_modes)
        means = radius * torch.stack([ang.cos(), ang.sin()], dim=1)
        covs = std**2 * torch.eye(2, dtype=torch.float64).repeat(n_modes, 1, 1)
        w = torch.tensor(weights if weights is not None else [1.0] * n_modes, dtype=torch.float64)
    else:
        raise ValueError(f"unknown gmm layout {layout!r}; valid: ['ring', 'three']")
    if w.shape != (means.shape[0],) or (w <= 0).any():
        raise ValueError(f"weights must be {means.shape[0]} positive numbers, got {weights}")
    return w / w.sum(), means, covs


def gmm_with_labels(n: int, generator: torch.Generator | None = None, **params
                    ) -> tuple[Tensor, Tensor]:
    """Exact mixture draws (n, 2) float64 and their component labels (n,)."""
    w, means, covs = gmm_params(**params)
    labels = torch.multinomial(w, n, replacement=True, generator=generator)
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    chol = torch.linalg.cholesky(covs)
    return means[labels] + torch.einsum("nij,nj->ni", chol[labels], z), labels


def gmm(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
        layout: str = "ring", n_modes: int = 8, radius: float = 2.0, std: float = 0.1,
        weights: list[float] | None = None) -> Tensor:
    """Gaussian mixture draws (see `gmm_params`)."""
    x, _ = gmm_with_labels(n, generator, layout=layout, n_modes=n_modes, radius=radius, std=std,
                           weights=weights)
    return x.to(dtype)


def moons(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
          noise: float = 0.05) -> Tensor:
    """Two interleaving half circles, centred and scaled to about unit std."""
    upper = torch.rand(n, generator=generator, dtype=torch.float64) < 0.5
    ang = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
    x = torch.where(upper, ang.cos(), 1 - ang.cos())
    y = torch.where(upper, ang.sin(), 0.5 - ang.sin())
    pts = torch.stack([x, y], 1) + noise * torch.randn(n, 2, generator=generator,
                                                      dtype=torch.float64)
    return ((pts - torch.tensor([0.5, 0.25], dtype=torch.float64)) / 0.8).to(dtype)


def swissroll(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
              noise: float = 0.25) -> Tensor:
    """2-D Swiss roll, scaled to about unit std."""
    u = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=generator, dtype=torch.float64))
    pts = torch.stack([u * u.cos(), u * u.sin()], 1)
    pts = pts + noise * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return (pts / 7.5).to(dtype)


def checkerboard(n: int, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, squares: int = 4) -> Tensor:
    """Uniform on the dark squares of a squares x squares board covering [-2, 2]^2."""
    if not isinstance(squares, int) or squares < 2:
        raise ValueError(f"squares must be an integer >= 2, got {squares!r}")
    size = 4.0 / squares
    cells = [(i, j) for i in range(squares) for j in range(squares) if (i + j) % 2 == 0]
    idx = torch.randint(len(cells), (n,), generator=generator)
    corner = torch.tensor(cells, dtype=torch.float64)[idx] * size - 2.0
    return (corner + size * torch.rand(n, 2, generator=generator, dtype=torch.float64)).to(dtype)
