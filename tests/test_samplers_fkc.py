"""Feynman–Kac correctors (samplers.md §5) against closed-form targets at eps.

Every statistical check runs G = 8 independent SMC populations of N = 4096 particles in one
batched call (`groups=8`) and takes its standard error from the spread of the 8 population
estimates (resampling correlates particles, so an i.i.d. or ESS-based SE would be too small):
the pooled estimate must lie within 4 SE of the truth. The uncorrected samplers (same drift, no
weights) are shown to miss the same truths by more than that.
"""

import math

import pytest
import torch

import samplers
from samplers.fkc import ess, mala_move, resample_indices
from scorekit.scores import GaussianScore, GMMScore
from scorekit.sde import VPSDE

G, N = 8, 4096
SDE_ = VPSDE()


def _gauss(m, v):
    return GaussianScore(torch.tensor([m], dtype=torch.float64),
                         torch.tensor([[v]], dtype=torch.float64), SDE_)


def _eps_moments(score):
    """Means (K,) and variances (K,) of a 1-D score's eps-marginal components, and weights."""
    w, m, c = score.marginal_params(SDE_.eps)
    return w, m[:, 0], c[:, 0, 0]


def _run(scores, mode, seed=0, steps=200, **kw):
    res = samplers.fkc_sample(scores, SDE_, (G * N, 1), mode=mode, steps=steps, groups=G,
                              dtype=torch.float64, generator=torch.Generator().manual_seed(seed),
                              **kw)
    return res, res.log_weights.exp().view(G, N), res.x.view(G, N)


def _pooled(stat):
    """Pooled estimate over the G populations and its standard error."""
    return stat.mean().item(), stat.std().item() / math.sqrt(G)


def _check_moments(w, x, mean, var):
    """Weighted mean and variance of each population; pooled within 4 SE of (mean, var)."""
    m = (w * x).sum(1)
    v = (w * (x - m[:, None]) ** 2).sum(1)
    (m_hat, m_se), (v_hat, v_se) = _pooled(m), _pooled(v)
    assert abs(m_hat - mean) <= 4 * m_se, f"mean {m_hat:.4f} vs {mean:.4f}, SE {m_se:.2g}"
    assert abs(v_hat - var) <= 4 * v_se, f"var {v_hat:.4f} vs {var:.4f}, SE {v_se:.2g}"
    return m_hat, v_hat


def _naive(score_fn, seed=0):
    """Plain EM with the combined score and no weights: the uncorrected baseline."""
    res = samplers.sample(score_fn, SDE_, (G * N, 1), method="em", steps=200, denoise="none",
                          dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return res.x[:, 0]


def _assert_naive_off(x, mean, var):
    """The unweighted sampler misses mean or variance by > 4 i.i.d. standard errors."""
    n = x.numel()
    off_m = abs(x.mean().item() - mean) / math.sqrt(var / n)
    off_v = abs(x.var().item() / var - 1) / math.sqrt(2 / (n - 1))
    assert max(off_m, off_v) > 4, f"naive sampler is not measurably biased ({off_m}, {off_v})"


@pytest.mark.slow
@pytest.mark.parametrize("var, bar, naive_gap", [((0.16, 0.16), 0.03, 0.0),
                                                ((0.09, 0.36), None, 0.03)])
def test_fkc_anneal_gmm_mode_weights(var, bar, naive_gap):
    """p = 0.3 N(-2, v1) + 0.7 N(2, v2), beta = 2: the mass of x < 0 under p_eps^2, by
    quadrature on a 20k-point grid (≈ w_k^2 / sqrt(v_k), normalised, for separated modes), is
    recovered by the pooled estimate within 4 SE. Equal variances (the spec's case): every
    population of N = 4096 within 0.03, the issue's bar (benchmarks/fkc_anneal.py: SD over
    populations 0.007 at the default 500 steps with one MALA move each, so 0.03 is > 4 SD); there
    the unweighted annealed-score EM is only 0.013 off, but > 4 binomial SE. Unequal variances
    (SD 0.011, so 0.03 is < 3 SD and not asserted per population): the unweighted sampler
    misses by 0.11, more than 0.03."""
    p = GMMScore(torch.tensor([0.3, 0.7]), torch.tensor([[-2.0], [2.0]]),
                 torch.tensor(var)[:, None, None], SDE_)
    grid = torch.linspace(-8, 8, 20001, dtype=torch.float64)[:, None]
    logp = 2 * p.marginal_logp(grid, torch.full((20001,), SDE_.eps, dtype=torch.float64))
    ref = (torch.softmax(logp, 0) * (grid[:, 0] < 0)).sum().item()
    res, w, x = _run(p, "anneal", beta=2.0, steps=500)
    masses = (w * (x < 0)).sum(1)
    if bar is not None:
        assert (masses - ref).abs().max() <= bar, f"{masses} vs {ref:.4f}"
    mass, se = _pooled(masses)
    assert abs(mass - ref) <= 4 * se, f"mass {mass:.4f} vs {ref:.4f}, SE {se:.2g}"
    # left-mode variance: v_eps / beta for a Gaussian mode raised to beta
    _, _, c = _eps_moments(p)
    left = (x < 0).double()
    wl = w * left / (w * left).sum(1, keepdim=True)
    ml = (wl * x).sum(1, keepdim=True)
    var_l, var_se = _pooled((wl * (x - ml) ** 2).sum(1))
    assert abs(var_l - c[0].item() / 2) <= 4 * var_se
    assert res.info["n_resample"] > 0 and res.info["ess"].shape == (500, G)
    naive = (_naive(lambda x, t: 2.0 * p(x, t)) < 0).double().mean().item()
    assert abs(naive - ref) > max(naive_gap, 4 * math.sqrt(ref * (1 - ref) / (G * N))), naive


@pytest.mark.slow
def test_fkc_product_gaussians():
    """q1 = N(-1, 0.5^2), q2 = N(1.5, 1): the normalised product of the eps-marginals is
    Gaussian with precision 1/c1 + 1/c2 and mean c (m1/c1 + m2/c2)."""
    q1, q2 = _gauss(-1.0, 0.25), _gauss(1.5, 1.0)
    (_, m1, c1), (_, m2, c2) = _eps_moments(q1), _eps_moments(q2)
    var = 1 / (1 / c1 + 1 / c2)
    mean = (var * (m1 / c1 + m2 / c2)).item()
    res, w, x = _run([q1, q2], "product")
    _check_moments(w, x, mean, var.item())
    assert res.nfe == 2 * (200 * 2 + 1)  # two scores; per step a move + a predictor
    _assert_naive_off(_naive(lambda x, t: q1(x, t) + q2(x, t)), mean, var.item())


@pytest.mark.slow
def test_fkc_product_gauss_gmm():
    """N(0.5, 1) x (0.4 N(-1.5, 0.3^2) + 0.6 N(1.5, 0.5^2)) at eps: a GMM with weights
    ∝ w_k N(m; m_k, c + c_k), means (m/c + m_k/c_k) v_k, variances v_k = (1/c + 1/c_k)^-1."""
    q1 = _gauss(0.5, 1.0)
    q2 = GMMScore(torch.tensor([0.4, 0.6]), torch.tensor([[-1.5], [1.5]]),
                  torch.tensor([0.09, 0.25])[:, None, None], SDE_)
    (_, m, c), (wk, mk, ck) = _eps_moments(q1), _eps_moments(q2)
    vk = 1 / (1 / c + 1 / ck)
    muk = vk * (m / c + mk / ck)
    pk = wk * torch.exp(-0.5 * (m - mk) ** 2 / (c + ck)) / torch.sqrt(c + ck)
    pk = pk / pk.sum()
    mean = (pk * muk).sum().item()
    var = (pk * (vk + muk**2)).sum().item() - mean**2
    _, w, x = _run([q1, q2], "product")
    _check_moments(w, x, mean, var)


@pytest.mark.slow
def test_fkc_cfg_geometric_mixture():
    """q_u = N(0, 1), q_c = N(2, 0.5^2), w = 3: q_u^(1-w) q_c^w at eps is Gaussian with precision
    (1-w)/c_u + w/c_c (≈ N(2.4, 0.1)); the precision stays positive along the whole path."""
    qu, qc, gw = _gauss(0.0, 1.0), _gauss(2.0, 0.25), 3.0
    (_, mu, cu), (_, mc, cc) = _eps_moments(qu), _eps_moments(qc)
    var = 1 / ((1 - gw) / cu + gw / cc)
    mean = (var * ((1 - gw) * mu / cu + gw * mc / cc)).item()
    res, w, x = _run([qu, qc], "cfg", guidance=gw)
    _check_moments(w, x, mean, var.item())
    assert res.nfe == 2 * (200 * 2 + 1)
    _assert_naive_off(_naive(lambda x, t: (1 - gw) * qu(x, t) + gw * qc(x, t)), mean, var.item())


@pytest.mark.parametrize("scheme", ["systematic", "multinomial", "stratified"])
def test_resampling_unbiased(scheme):
    """Offspring counts average N W_i over 1e4 independent rows (5 SE)."""
    wts = torch.tensor([0.05, 0.3, 0.01, 0.14, 0.5, 0.0, 0.0, 0.0], dtype=torch.float64)
    reps, n = 10_000, wts.numel()
    idx = resample_indices(wts.expand(reps, n), scheme, torch.Generator().manual_seed(0))
    counts = torch.zeros(reps, n, dtype=torch.float64).scatter_add_(
        1, idx, torch.ones_like(idx, dtype=torch.float64))
    se = counts.std(0) / math.sqrt(reps)
    assert ((counts.mean(0) - n * wts).abs() <= 5 * se + 1e-12).all()
    assert (counts[:, 5:] == 0).all()  # zero weight: never an ancestor


def test_systematic_variance_below_multinomial():
    wts = torch.tensor([0.05, 0.3, 0.01, 0.14, 0.5], dtype=torch.float64).expand(10_000, 5)

    def var(scheme):
        idx = resample_indices(wts, scheme, torch.Generator().manual_seed(1))
        c = torch.zeros(wts.shape, dtype=torch.float64).scatter_add_(
            1, idx, torch.ones_like(idx, dtype=torch.float64))
        return c.var(0)

    assert (var("systematic") <= var("multinomial")).all()


def test_mala_move_keeps_gaussian_at_large_steps():
    """pi = N(1, 0.5^2): its log density is quadratic, so the trapezoid log-ratio is exact and
    MALA keeps pi at snr = 1 (step ≈ 2 var, where unadjusted Langevin's stationary variance is
    var / (1 - step / (4 var)) ≈ 2 var). Mean and variance of 2e4 particles after 10 moves
    within 4 SE."""
    m, v, n = 1.0, 0.25, 20_000
    score = lambda x, t: -(x - m) / v
    gen = torch.Generator().manual_seed(0)
    x = m + v**0.5 * torch.randn(n, 1, dtype=torch.float64, generator=gen)
    t = torch.full((n,), 0.5, dtype=torch.float64)
    s = [score(x, t)]
    rate = 0.0
    for _ in range(10):
        x, s, acc = mala_move([score], (1.0,), x, s, t, 1.0, 1, gen)
        rate += acc.double().mean().item() / 10
    assert torch.allclose(s[0], score(x, t))  # the returned scores belong to the moved x
    assert abs(x.mean().item() - m) <= 4 * math.sqrt(v / n)
    assert abs(x.var().item() / v - 1) <= 4 * math.sqrt(2 / n)
    assert 0.2 < rate < 1.0  # the step is large enough for rejections to matter


def test_ess_log_space():
    e = ess(torch.tensor([1000.0, 1000.0, -math.inf]))
    assert math.isfinite(e.item()) and e.item() == pytest.approx(2.0, abs=1e-12)


def test_nfe_info_and_method_path():
    """anneal costs 1 + n_corrector NFE per step and particle (+1 for the first predictor when
    moves reuse their scores); method='fkc' of samplers.sample returns equal weights after the
    final resample; info carries the ESS trace."""
    q = _gauss(0.0, 0.5)
    assert samplers.fkc_sample(q, SDE_, (64, 1), steps=10).nfe == 21
    res = samplers.fkc_sample(q, SDE_, (64, 1), steps=10, n_corrector=0,
                              generator=torch.Generator())
    assert res.nfe == 10 and res.info["ess"].shape == (10,) and res.log_weights.dtype == \
        torch.float64
    assert torch.logsumexp(res.log_weights, 0).item() == pytest.approx(0.0, abs=1e-9)
    out = samplers.sample(q, SDE_, (64, 1), method="fkc", steps=10, beta=2.0, n_corrector=2)
    assert out.nfe == 31
    assert torch.allclose(out.info["log_weights"], torch.full((64,), -math.log(64),
                                                              dtype=torch.float64))
    with pytest.raises(ValueError, match="mode='anneal' only"):
        samplers.sample(q, SDE_, (64, 1), method="fkc", steps=2, mode="product")


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "sum"}, "unknown mode 'sum'"),
    ({"beta": 0.0}, "beta must be"),
    ({"mode": "cfg", "n_scores": 2}, "guidance"),
    ({"mode": "product"}, "needs 2 score"),
    ({"resample": "residual"}, "'residual'"),
    ({"ess_threshold": 0.0}, "ess_threshold"),
    ({"ess_threshold": 1.5}, "ess_threshold"),
    ({"steps": 0}, "steps must be"),
    ({"shape": (4,)}, "shape must be"),
    ({"groups": 3}, "groups=3"),
    ({"max_log_increment": -1.0}, "max_log_increment"),
    ({"n_corrector": -1}, "n_corrector"),
    ({"snr": 0.0}, "snr must be"),
])
def test_bad_arguments_named(kwargs, match):
    kw = {"shape": (4, 1), **kwargs}
    scores = [_gauss(0.0, 1.0)] * kw.pop("n_scores", 1)
    with pytest.raises(ValueError, match=match):
        samplers.fkc_sample(scores, SDE_, **kw)


def _start_and_end(scores, mode, n_corrector, **kw):
    """Particles at t = T (the callback's first call) and the final weighted population."""
    seen = []

    def record(i, t, x, x0):
        if i == 0:
            seen.append(x.clone())

    res = samplers.fkc_sample(scores, SDE_, (8 * 2048, 1), mode=mode, steps=200, groups=8,
                              n_corrector=n_corrector, dtype=torch.float64, callback=record,
                              generator=torch.Generator().manual_seed(1), **kw)
    return seen[0], res


@pytest.mark.parametrize("mode", ["anneal", "product", "cfg"])
def test_fkc_particles_start_from_the_tempered_prior(mode):
    """pi_T ∝ prior^A with A = sum_j a_j: beta for anneal, 2 for product, 1 for cfg's
    (1 - w, w). The VP prior is N(0, 1), so the start has variance 1 / A (5 SE bound)."""
    q1, q2 = _gauss(-1.0, 0.25), _gauss(1.5, 1.0)
    scores, kw, a = {"anneal": (q1, {"beta": 3.0}, 3.0), "product": ([q1, q2], {}, 2.0),
                     "cfg": ([q1, q2], {"guidance": 2.5}, 1.0)}[mode]
    x_t, _ = _start_and_end(scores, mode, 0, **kw)
    n = x_t.numel()
    assert abs(x_t.var().item() * a - 1) <= 5 * math.sqrt(2 / (n - 1))
    assert abs(x_t.mean().item()) <= 5 * math.sqrt(1 / (a * n))


@pytest.mark.parametrize("mode", ["anneal", "product", "cfg"])
def test_fkc_without_moves_hits_the_gaussian_target(mode):
    """n_corrector=0 (weights and resampling alone, no MALA moves to hide a wrong start): the
    weighted population's moments match the closed-form target at eps, written here from the
    Gaussians' eps-marginals (N(m, c)^beta = N(m, c / beta); products and geometric mixtures
    add precisions)."""
    # cfg: q_u = N(0, 1), q_c = N(2, 0.25), w = 3 keeps the precision (1-w)/c_u + w/c_c > 0.
    q1, q2 = (_gauss(-1.0, 0.25), _gauss(1.5, 1.0)) if mode != "cfg" else \
        (_gauss(0.0, 1.0), _gauss(2.0, 0.25))
    (_, m1, c1), (_, m2, c2) = _eps_moments(q1), _eps_moments(q2)
    if mode == "anneal":
        beta = 3.0
        scores, kw, mean, var = q1, {"beta": beta}, m1.item(), (c1 / beta).item()
    else:
        a1, a2 = (1.0, 1.0) if mode == "product" else (1 - 3.0, 3.0)
        prec = a1 / c1 + a2 / c2
        scores, kw = [q1, q2], ({} if mode == "product" else {"guidance": 3.0})
        mean, var = ((a1 * m1 / c1 + a2 * m2 / c2) / prec).item(), (1 / prec).item()
    _, res = _start_and_end(scores, mode, 0, **kw)
    w = res.log_weights.exp().view(8, 2048)
    _check_moments(w, res.x.view(8, 2048), mean, var)


def test_fkc_through_sample_starts_from_the_tempered_prior():
    """`samplers.sample(method="fkc", beta=b)` tempers its prior draws too: variance 1 / b at
    t = T (VP prior N(0, 1); 5 SE of a sample variance)."""
    seen = []
    samplers.sample(_gauss(-1.0, 0.25), SDE_, (16384, 1), method="fkc", steps=20, beta=3.0,
                    n_corrector=0, dtype=torch.float64, seed=2,
                    callback=lambda i, t, x, x0: seen.append(x.clone()) if i == 0 else None)
    n = seen[0].numel()
    assert abs(seen[0].var().item() * 3.0 - 1) <= 5 * math.sqrt(2 / (n - 1))
    assert abs(seen[0].mean().item()) <= 5 * math.sqrt(1 / (3.0 * n))
