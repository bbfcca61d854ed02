"""Densities with a known clean score: exact samplers and scores against closed forms.

Scores are checked against autograd of independently written log densities (float64, 1e-12);
samplers by moments (4 SE) or a KS test against a quadrature CDF (p > 1e-3).
"""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from scorekit.data import make_dataset
from scorekit.data.boltzmann import (
    banana,
    banana_log_prob,
    banana_score,
    double_well,
    double_well_score,
    gmm_score,
    quartic_well,
)
from scorekit.data.synthetic import gmm_params
from scorekit.processes.nonlinear import quartic_well_log_norm

F64 = torch.float64


def _autograd_score(log_prob, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(log_prob(x).sum(), x)
    return grad


def test_banana_score_and_normalisation():
    """banana_score = grad of banana_log_prob (1e-12); the density integrates to 1 (1e-10);
    moments: E x1 = E x2 = 0, Var x1 = a^2, Var x2 = 2 a^4 b^2 + s^2 (4 SE,
    n = 200k; Var SE from the fourth moment of the draws)."""
    p = {"a": 1.2, "b": 0.7, "s": 0.4}
    x = torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(banana_score(x, **p),
                               _autograd_score(lambda v: banana_log_prob(v, **p), x),
                               rtol=1e-12, atol=1e-12)

    # Trapezoid rule (spectrally accurate for these smooth, fast-decaying integrands) with the
    # x2 window following the ridge x2 = b (x1^2 - a^2) for each x1.
    x1 = torch.linspace(-8 * p["a"], 8 * p["a"], 1601, dtype=F64)
    u = torch.linspace(-10 * p["s"], 10 * p["s"], 801, dtype=F64)
    x2 = p["b"] * (x1[:, None] ** 2 - p["a"] ** 2) + u
    grid = torch.stack([x1[:, None].expand_as(x2), x2], -1).reshape(-1, 2)
    inner = torch.trapezoid(banana_log_prob(grid, **p).exp().reshape(x2.shape), u, dim=1)
    assert abs(torch.trapezoid(inner, x1).item() - 1) < 1e-10
    n = 200_000
    d = banana(n, generator=torch.Generator().manual_seed(1), dtype=F64, **p)
    var = torch.tensor([p["a"] ** 2, 2 * p["a"] ** 4 * p["b"] ** 2 + p["s"] ** 2], dtype=F64)
    assert ((d.mean(0)).abs() <= 4 * (var / n).sqrt()).all(), d.mean(0)
    c = d - d.mean(0)
    se_var = ((c**4).mean(0) - c.var(0) ** 2).sqrt() / math.sqrt(n)
    assert ((c.var(0) - var).abs() <= 4 * se_var).all(), (c.var(0), var)


@pytest.mark.parametrize("k", [0.5, 2.0, 8.0])
def test_quartic_well_sampler_and_normaliser(k):
    """Draws from ∝ exp(-k (y^2 - 1)^2) pass a KS test against the quadrature CDF (n = 50k);
    the log normaliser matches scipy quad to 1e-10."""
    z, _ = integrate.quad(lambda y: math.exp(-k * (y * y - 1) ** 2), -np.inf, np.inf,
                          epsabs=0, epsrel=1e-13, limit=200)
    assert abs(quartic_well_log_norm(k) - math.log(z)) < 1e-10
    y = np.linspace(-4, 4, 40_001)
    cdf = integrate.cumulative_trapezoid(np.exp(-k * (y * y - 1) ** 2) / z, y, initial=0)
    x = quartic_well(50_000, k, generator=torch.Generator().manual_seed(2)).numpy()
    assert stats.kstest(x, lambda v: np.interp(v, y, cdf)).pvalue > 1e-3


def test_quartic_well_ks_has_power():
    """The same KS test rejects the draws of a neighbouring law (k = 2 tested against k = 2.5)."""
    k, k_wrong = 2.0, 2.5
    z = math.exp(quartic_well_log_norm(k_wrong))
    y = np.linspace(-4, 4, 40_001)
    cdf = integrate.cumulative_trapezoid(np.exp(-k_wrong * (y * y - 1) ** 2) / z, y, initial=0)
    x = quartic_well(50_000, k, generator=torch.Generator().manual_seed(2)).numpy()
    assert stats.kstest(x, lambda v: np.interp(v, y, cdf)).pvalue < 1e-3


def test_double_well_and_gmm_scores():
    """double_well_score = -grad U; gmm_score = grad log of the mixture written with
    torch.distributions (autograd, 1e-12)."""
    x = 1.5 * torch.randn(64, 2, dtype=F64, generator=torch.Generator().manual_seed(3))

    def neg_u(v):
        return -2.0 * (v[:, 0] ** 2 - 1) ** 2 - 0.5 * v[:, 1] ** 2

    torch.testing.assert_close(double_well_score(x, barrier=2.0), _autograd_score(neg_u, x),
                               rtol=1e-12, atol=1e-12)
    w, means, covs = gmm_params(layout="three")

    def log_mix(v):
        comps = torch.distributions.MultivariateNormal(means, covariance_matrix=covs)
        return torch.logsumexp(comps.log_prob(v[:, None, :]) + w.log(), dim=1)

    torch.testing.assert_close(gmm_score(x, layout="three"), _autograd_score(log_mix, x),
                               rtol=1e-10, atol=1e-12)


def test_double_well_dataset_marginals():
    """x2 ~ N(0, 1) and x1 symmetric about 0 (4 SE, n = 100k)."""
    x = double_well(100_000, generator=torch.Generator().manual_seed(4), dtype=F64)
    n = x.shape[0]
    assert abs(x[:, 1].mean()) <= 4 / math.sqrt(n) and abs(x[:, 1].var() - 1) <= 4 * math.sqrt(
        2 / n)
    assert abs(x[:, 0].mean()) <= 4 * x[:, 0].std() / math.sqrt(n)


@pytest.mark.parametrize("name", ["gmm", "banana", "double_well"])
def test_dataset_clean_score(name):
    ds = make_dataset(name, n_train=100, n_test=10)
    assert ds.has_clean_score
    s = ds.score(ds.train)
    assert s.shape == ds.train.shape and s.dtype == ds.train.dtype and torch.isfinite(s).all()


def test_dataset_without_clean_score_raises():
    ds = make_dataset("moons", n_train=10, n_test=10)
    assert not ds.has_clean_score
    with pytest.raises(ValueError, match="dataset 'moons' has no known clean score"):
        ds.score(ds.train)
