"""Densities with a known clean score `grad log p0(x0)` (Boltzmann-type `p0 ∝ exp(-U)`).

Each density has an exact sampler `fn(n, generator=None, dtype=float32, **params) -> (n, 2)` and
a score `fn_score(x, **params) -> grad log p0(x)`, computed in the dtype of `x`; target score
matching (`scorekit.objectives.TSM`) regresses onto it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scorekit.data.synthetic import gmm_params
from scorekit.processes.nonlinear import quartic_well

# --- banana: x1 ~ N(0, a^2), x2 | x1 ~ N(b (x1^2 - a^2), s^2) -----------------------------------

def banana(n: int, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32,
           a: float = 1.0, b: float = 1.0, s: float = 0.5) -> Tensor:
    """Twisted Gaussian (Haario et al. 1999): a unit-Jacobian bend of N(0, diag(a^2, s^2))."""
    _check_banana(a, s)
    z = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    x1 = a * z[:, 0]
    return torch.stack([x1, b * (x1 * x1 - a * a) + s * z[:, 1]], 1).to(dtype)


def banana_score(x: Tensor, a: float = 1.0, b: float = 1.0, s: float = 0.5) -> Tensor:
    """grad log p0 of `banana`; x: (B, 2) -> (B, 2)."""
    x1, x2 = x[:, 0], x[:, 1]
    r = (x2 - b * (x1 * x1 - a * a)) / (s * s)
    return torch.stack([-x1 / (a * a) + 2 * b * x1 * r, -r], 1)


def banana_log_prob(x: Tensor, a: float = 1.0, b: float = 1.0, s: float = 0.5) -> Tensor:
    """Normalised log p0 of `banana`; x: (B, 2) -> (B,)."""
    x1, x2 = x[:, 0], x[:, 1]
    r = (x2 - b * (x1 * x1 - a * a)) / s
    return -0.5 * (x1 / a) ** 2 - 0.5 * r * r - math.log(2 * math.pi * a * s)


def _check_banana(a: float, s: float) -> None:
    if not (a > 0 and s > 0):
        raise ValueError(f"banana needs a > 0 and s > 0, got a={a}, s={s}")


# --- double well: U(x) = barrier (x1^2 - 1)^2 + x2^2 / 2 ------------------------------------------

def double_well(n: int, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32, barrier: float = 2.0) -> Tensor:
    """Boltzmann density `∝ exp(-barrier (x1^2 - 1)^2 - x2^2 / 2)`: two wells at x1 = ±1."""
    if not barrier > 0:
        raise ValueError(f"barrier must be > 0, got {barrier}")
    x1 = quartic_well(n, barrier, generator)
    x2 = torch.randn(n, generator=generator, dtype=torch.float64)
    return torch.stack([x1, x2], 1).to(dtype)


def double_well_score(x: Tensor, barrier: float = 2.0) -> Tensor:
    """grad log p0 = -grad U of `double_well`; x: (B, 2) -> (B, 2)."""
    x1 = x[:, 0]
    return torch.stack([-4 * barrier * x1 * (x1 * x1 - 1), -x[:, 1]], 1)


# --- Gaussian mixture ---------------------------------------------------------------------------

def mixture_score(x: Tensor, weights: Tensor, means: Tensor, covs: Tensor) -> Tensor:
    """grad log of `sum_k w_k N(mu_k, Sigma_k)`; x: (B, d), (K,), (K, d), (K, d, d) -> (B, d)."""
    w, means, covs = (v.to(x.device, x.dtype) for v in (weights, means, covs))
    prec = torch.linalg.inv(covs)  # (K, d, d)
    diff = x[:, None, :] - means  # (B, K, d)
    grad = -torch.einsum("kij,bkj->bki", prec, diff)
    logn = 0.5 * (diff * grad).sum(-1) - 0.5 * torch.logdet(covs)
    r = torch.softmax(w.log() + logn, dim=1)
    return (r[..., None] * grad).sum(1)


def gmm_score(x: Tensor, layout: str = "ring", n_modes: int = 8, radius: float = 2.0,
              std: float = 0.1, weights: list[float] | None = None) -> Tensor:
    """grad log p0 of the mixture of `gmm_params`; x: (B, 2) -> (B, 2)."""
    return mixture_score(x, *gmm_params(layout, n_modes, radius, std, weights))


CLEAN_SCORES = {"gmm": gmm_score, "banana": banana_score, "double_well": double_well_score}
