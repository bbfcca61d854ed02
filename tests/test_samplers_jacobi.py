"""Jacobi (Dirichlet-diffusion) sampler: stays on the simplex, keeps the stationary law under
the stationary score, recovers categorical data under its exact score, inpaints givens."""

import math

import pytest
import torch
from scipy import stats

import samplers
from samplers.jacobi import jacobi_time_grid
from scorekit.dirichlet import JacobiDiffusion, stick_breaking_inverse
from scorekit.sde import VPSDE

F64 = torch.float64


@pytest.fixture(scope="module")
def jac(tmp_path_factory):
    return JacobiDiffusion(3, T=2.0, n_time=100, n_grid=512,
                           cache_dir=tmp_path_factory.mktemp("jacobi"))


def zero_score(x, t):
    """Flat Dirichlet(1) data: the score is 0 in x at every t."""
    return torch.zeros_like(x)


def test_stationary_law_is_kept(jac):
    """Zero x-score = each stick's Beta(1, b) score: the reverse chain is the stationary
    forward one, so every stick stays Beta (KS, p > 1e-3; 200 steps keep the EM bias well
    below the KS resolution at n = 5000)."""
    res = samplers.sample(zero_score, jac, (5000, 1, 3), method="jacobi", steps=200,
                          generator=torch.Generator().manual_seed(0), dtype=F64)
    v = stick_breaking_inverse(res.x[:, 0])
    for k in range(2):
        assert stats.kstest(v[:, k].numpy(), stats.beta(1, 2 - k).cdf).pvalue > 1e-3


def test_on_simplex_and_nfe(jac):
    res = samplers.sample(zero_score, jac, (64, 5, 3), method="jacobi", steps=20,
                          time_dilation=3, generator=torch.Generator().manual_seed(1))
    assert res.x.dtype == torch.float32 and (res.x >= 0).all()
    assert (res.x.sum(-1) - 1).abs().max() < 1e-6
    assert res.nfe == 60
    taus, hs = jacobi_time_grid(jac, 20, time_dilation=3, time_dilation_start=1.0)
    starts = torch.linspace(jac.T, jac.eps, 21, dtype=F64)[:-1]
    n_dilated = int((starts <= 1.0).sum())
    assert len(taus) == 20 + 2 * n_dilated and torch.allclose(hs, torch.full_like(hs, hs[0]))
    assert (taus[1:] < taus[:-1]).all() and taus[0] == jac.T


@pytest.mark.slow
def test_exact_score_recovers_categorical_data(jac):
    """Data: one cell, categories with probabilities pi. Exact score = posterior-weighted
    transition scores (posterior ∝ pi q(x_t | e_c)); the final categories match pi within 5 SE."""
    pi = torch.tensor([0.6, 0.3, 0.1], dtype=F64)

    def score(x, t):
        probs = torch.softmax(jac.log_likelihood(x, t) + pi.log(), -1)
        return jac.posterior_score(probs, x, t)

    n = 4000
    res = samplers.sample(score, jac, (n, 1, 3), method="jacobi", steps=120,
                          generator=torch.Generator().manual_seed(2), dtype=F64)
    freq = torch.bincount(res.x[:, 0].argmax(-1), minlength=3).to(F64) / n
    se = torch.sqrt(pi * (1 - pi) / n)
    assert ((freq - pi).abs() < 5 * se).all(), freq
    assert (res.x[:, 0].amax(-1) > 0.9).float().mean() > 0.99   # ends near a vertex


def test_inpainting_keeps_givens(jac):
    n = 32
    known = torch.zeros(n, 4, dtype=torch.bool)
    known[:, :2] = True
    x_known = torch.nn.functional.one_hot(torch.tensor([2, 0, 0, 0]), 3).float().expand(n, 4, 3)
    res = samplers.sample(zero_score, jac, (n, 4, 3), method="jacobi", steps=10, known=known,
                          x_known=x_known.contiguous(), generator=torch.Generator().manual_seed(3))
    assert (res.x[:, 0, 2] > 1 - 1e-5).all() and (res.x[:, 1, 0] > 1 - 1e-5).all()
    with pytest.raises(ValueError, match="known must have shape"):
        samplers.sample(zero_score, jac, (n, 4, 3), method="jacobi", steps=2,
                        known=known[:, :3], x_known=x_known.contiguous())


def test_method_and_process_must_match(jac):
    with pytest.raises(ValueError, match="do not match"):
        samplers.sample(zero_score, jac, (4, 1, 3), method="em", steps=2)
    with pytest.raises(ValueError, match="do not match"):
        samplers.sample(zero_score, VPSDE(), (4, 3), method="jacobi", steps=2)
    with pytest.raises(ValueError, match="time_dilation must be >= 1"):
        samplers.sample(zero_score, jac, (4, 1, 3), method="jacobi", steps=2, time_dilation=0.5)
    assert math.isclose(jac.eps, 0.02)
