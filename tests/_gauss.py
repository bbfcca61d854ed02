"""Exact laws for tests with Gaussian data: affine samplers map Gaussians to Gaussians.

Marginals come from `_ref` (the processes' formulas written in the tests), the data's mean and
covariance from the GaussianScore's own parameters, so no law depends on the code under test."""

from __future__ import annotations

import _ref
import torch
from torch import Tensor

from scorekit.scores import GaussianScore
from scorekit.sde import SDE


def marginal_moments(gs: GaussianScore, t: float) -> tuple[Tensor, Tensor]:
    """Mean alpha m and covariance alpha^2 C + sigma^2 I of p_t (float64)."""
    alpha, sigma = (float(v) for v in _ref.alpha_sigma(gs.sde, t))
    eye = torch.eye(gs.dim, dtype=torch.float64)
    return alpha * gs.mean.double(), alpha**2 * gs.cov.double() + sigma**2 * eye


def chain_law(gs: GaussianScore, sde: SDE, grid: Tensor, coef: Tensor) -> tuple[Tensor, Tensor]:
    """Law of x_N for x_{i+1} = k1 x + k2 s(x, t_i) + k3 z with the exact Gaussian score.

    With s(x, t) = -C_t^{-1}(x - m_t) each step is affine: A = k1 I - k2 C^{-1},
    b = k2 C^{-1} m_t, noise k3 z; propagate (mean, cov) from the prior in float64.
    """
    d = gs.dim
    eye = torch.eye(d, dtype=torch.float64)
    m = torch.zeros(d, dtype=torch.float64)
    c = _ref.prior_std(sde) ** 2 * eye
    for i in range(len(grid) - 1):
        mt, ct = marginal_moments(gs, float(grid[i]))
        cinv = torch.linalg.inv(ct)
        k1, k2, k3 = (float(v) for v in coef[i])
        a = k1 * eye - k2 * cinv
        m = a @ m + k2 * cinv @ mt
        c = a @ c @ a.T + k3**2 * eye
    return m, c


def tweedie_affine(gs: GaussianScore, sde: SDE, t: float) -> tuple[Tensor, Tensor]:
    """(A, b) with Tweedie(x) = A x + b for the exact Gaussian score at time t."""
    mt, ct = marginal_moments(gs, t)
    tt = torch.tensor([t], dtype=torch.float64)
    alpha, sigma = (float(v) for v in _ref.alpha_sigma(sde, tt))
    cinv = torch.linalg.inv(ct)
    eye = torch.eye(gs.dim, dtype=torch.float64)
    return (eye - sigma**2 * cinv) / alpha, sigma**2 * cinv @ mt / alpha


def assert_gaussian_law(x: Tensor, mean: Tensor, cov: Tensor, n_se: float = 5.0) -> None:
    """Per eigendirection u_k of `cov`: |mean error| <= n_se sqrt(lam_k / n) and
    |var ratio - 1| <= n_se sqrt(2 / (n - 1)) (SE of a Gaussian sample variance)."""
    n = x.shape[0]
    lam, u = torch.linalg.eigh(cov)
    y = (x.double() - mean) @ u
    mean_err = y.mean(0).abs()
    var_ratio = y.var(0) / lam
    tol_mean = n_se * torch.sqrt(lam / n)
    tol_var = n_se * (2 / (n - 1)) ** 0.5
    assert (mean_err <= tol_mean).all(), f"mean error {mean_err} > {tol_mean}"
    assert ((var_ratio - 1).abs() <= tol_var).all(), f"var ratio {var_ratio} off by > {tol_var}"


def random_spd(d: int, lo: float, hi: float, seed: int = 0) -> Tensor:
    """SPD matrix with eigenvalues log-spaced in [lo, hi] and a random basis."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    lam = torch.logspace(torch.log10(torch.tensor(lo)), torch.log10(torch.tensor(hi)), d,
                         dtype=torch.float64)
    return q @ torch.diag(lam) @ q.T


def pf_ode_map(gs: GaussianScore, sde: SDE, x: Tensor, t_from: float, t_to: float) -> Tensor:
    """Closed-form probability-flow map of Gaussian data between two times (samplers.md §4.1):
    in the eigenbasis of Sigma each coordinate (x - m_t) / sqrt(c_k(t)) is constant."""
    lam, u = torch.linalg.eigh(gs.cov)
    ts = torch.tensor([t_from, t_to], dtype=torch.float64)
    alpha, sigma = _ref.alpha_sigma(sde, ts)
    c = alpha[:, None] ** 2 * lam + sigma[:, None] ** 2
    y = (x.double() - alpha[0] * gs.mean) @ u
    return alpha[1] * gs.mean + (y * (c[1] / c[0]).sqrt()) @ u.T


def pf_ode_to_level(gs: GaussianScore, sde: SDE, x: Tensor, t_from: float, level: float = 0.0
                    ) -> Tensor:
    """Closed-form PF-ODE image of x at time t_from at noise level s = sigma/alpha = `level`, in
    the rescaled coordinates x / alpha (level 0 gives the ODE's end point in data space)."""
    lam, u = torch.linalg.eigh(gs.cov)
    alpha, sigma = (float(v) for v in _ref.alpha_sigma(sde, torch.tensor([t_from],
                                                                          dtype=torch.float64)))
    s0 = sigma / alpha
    y = (x.double() / alpha - gs.mean) @ u
    return gs.mean + (y * ((lam + level**2) / (lam + s0**2)).sqrt()) @ u.T
