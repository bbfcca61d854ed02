"""1-D Jacobi diffusion: the spectral transition density against closed forms, Monte Carlo of
the SDE, autograd, and the tabulated version used by `JacobiDiffusion`."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from scorekit.processes.jacobi import (
    JacobiTable,
    beta_logpdf,
    series_order,
    speed_balanced,
    transition_logpdf,
    transition_series,
)

F64 = torch.float64
# Gauss–Legendre nodes on (0, 1): exact for the polynomial part times a smooth Beta weight here.
_X, _W = np.polynomial.legendre.leggauss(600)
V_GL, W_GL = torch.tensor((_X + 1) / 2, dtype=F64), torch.tensor(_W / 2, dtype=F64)
# (a, b, v0, t): generic parameters and the Sudoku sticks (a = 1, b = 8 and 1) near t_min.
CASES = [(2.0, 3.0, 0.6, 0.3), (1.0, 8.0, 1.0, 0.01), (1.0, 8.0, 0.0, 0.05),
         (1.0, 1.0, 1.0, 0.02), (3.5, 1.5, 0.2, 1.0)]


@pytest.mark.parametrize("a,b,v0,t", CASES)
def test_density_integrates_to_one(a, b, v0, t):
    """Normalisation holds for any truncation (orthogonality), so this checks d_0 and the
    Beta weight rather than convergence (see the truncation test)."""
    dens, _, _ = transition_series(V_GL, v0, torch.tensor([t], dtype=F64), a, b)
    assert abs(float((dens[0] * W_GL).sum()) - 1) < 1e-8


@pytest.mark.parametrize("a,b,v0,t", CASES)
def test_mean_relaxes_like_exp(a, b, v0, t):
    """Speed-balanced: E[v_t | v0] = m + (v0 - m) e^-t, m = a / (a + b)."""
    dens, _, _ = transition_series(V_GL, v0, torch.tensor([t], dtype=F64), a, b)
    m = a / (a + b)
    assert abs(float((dens[0] * V_GL * W_GL).sum()) - (m + (v0 - m) * math.exp(-t))) < 1e-8


@pytest.mark.parametrize("a,b,v0", [(1.0, 8.0, 1.0), (2.0, 3.0, 0.6), (0.7, 2.5, 0.1)])
def test_stationary_law_is_beta(a, b, v0):
    dens, _, _ = transition_series(V_GL, v0, torch.tensor([20.0], dtype=F64), a, b, order=60)
    beta = torch.exp(beta_logpdf(V_GL, a, b))
    assert torch.allclose(dens[0], beta, rtol=1e-6, atol=0)


@pytest.mark.parametrize("a,b,v0,t", [(1.0, 8.0, 1.0, 0.0025), (1.0, 8.0, 0.0, 0.01),
                                      (2.0, 3.0, 0.6, 0.05)])
def test_truncation_rule(a, b, v0, t):
    """Order N = sqrt(80 / (s t)) + 20 agrees with 2N to 1e-8 relative in the bulk."""
    n = series_order(a, b, t)
    v = torch.linspace(0.001, 0.999, 999, dtype=F64)
    tt = torch.tensor([t], dtype=F64)
    p1, _, _ = transition_series(v, v0, tt, a, b, order=n)
    p2, _, _ = transition_series(v, v0, tt, a, b, order=2 * n)
    bulk = p2[0] > 1e-3 * p2[0].max()
    assert ((p1[0] - p2[0]).abs()[bulk] / p2[0][bulk]).max() < 1e-8


@pytest.mark.parametrize("a,b,v0,t", CASES)
def test_series_score_matches_autograd(a, b, v0, t):
    """The differentiated recurrence equals autograd of log p through the recurrence."""
    v = torch.sigmoid(torch.linspace(-10, 10, 201, dtype=F64))
    dens, dens_dv, scale = transition_series(v, v0, torch.tensor([t], dtype=F64), a, b)
    # Only where the series is resolved: rounding error (~1e-16 x sum |terms|) below 1e-12.
    keep = dens[0] > 1e-4 * scale[0]
    assert keep.sum() >= 10
    vg = v[keep].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(transition_logpdf(vg, v0, t, a, b).sum(), vg)
    score = (dens_dv / dens)[0][keep]
    assert torch.allclose(score, grad, rtol=1e-9, atol=1e-9 * score.abs().max())


def _simulate(a, b, v0, times, n, steps_per_unit, seed):
    """Euler–Maruyama paths of dv = (s/2)(a(1 - v) - b v) dt + sqrt(s v (1 - v)) dW."""
    s = speed_balanced(a, b)
    gen = torch.Generator().manual_seed(seed)
    v = torch.full((n,), v0, dtype=F64)
    out, t = {}, 0.0
    for target in times:
        k = round((target - t) * steps_per_unit)
        h = (target - t) / k
        for _ in range(k):
            z = torch.randn(n, generator=gen, dtype=F64)
            v = v + 0.5 * s * (a * (1 - v) - b * v) * h \
                + torch.sqrt((s * v * (1 - v)).clamp_min(0) * h) * z
            v = v.clamp(0.0, 1.0)
        t = target
        out[target] = v.clone()
    return out


def _series_cdf(a, b, v0, t):
    v = torch.linspace(0, 1, 4001, dtype=F64)[1:-1]
    dens, _, _ = transition_series(v, v0, torch.tensor([t], dtype=F64), a, b)
    d = dens[0].clamp_min(0).numpy()
    grid = np.concatenate([[0.0], v.numpy(), [1.0]])
    d = np.concatenate([[d[0]], d, [d[-1]]])
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]) * np.diff(grid))])
    cdf /= cdf[-1]
    return lambda x: np.interp(x, grid, cdf)


@pytest.mark.slow
def test_density_matches_sde_monte_carlo():
    """KS of 1e4 EM paths (2000 steps per unit time; weak error O(dt) ~ 5e-4, far below the KS
    resolution 1/sqrt(n) = 0.01) against the series CDF at three times; p > 1e-3 each."""
    a, b, v0 = 2.0, 3.0, 0.6
    times = (0.05, 0.3, 1.0)
    paths = _simulate(a, b, v0, times, 10000, 2000, seed=0)
    for t in times:
        res = stats.kstest(paths[t].numpy(), _series_cdf(a, b, v0, t))
        assert res.pvalue > 1e-3, (t, res)


def test_table_matches_series_and_inverse_cdf_sampling():
    """Tabulated log p and score equal the series where it is resolved; inverse-CDF draws from
    the table pass a KS test against the series CDF (the exact noise sampler)."""
    a, b, s = 1.0, 8.0, speed_balanced(1.0, 8.0)
    times = torch.tensor([0.01, 0.1, 0.5], dtype=F64)
    tab = JacobiTable.build(1.0, times, a, b, s, n_grid=512)
    dens, dens_dv, _ = transition_series(tab.grid, 1.0, times, a, b, s)
    ok = tab.reliable & (dens > 1e-6 * dens.amax(1, keepdim=True))
    assert torch.allclose(tab.logp[ok], torch.log(dens[ok]), rtol=0, atol=1e-9)
    assert torch.allclose(tab.score[ok], (dens_dv / dens)[ok], rtol=1e-9, atol=1e-9)
    assert (tab.cdf[:, 1:] >= tab.cdf[:, :-1]).all()
    gen = torch.Generator().manual_seed(0)
    for i, t in enumerate(times.tolist()):
        u = torch.rand(20000, generator=gen, dtype=F64)
        draws = np.interp(u.numpy(), tab.cdf[i].numpy(), tab.grid.numpy())
        assert stats.kstest(draws, _series_cdf(a, b, 1.0, t)).pvalue > 1e-3


def test_tail_is_continuous_and_decays():
    """Beyond the resolved region log p continues the small-time asymptote from its last
    resolved value and keeps decreasing away from v0."""
    times = torch.tensor([0.0025, 0.01], dtype=F64)
    tab = JacobiTable.build(1.0, times, 1.0, 8.0, speed_balanced(1.0, 8.0), n_grid=512)
    for i in range(len(times)):
        assert not tab.reliable[i].all() and tab.reliable[i, -1]
        tail = ~tab.reliable[i]
        assert (tab.logp[i][tail][1:] >= tab.logp[i][tail][:-1]).all()   # rising towards v0
        first = int(tab.reliable[i].nonzero()[0])
        jump = tab.logp[i, first] - tab.logp[i, first - 1]
        slope = tab.score[i, first] * (tab.grid[first] - tab.grid[first - 1])
        assert abs(float(jump)) < 3 * abs(float(slope)) + 1.0
