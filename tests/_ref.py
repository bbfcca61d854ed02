"""Reference formulas of the linear processes and their samplers' steps, written here from the
papers (Song et al. 2021, score SDEs; Ho et al. 2020, DDPM; Karras et al. 2022, EDM) so that a
test never takes a coefficient, a time grid or a marginal from the module it tests.

Every function takes the process object only for its parameters (beta_min, sigma_max, T, ...)
and returns float64 tensors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scorekit.sde import EDMSDE, VESDE, VPSDE, SubVPSDE

F64 = torch.float64


def _t(t) -> Tensor:
    return torch.as_tensor(t, dtype=F64)


def int_beta(sde, t) -> Tensor:
    """int_0^t beta(s) ds for beta linear from beta_min (t = 0) to beta_max (t = 1)."""
    t = _t(t)
    return sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2


def alpha_sigma(sde, t) -> tuple[Tensor, Tensor]:
    """Marginal x_t = alpha x_0 + sigma z of each process."""
    t = _t(t)
    if isinstance(sde, SubVPSDE):  # same mean as VP; std 1 - exp(-int beta)
        b = int_beta(sde, t)
        return torch.exp(-0.5 * b), 1 - torch.exp(-b)
    if isinstance(sde, VPSDE):
        b = int_beta(sde, t)
        return torch.exp(-0.5 * b), torch.sqrt(1 - torch.exp(-b))
    if isinstance(sde, VESDE):
        return torch.ones_like(t), sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    if isinstance(sde, EDMSDE):
        return torch.ones_like(t), t.clone()
    raise TypeError(type(sde))


def drift_rate_g2(sde, t) -> tuple[Tensor, Tensor]:
    """dx = f(t) x dt + g(t) dW: (f(t), g(t)^2)."""
    t = _t(t)
    if isinstance(sde, SubVPSDE):
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        return -0.5 * beta, beta * (1 - torch.exp(-2 * int_beta(sde, t)))
    if isinstance(sde, VPSDE):
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        return -0.5 * beta, beta
    if isinstance(sde, VESDE):
        sigma = alpha_sigma(sde, t)[1]
        return torch.zeros_like(t), 2 * sigma**2 * math.log(sde.sigma_max / sde.sigma_min)
    if isinstance(sde, EDMSDE):
        return torch.zeros_like(t), 2 * t
    raise TypeError(type(sde))


def uniform_grid(sde, steps: int) -> Tensor:
    """steps + 1 times from T down to eps, equally spaced."""
    return torch.linspace(sde.T, sde.eps, steps + 1, dtype=F64)


def em_rows(sde, grid: Tensor) -> Tensor:
    """Reverse-SDE Euler–Maruyama from t to t - h: x <- (1 - h f) x + h g^2 s + g sqrt(h) z,
    rows (k1, k2, k3), (N, 3)."""
    t, h = grid[:-1], grid[:-1] - grid[1:]
    f, g2 = drift_rate_g2(sde, t)
    return torch.stack([1 - h * f, h * g2, torch.sqrt(g2 * h)], dim=1)


def ancestral_rows(sde, grid: Tensor) -> Tensor:
    """score_sde's reverse-diffusion predictor on the grid: DDPM's ancestral step for VP with
    b_i = 1 - alpha_i^2 / alpha_{i+1}^2 (x <- (x + b s) / sqrt(1 - b) + sqrt(b) z); for VE
    x <- x + D s + sqrt(D) z with D = sigma_i^2 - sigma_{i+1}^2."""
    a, s = alpha_sigma(sde, grid)
    if isinstance(sde, VPSDE) and not isinstance(sde, SubVPSDE):
        b = 1 - a[:-1] ** 2 / a[1:] ** 2
        return torch.stack([1 / torch.sqrt(1 - b), b / torch.sqrt(1 - b), torch.sqrt(b)], 1)
    if isinstance(sde, (VESDE, EDMSDE)):
        d = s[:-1] ** 2 - s[1:] ** 2
        return torch.stack([torch.ones_like(d), d, torch.sqrt(d)], dim=1)
    raise TypeError(type(sde))


def prior_std(sde) -> float:
    """Std of the prior the samplers start from: 1 (VP / sub-VP), sigma_max (VE / EDM)."""
    return sde.sigma_max if isinstance(sde, (VESDE, EDMSDE)) else 1.0
