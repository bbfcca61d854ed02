"""Target score matching against closed forms (objectives.md §3).

Unbiasedness. For mixture data the posterior x0 | x_t is a mixture too: component k has weight
r_k(x_t), mean m_k = V_k (Sigma_k^{-1} mu_k + alpha x_t / sigma^2) and covariance
V_k = (Sigma_k^{-1} + alpha^2 / sigma^2 I)^{-1}. Drawing x0 from it exactly, the Monte-Carlo mean
of every target (DSM -eps/sigma, TSM grad log p0(x0)/alpha, their kappa-mixture) must equal the
exact score `GMMScore(x_t, t)`; SE = sample std / sqrt(n).

Variances. For 1-D data N(0, s^2), Var(x0 | x_t) = s^2 sigma^2 / (alpha^2 s^2 + sigma^2), and each
target is affine in x0 given x_t, so
  Var_DSM = (alpha / sigma^2)^2 Var(x0|x_t)       = alpha^2 s^2 / (sigma^2 (alpha^2 s^2 + sigma^2)),
  Var_TSM = (1 / (alpha s^2))^2 Var(x0|x_t)      = sigma^2 / (alpha^2 s^2 (alpha^2 s^2 + sigma^2)),
  Var_kap = (alpha (1 - 1/s^2) / (alpha^2 + sigma^2))^2 Var(x0|x_t),
and Var_TSM / Var_DSM = (sigma^2 / (alpha^2 s^2))^2 = SNR^-2 exactly: far below 1 at small noise.
(The spec's Var_TSM has s^4 where s^2 belongs; its reference numbers are 1/s^2 = 4x too large.)
The sigma^2-weighted loss of the exact score is sigma^2 times the target variance per dimension.
"""

import math
import warnings

import pytest
import torch

from scorekit.data.boltzmann import mixture_score
from scorekit.data.synthetic import gmm_params
from scorekit.nets import MLPScore
from scorekit.objectives import DSM, TSM, make_objective
from scorekit.scores import GaussianScore, GMMScore
from scorekit.sde import VESDE, VPSDE, DoubleWellSDE

F64 = torch.float64
MIXINGS = ["dsm", "tsm", "kappa"]
TIMES = [1e-3, 1e-2, 0.1, 0.5, 1.0]


def _three(sde):
    """The unequal-weight 3-mode 2-D mixture with full covariances, and its clean score."""
    params = gmm_params(layout="three")
    return GMMScore(*params, sde), lambda x: mixture_score(x, *params)


def _tsm(sde, data_score, mixing: str, **kw) -> TSM:
    """TSM without the (tested separately) warning for pure TSM up to large sigma / alpha."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return TSM(sde, data_score, mixing=mixing, **kw)


def _marginal(sde, t: float) -> tuple[float, float]:
    return tuple(float(v) for v in sde.marginal(torch.tensor([t], dtype=F64)))


def _posterior(gmm: GMMScore, xt: torch.Tensor, t: float, n: int, gen) -> torch.Tensor:
    """Exact draws x0 ~ p(x0 | x_t) for one x_t: (d,) -> (n, d) (module docstring)."""
    alpha, sigma = _marginal(gmm.sde, t)
    r = gmm.responsibilities(xt[None], torch.tensor([t], dtype=F64))[0]
    k = torch.multinomial(r, n, replacement=True, generator=gen)
    prec = torch.linalg.inv(gmm.covs)
    eye = torch.eye(gmm.dim, dtype=F64)
    v = torch.linalg.inv(prec + alpha**2 / sigma**2 * eye)  # (K, d, d)
    m = torch.einsum("kij,kj->ki", v, torch.einsum("kij,kj->ki", prec, gmm.means)
                     + alpha / sigma**2 * xt)
    z = torch.randn(n, gmm.dim, dtype=F64, generator=gen)
    return m[k] + torch.einsum("nij,nj->ni", torch.linalg.cholesky(v)[k], z)


def _target_z_scores(sde, objectives: dict, n_x: int = 10, n: int = 10_000, seed: int = 0
                     ) -> torch.Tensor:
    """(mean target - exact score) / SE for every x_t, t, objective and coordinate."""
    gmm, _ = _three(sde)
    gen = torch.Generator().manual_seed(seed)
    zs = []
    for t in TIMES:
        xts = gmm.sample_marginal(n_x, t, generator=gen)
        exact = gmm(xts, torch.full((n_x,), t, dtype=F64))
        for i in range(n_x):
            x0 = _posterior(gmm, xts[i], t, n, gen)
            xt = xts[i].expand_as(x0)
            for obj in objectives.values():
                tau = obj.target(x0, xt, t)
                se = tau.std(0) / math.sqrt(n)
                zs.append((tau.mean(0) - exact[i]) / se)
    return torch.stack(zs)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_targets_are_unbiased_for_exact_score(sde):
    """DSM, TSM and kappa targets under exact posterior sampling: at 10 x_t ~ p_t and each t in
    {1e-3, 1e-2, 0.1, 0.5, 1}, n = 10k draws. 300 z-scores per process: each |z| <= 5 (family-
    wise false-alarm rate 300 P(|N| > 5) = 2e-4, i.e. 4 SE Bonferroni-corrected), and the mean of
    z^2 is at most 1 + 5 sqrt(2 / 50): the 6 z-scores of one (x_t, t) cell share its posterior
    draws and may be fully correlated, so at worst it is a mean of 50 independent chi^2_1."""
    _, score = _three(sde)
    z = _target_z_scores(sde, {m: _tsm(sde, score, m) for m in MIXINGS})
    assert z.abs().max() <= 5, z.abs().max()
    assert (z**2).mean() <= _mean_z2_bound(10), (z**2).mean()


def _mean_z2_bound(n_x: int) -> float:
    """1 + 5 sd of a mean of n_cells independent chi^2_1 (one per (x_t, t) cell)."""
    return 1 + 5 * math.sqrt(2 / (n_x * len(TIMES)))


def test_unbiasedness_check_rejects_wrong_data_score():
    """Power: TSM with grad log p0 scaled by 1.05 (a 5% force-field error) fails the mean-z^2
    bound of the test above (mean z^2 ~ 1900 against a bound of 2.6)."""
    sde = VPSDE()
    _, score = _three(sde)
    wrong = _tsm(sde, lambda x: 1.05 * score(x), "tsm")
    z = _target_z_scores(sde, {"tsm": wrong}, n_x=4)
    assert (z**2).mean() > _mean_z2_bound(4), (z**2).mean()


def _var_closed_form(mixing: str, alpha: float, sigma: float, s: float) -> float:
    """Conditional target variance for 1-D N(0, s^2) data (module docstring)."""
    post = s**2 * sigma**2 / (alpha**2 * s**2 + sigma**2)
    slope = {"dsm": alpha / sigma**2, "tsm": 1 / (alpha * s**2),
             "kappa": alpha * (1 - 1 / s**2) / (alpha**2 + sigma**2)}[mixing]
    return slope**2 * post


@pytest.mark.parametrize("t", TIMES)
def test_target_variance_matches_closed_form(t):
    """1-D N(0, 0.25), VP: the sigma^2-weighted loss of the exact score is sigma^2 Var_mixing
    (closed forms in the module docstring) within 4 SE, n = 100k, for all three mixings."""
    sde, s, n = VPSDE(), 0.5, 100_000
    gs = GaussianScore(torch.zeros(1, dtype=F64), torch.full((1, 1), s**2, dtype=F64), sde)
    alpha, sigma = _marginal(sde, t)
    gen = torch.Generator().manual_seed(int(1e4 * t))
    for mixing in MIXINGS:
        loss = _tsm(sde, lambda x: -x / s**2, mixing).per_sample(
            gs, gs.sample_data(n, generator=gen), t=t, generator=gen)
        ref = sigma**2 * _var_closed_form(mixing, alpha, sigma, s)
        se = loss.std().item() / math.sqrt(n)
        assert abs(loss.mean().item() - ref) <= 4 * se, (mixing, loss.mean().item(), ref, se)


@pytest.mark.parametrize("t", [1e-3, 1e-2])
def test_tsm_variance_ratio_at_small_noise(t):
    """Var_TSM / Var_DSM measured from independent draws equals (sigma^2 / (alpha^2 s^2))^2
    (1.93e-7 at t = 1e-3, 6.38e-5 at t = 1e-2 for s = 0.5) within 4 SE of the ratio
    (delta method: rel SE = sqrt(rel SE_TSM^2 + rel SE_DSM^2)), n = 100k each."""
    sde, s, n = VPSDE(), 0.5, 100_000
    gs = GaussianScore(torch.zeros(1, dtype=F64), torch.full((1, 1), s**2, dtype=F64), sde)
    alpha, sigma = _marginal(sde, t)
    gen = torch.Generator().manual_seed(11)
    means, rel_se = [], []
    for mixing in ("tsm", "dsm"):
        loss = _tsm(sde, lambda x: -x / s**2, mixing).per_sample(
            gs, gs.sample_data(n, generator=gen), t=t, generator=gen)
        means.append(loss.mean().item())
        rel_se.append(loss.std().item() / math.sqrt(n) / means[-1])
    ratio, predicted = means[0] / means[1], (sigma**2 / (alpha**2 * s**2)) ** 2
    assert abs(ratio / predicted - 1) <= 4 * math.hypot(*rel_se), (ratio, predicted)


@pytest.mark.parametrize("c", [1.0, 0.5])
@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_kappa_target_is_exact_score_for_isotropic_gaussian(sde, c):
    """p0 = N(mu, c^2 I) and kappa_scale = c: kappa = alpha^2 c^2 / (alpha^2 c^2 + sigma^2)
    cancels the x0-dependence of the mixed target (module docstring), which is then the exact
    score for every draw (c = 1, mu = 0: the spec's -x_t / (alpha^2 + sigma^2)). Float64
    round-off: the target is the difference of two computed terms kappa grad log p0 / alpha and
    (1 - kappa) eps / sigma, so |error| <= 64 u (|term 1| + |term 2|) elementwise."""
    d, n = 3, 512
    mu = torch.tensor([0.0, 0.0, 0.0] if c == 1.0 else [0.5, -1.0, 2.0], dtype=F64)
    gs = GaussianScore(mu, c**2 * torch.eye(d, dtype=F64), sde)
    tsm = TSM(sde, lambda x: -(x - mu) / c**2, kappa_scale=c)
    gen = torch.Generator().manual_seed(3)
    t = sde.eps + torch.rand(n, dtype=F64, generator=gen) * (sde.T - sde.eps)
    x0 = gs.sample_data(n, generator=gen)
    alpha, sigma = (v[:, None] for v in sde.marginal(t))
    noise = torch.randn(n, d, dtype=F64, generator=gen)
    xt = alpha * x0 + sigma * noise
    kappa = (alpha * c) ** 2 / ((alpha * c) ** 2 + sigma**2)
    terms = (kappa * (x0 - mu) / (c**2 * alpha)).abs() + ((1 - kappa) * noise / sigma).abs()
    err = (tsm.target(x0, xt, t) - gs(xt, t)).abs()
    assert (err <= 64 * torch.finfo(F64).eps * terms).all(), (err / terms).max()


def test_tsm_and_dsm_share_the_minimiser():
    """With common (x0, eps, t), L(s* + delta) - L(s*) has the same mean sigma^2 E||delta||^2
    for every mixing (the losses differ by a model-independent constant). Per sample the excess
    minus sigma^2 ||delta||^2 is 2 sigma delta . (sigma s* - sigma tau), mean 0 by unbiasedness:
    4 SE, n = 50k, 3-mode mixture (VP, t = 0.05 and 0.3). Power: the kappa loss of 1.1 s*
    exceeds that of s* by > 4 SE (its excess 0.01 sigma^2 E||s*||^2 is 9-25 SE here)."""
    sde, n = VPSDE(), 50_000
    gmm, score = _three(sde)
    gen = torch.Generator().manual_seed(4)
    x0 = gmm.sample_data(n, generator=gen)
    noise = torch.randn(x0.shape, dtype=F64, generator=gen)

    def delta(x):
        return 0.3 * torch.tanh(x)

    for t in (0.05, 0.3):
        alpha, sigma = _marginal(sde, t)
        d2 = delta(alpha * x0 + sigma * noise).pow(2).sum(1)
        for mixing in MIXINGS:
            obj = _tsm(sde, score, mixing)
            base = obj.per_sample(gmm, x0, t=t, noise=noise)
            pert = obj.per_sample(lambda x, tt: gmm(x, tt) + delta(x), x0, t=t, noise=noise)
            r = pert - base - sigma**2 * d2
            assert abs(r.mean()) <= 4 * r.std() / math.sqrt(n), (t, mixing, r.mean())
            if mixing == "kappa":
                scaled = obj.per_sample(lambda x, tt: 1.1 * gmm(x, tt), x0, t=t, noise=noise)
                r = (scaled - base).mean() / ((scaled - base).std() / math.sqrt(n))
                assert r > 4, (t, r)


def test_dsm_mixing_equals_dsm_objective():
    """mixing='dsm' is DSM(weighting='sigma2'), bit for bit in float64 with common (t, eps)."""
    sde = VESDE()
    gmm, score = _three(sde)
    gen = torch.Generator().manual_seed(5)
    x0, noise = gmm.sample_data(64, generator=gen), torch.randn(64, 2, dtype=F64, generator=gen)
    t = sde.eps + torch.rand(64, dtype=F64, generator=gen) * (sde.T - sde.eps)
    model = lambda x, tt: 1.3 * gmm(x, tt)  # noqa: E731
    torch.testing.assert_close(TSM(sde, score, mixing="dsm").per_sample(model, x0, t, noise),
                               DSM(sde).per_sample(model, x0, t, noise), rtol=1e-12, atol=0)


def test_kappa_fn_and_clipping():
    """A custom kappa_fn is used as given; max_score_norm caps |grad log p0| per sample."""
    sde = VPSDE()
    tsm = TSM(sde, lambda x: 10 * x, kappa_fn=lambda a, s: torch.full_like(a, 0.25),
              max_score_norm=2.0)
    t = torch.tensor([0.1, 0.7], dtype=F64)
    assert torch.equal(tsm.kappa(t), torch.full_like(t, 0.25))
    x = torch.tensor([[3.0, 4.0], [0.01, 0.0]], dtype=F64)
    torch.testing.assert_close(tsm.clean_score(x), torch.tensor([[1.2, 1.6], [0.1, 0.0]],
                                                                dtype=F64))


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: TSM(VPSDE(), lambda x: -x, mixing="mix"), r"unknown mixing 'mix'; valid"),
        (lambda: TSM(VPSDE(), "grad"), "data_score must be callable"),
        (lambda: TSM(VPSDE(), lambda x: -x, mixing="dsm", kappa_fn=lambda a, s: a),
         "kappa_fn must be a callable and needs mixing='kappa'"),
        (lambda: TSM(VPSDE(), lambda x: -x, t_max=2.0), r"t_max must lie in \(t_min=0.001"),
        (lambda: TSM(VPSDE(), lambda x: -x, max_score_norm=0.0), "max_score_norm must be"),
        (lambda: TSM(VPSDE(), lambda x: -x, kappa_scale=-1.0), "kappa_scale must be > 0"),
        (lambda: TSM(VPSDE(), lambda x: -x, reduction="max"), "reduction must be"),
        (lambda: TSM(DoubleWellSDE(), lambda x: -x), "TSM needs a linear process"),
        (lambda: make_objective("tsm", VPSDE()), "needs the clean data score"),
        (lambda: make_objective("tsm", VPSDE(), lambda x: -x, mix="tsm"), "unknown option 'mix'"),
    ],
    ids=["mixing", "score", "kappa-fn", "t-max", "clip", "kappa-scale", "reduction", "nonlinear",
         "no-score", "option"],
)
def test_constructor_validation(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_data_score_shape_checked_and_pure_tsm_warns():
    with pytest.warns(UserWarning, match="pure TSM up to t_max=1 scales grad log p0 by"):
        TSM(VPSDE(), lambda x: -x, mixing="tsm")
    tsm = TSM(VPSDE(), lambda x: x[:, :1])
    with pytest.raises(ValueError, match=r"data_score returned shape \(4, 1\)"):
        tsm(lambda x, t: x, torch.zeros(4, 2))


# --- training at a fixed small budget: TSM vs DSM at small t -----------------------------------

_W = torch.tensor([0.3, 0.7], dtype=F64)
_MU = torch.tensor([[-1.0], [1.0]], dtype=F64)
_COV = torch.tensor([0.3**2, 0.5**2], dtype=F64)[:, None, None]
_EVAL_T = (3e-3, 1e-2)


def _train_small_t(mixing: str, seed: int, steps: int = 400) -> torch.nn.Module:
    """1-D two-mode mixture, VP, t ~ U(1e-3, 1e-2): MLP (2 x 32, score parameterisation, so the
    network's error is the score error), Adam lr 1e-2 with cosine decay, batch 128, float32."""
    sde = VPSDE()
    gmm = GMMScore(_W, _MU, _COV, sde)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MLPScore(1, sde, hidden=32, depth=2, sigma_data=1.0, parameterization="score")
    gen = torch.Generator().manual_seed(seed)
    obj = _tsm(sde, lambda x: mixture_score(x, _W, _MU, _COV), mixing, t_max=1e-2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        loss = obj(model, gmm.sample_data(128, generator=gen).float(), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


@torch.no_grad()
def _small_t_score_error(model) -> float:
    """Mean over t in {3e-3, 1e-2} of E||s - s*||^2 / E||s*||^2 on 4000 fixed x_t ~ p_t."""
    gmm = GMMScore(_W, _MU, _COV, VPSDE())
    gen = torch.Generator().manual_seed(123)
    errs = []
    for t in _EVAL_T:
        xt = gmm.sample_marginal(4000, t, generator=gen)
        tt = torch.full((4000,), t, dtype=F64)
        exact = gmm(xt, tt)
        errs.append(((model(xt.float(), tt.float()).double() - exact).pow(2).sum()
                     / exact.pow(2).sum()).item())
    return sum(errs) / len(errs)


@pytest.mark.slow
def test_tsm_beats_dsm_at_small_t_on_a_fixed_budget():
    """Same network, data, times and budget (400 steps); only the target differs. At small
    noise the DSM target's variance (~1/sigma^2 per dim) swamps the score, the kappa target's
    does not. Calibrated once over seeds 0-19: DSM relative error 0.92-1.00 (mean 0.97), kappa
    0.022-0.080 (mean 0.040), per-seed ratio DSM / kappa min 12.5 (median 28.5); the test
    requires ratio >= 6 (the minimum halved) for each of 3 seeds."""
    for seed in range(3):
        dsm = _small_t_score_error(_train_small_t("dsm", seed))
        tsm = _small_t_score_error(_train_small_t("kappa", seed))
        assert dsm / tsm >= 6, (seed, dsm, tsm)
