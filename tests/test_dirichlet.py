"""Dirichlet diffusion on the simplex: stick-breaking, score conversions and `JacobiDiffusion`
(exact noising, scores and likelihoods from the cached series tables)."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from scorekit import io as ckpt
from scorekit.dirichlet import (
    JacobiDiffusion,
    gv_to_gx,
    gx_to_gv,
    stick_breaking,
    stick_breaking_inverse,
    stick_log,
    stick_logdet,
)
from scorekit.processes.jacobi import beta_logpdf, transition_logpdf, transition_series

F64 = torch.float64
K = 4


def _dirichlet(n, k, seed=0, near_vertex=True):
    gen = torch.Generator().manual_seed(seed)
    g = -torch.log(torch.rand(n, k, generator=gen, dtype=F64))
    x = g / g.sum(1, keepdim=True)
    if near_vertex:  # a tenth of the points within 1e-6 of a vertex
        hot = torch.nn.functional.one_hot(torch.randint(k, (n // 10,), generator=gen), k)
        x[: n // 10] = (1 - 1e-6) * hot + 1e-6 * x[: n // 10]
    return x / x.sum(1, keepdim=True)


@pytest.fixture(scope="module")
def jac(tmp_path_factory):
    return JacobiDiffusion(K, T=1.0, n_time=50, n_grid=512,
                           cache_dir=tmp_path_factory.mktemp("jacobi"))


def test_stick_breaking_round_trips():
    x = _dirichlet(2000, 6)
    v = stick_breaking_inverse(x)
    assert ((v >= 0) & (v <= 1)).all()
    assert torch.allclose(stick_breaking(v), x, rtol=0, atol=1e-12)
    v2 = torch.rand(2000, 5, dtype=F64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(stick_breaking_inverse(stick_breaking(v2)), v2, rtol=0, atol=1e-12)
    log_v, log_1mv = stick_log(x)
    assert torch.allclose(log_v.exp(), v, rtol=1e-12, atol=0)
    assert torch.allclose(log_1mv.exp(), 1 - v, rtol=1e-9, atol=1e-15)


def test_stick_logdet_matches_jacobian():
    v = stick_breaking_inverse(_dirichlet(5, 6, near_vertex=False))
    jac = torch.stack([torch.autograd.functional.jacobian(lambda u: stick_breaking(u)[:-1], u)
                       for u in v])
    assert torch.allclose(torch.linalg.slogdet(jac)[1], stick_logdet(v), rtol=0, atol=1e-10)


def test_uniform_sticks_give_flat_dirichlet():
    """Independent v_k ~ Beta(1, K-1-k) => x ~ Dirichlet(1, ..., 1): mean 1/K and variance
    (K-1)/(K^2 (K+1)) per coordinate, within 5 standard errors."""
    k, n = 6, 200000
    gen = torch.Generator().manual_seed(2)
    b = torch.arange(k - 1, 0, -1, dtype=F64)
    v = -torch.expm1(torch.log1p(-torch.rand(n, k - 1, generator=gen, dtype=F64)) / b)
    x = stick_breaking(v)
    var = (k - 1) / (k**2 * (k + 1))
    assert ((x.mean(0) - 1 / k).abs() < 5 * math.sqrt(var / n)).all()
    # var of the sample variance ~ (m4 - var^2) / n; m4 from the samples themselves
    m4 = ((x - 1 / k) ** 4).mean(0)
    assert ((x.var(0) - var).abs() < 5 * torch.sqrt((m4 - var**2) / n)).all()


def test_score_conversions_round_trip_and_match_autograd():
    x = _dirichlet(500, 5)
    g = torch.randn(500, 5, dtype=F64, generator=torch.Generator().manual_seed(3))
    g = g - g.mean(1, keepdim=True)
    gv = gx_to_gv(g, x)
    err = (gv_to_gx(gv, x) - g).abs().amax(1)
    # Near a vertex gv holds 1/(1 - v) ~ 1e7 terms: the round trip is exact to ~eps x |gv|.
    assert (err < 1e-13 * (1 + gv.abs().amax(1))).all()
    # log p_V(v) = c . x(v) + log|det|: its v-gradient is gx_to_gv of the constant c
    c = torch.randn(5, dtype=F64, generator=torch.Generator().manual_seed(4))
    v = stick_breaking_inverse(x[100:120]).requires_grad_(True)
    (auto,) = torch.autograd.grad(((stick_breaking(v) * c).sum(1) + stick_logdet(v)).sum(), v)
    assert torch.allclose(gx_to_gv(c.expand(20, 5), x[100:120]), auto, rtol=1e-10, atol=1e-10)


def _exact_logq(v, c, t):
    """log q(v | e_c) from the series: sticks before c from 0, c from 1, after stationary."""
    out = torch.zeros((), dtype=F64)
    for j in range(K - 1):
        a, b = 1.0, float(K - 1 - j)
        if j <= c:
            out = out + transition_logpdf(v[j:j + 1], float(j == c), t, a, b)[0]
        else:
            out = out + beta_logpdf(v[j], a, b)
    return out


def test_transition_score_and_likelihood_match_series(jac):
    """Table lookups vs the series with autograd; tolerance: linear interpolation on the logit
    grid (spacing 32/511 = 0.063, error ~ h^2 f''/8, observed ~1e-3 relative)."""
    gen = torch.Generator().manual_seed(5)
    x0 = torch.nn.functional.one_hot(torch.arange(K).repeat(5), K).to(F64)
    t = torch.full((len(x0),), 0.3, dtype=F64)
    xt = jac.noise(x0, t, generator=gen)
    score = jac.transition_score(xt, x0, t)
    loglik = jac.log_likelihood(xt, t)
    assert torch.allclose(score.sum(-1), torch.zeros(len(x0), dtype=F64), atol=1e-9)
    for i in range(len(x0)):
        c = int(x0[i].argmax())
        v = stick_breaking_inverse(xt[i]).clone().requires_grad_(True)
        lq = _exact_logq(v, c, 0.3)
        (gv,) = torch.autograd.grad(lq, v)
        exact = gv_to_gx(gv, xt[i])
        assert (score[i] - exact).abs().max() < 5e-3 * exact.abs().max()
        assert abs(float(loglik[i, c] - lq.detach())) < 5e-3 * (1 + abs(float(lq.detach())))


@pytest.mark.parametrize("t", [0.06, 0.5])
def test_noise_is_exact(jac, t):
    """Noised sticks vs their laws: KS of stick c (from 1) and stick 0 (from 0 when c > 0)
    against the series CDF, and stationary sticks against Beta; p > 1e-3."""
    n, c = 4000, 2
    x0 = torch.nn.functional.one_hot(torch.full((n,), c), K).to(F64)
    v = jac.noise_v(x0, torch.full((n,), t, dtype=F64), generator=torch.Generator().manual_seed(6))
    grid = torch.linspace(0, 1, 4001, dtype=F64)[1:-1]
    for j, v0 in ((c, 1.0), (0, 0.0)):
        dens, _, _ = transition_series(grid, v0, torch.tensor([t], dtype=F64), 1.0,
                                       float(K - 1 - j))
        dens = dens[0].clamp_min(0).numpy()   # tail rounding noise can dip below 0
        cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(grid))])
        cdf_fn = lambda q, c=cdf / cdf[-1]: np.interp(q, grid.numpy(), c)  # noqa: E731
        res = stats.kstest(v[:, j].numpy(), cdf_fn)
        assert res.pvalue > 1e-3, (j, res)
    for j in range(c + 1, K - 1):
        assert stats.kstest(v[:, j].numpy(), stats.beta(1, K - 1 - j).cdf).pvalue > 1e-3


def test_flat_dirichlet_fast_path_is_a_different_law(jac):
    """DDSM's "fast" flat-Dirichlet noising (hot coordinate ~ Jacobi(1, K-1) from 1 for every
    category) matches the stick process only for the first category: for the last one the mean
    of x_c is m + (1 - m) e^-t with other rates (here 5 SE away and more)."""
    n, t = 20000, 0.3
    gen = torch.Generator().manual_seed(7)
    m = 1 / K
    fast_mean = m + (1 - m) * math.exp(-t)
    for c, same in ((0, True), (K - 1, False)):
        x0 = torch.nn.functional.one_hot(torch.full((n,), c), K).to(F64)
        xc = jac.noise(x0, torch.full((n,), t, dtype=F64), generator=gen)[:, c]
        z = abs(float(xc.mean()) - fast_mean) / float(xc.std() / math.sqrt(n))
        assert (z < 5) == same, (c, z)


def test_prior_is_flat_dirichlet(jac):
    x = jac.prior_sample((50000, K), generator=torch.Generator().manual_seed(8), dtype=F64)
    assert torch.allclose(x.sum(-1), torch.ones(50000, dtype=F64), atol=1e-12)
    var = (K - 1) / (K**2 * (K + 1))
    assert ((x.mean(0) - 1 / K).abs() < 5 * math.sqrt(var / 50000)).all()


def test_tables_cached_atomically_and_keyed(jac, tmp_path_factory):
    files = list(jac.cache_dir.glob("*.safetensors"))
    assert len(files) == 1 and not list(jac.cache_dir.glob(".*tmp"))
    _, meta = ckpt.load(files[0])
    assert meta["key"]["K"] == K and meta["key"]["n_time"] == 50
    again = JacobiDiffusion(K, T=1.0, n_time=50, n_grid=512, cache_dir=jac.cache_dir)
    assert torch.equal(again._tables["table"], jac._tables["table"])
    JacobiDiffusion(K, T=1.0, n_time=40, n_grid=512, cache_dir=jac.cache_dir)
    assert len(list(jac.cache_dir.glob("*.safetensors"))) == 2


def test_loss_weight_normalised(jac):
    w = jac.loss_weight
    assert w.shape == (50,) and abs(float(w.mean()) - 1) < 1e-12 and (w > 0).all()
    assert w[0] > w[-1]   # scores grow like 1/t near the vertex


def test_validation(jac):
    with pytest.raises(ValueError, match="num_categories must be an integer >= 2, got 1"):
        JacobiDiffusion(1, cache_dir=False)
    with pytest.raises(ValueError, match="speed"):
        JacobiDiffusion(3, speed="fast", cache_dir=False)
    x0 = torch.nn.functional.one_hot(torch.zeros(2, dtype=torch.long), K).to(F64)
    with pytest.raises(ValueError, match=r"t=0\.001 is outside \[eps, T\]"):
        jac.noise(x0, torch.full((2,), 1e-3, dtype=F64))
    with pytest.raises(ValueError, match="one-hot"):
        jac.noise(x0 * 0.5, torch.full((2,), 0.5, dtype=F64))
    with pytest.raises(ValueError, match="4 categories"):
        jac.noise(torch.ones(2, 3, dtype=F64) / 3, torch.full((2,), 0.5, dtype=F64))
