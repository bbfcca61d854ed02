"""Closed-form Gaussian / GMM scores against autograd, scipy and exact sampling laws
(objectives.md §2.4). The noised mixture is rebuilt here independently with scipy:
p_t = sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I)."""

import math

import numpy as np
import pytest
import torch
from _gauss import assert_gaussian_law, random_spd
from scipy import special, stats

from scorekit.scores import GaussianScore, GMMScore
from scorekit.sde import EDMSDE, VESDE, VPSDE, SubVPSDE

F64 = torch.float64
PROCESSES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
IDS = ["vp", "subvp", "ve", "edm"]
WEIGHTS = torch.tensor([0.2, 0.5, 0.3], dtype=F64)
MEANS = torch.tensor([[1.0, -1.0, 0.5], [-1.5, 0.0, 1.0], [0.5, 2.0, -1.0]], dtype=F64)
COVS = torch.stack([random_spd(3, 0.05, 1.0, seed=1), random_spd(3, 0.2, 2.0, seed=2),
                    random_spd(3, 0.01, 0.5, seed=3)])


def _gmm(sde) -> GMMScore:
    return GMMScore(WEIGHTS, MEANS, COVS, sde)


def _times(sde) -> list[float]:
    """Near eps, inside, and near / at T."""
    return [sde.eps, 2 * sde.eps, 0.1 * sde.T, 0.5 * sde.T, 0.99 * sde.T, sde.T]


def _points(gmm: GMMScore, sde, per_t: int = 16, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """x: (B, d) drawn from p_t plus the (scaled) midpoints between modes, where the
    responsibilities are mixed; t: (B,)."""
    gen = torch.Generator().manual_seed(seed)
    xs, ts = [], []
    for t in _times(sde):
        alpha, _ = sde.marginal(torch.tensor([t], dtype=F64))
        mids = alpha * 0.5 * (MEANS + MEANS.roll(1, dims=0))
        x = torch.cat([gmm.sample_marginal(per_t, t, generator=gen), mids])
        xs.append(x)
        ts.append(torch.full((x.shape[0],), t, dtype=F64))
    return torch.cat(xs), torch.cat(ts)


def _scipy_component_logpdf(sde, x: torch.Tensor, t: torch.Tensor) -> np.ndarray:
    """log w_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I) per row: (B, K)."""
    out = np.empty((x.shape[0], WEIGHTS.numel()))
    log_w = np.log(WEIGHTS.numpy() / WEIGHTS.sum().item())
    for tv in t.unique():
        rows = (t == tv).numpy()
        alpha, sigma = (v.item() for v in sde.marginal(tv[None]))
        for k in range(WEIGHTS.numel()):
            cov = alpha**2 * COVS[k].numpy() + sigma**2 * np.eye(3)
            law = stats.multivariate_normal(alpha * MEANS[k].numpy(), cov)
            out[rows, k] = log_w[k] + law.logpdf(x[rows].numpy())
    return out


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_score_is_gradient_of_marginal_logp(sde):
    """GMMScore(x, t) = grad_x marginal_logp(x, t) by autograd (float64). Both are exact, so
    only rounding separates them (~1e-13 relative); 1e-6 is the contract's tolerance."""
    gmm = _gmm(sde)
    x, t = _points(gmm, sde)
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(gmm.marginal_logp(x, t).sum(), x)
    score = gmm(x.detach(), t)
    assert score.shape == x.shape and score.dtype == F64
    torch.testing.assert_close(score, grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_marginal_logp_matches_scipy_mixture(sde):
    """marginal_logp = logsumexp_k [log w_k + scipy logpdf of the noised component]; both in
    float64 through different factorisations (eigh vs Cholesky): 1e-10 relative."""
    gmm = _gmm(sde)
    x, t = _points(gmm, sde, seed=1)
    ref = special.logsumexp(_scipy_component_logpdf(sde, x, t), axis=1)
    logp = gmm.marginal_logp(x, t)
    assert logp.shape == (x.shape[0],)
    np.testing.assert_allclose(logp.numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_responsibilities_are_posterior_and_sum_to_one(sde):
    gmm = _gmm(sde)
    x, t = _points(gmm, sde, seed=2)
    r = gmm.responsibilities(x, t)
    assert r.shape == (x.shape[0], 3)
    np.testing.assert_allclose(r.sum(1).numpy(), 1.0, rtol=0, atol=1e-14)
    comp = _scipy_component_logpdf(sde, x, t)
    ref = np.exp(comp - special.logsumexp(comp, axis=1, keepdims=True))
    np.testing.assert_allclose(r.numpy(), ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_gaussian_score_closed_form(sde):
    """GaussianScore = -C_t^{-1}(x - alpha mu), C_t = alpha^2 Sigma + sigma^2 I (numpy solve)."""
    mean, cov = MEANS[0], random_spd(3, 0.1, 3.0, seed=4)
    gs = GaussianScore(mean, cov, sde)
    x = torch.randn(8, 3, dtype=F64, generator=torch.Generator().manual_seed(3)) * 2
    for t in _times(sde):
        tt = torch.full((8,), t, dtype=F64)
        alpha, sigma = (v.item() for v in sde.marginal(tt[:1]))
        c = alpha**2 * cov.numpy() + sigma**2 * np.eye(3)
        ref = -np.linalg.solve(c, (x.numpy() - alpha * mean.numpy()).T).T
        np.testing.assert_allclose(gs(x, tt).numpy(), ref, rtol=1e-10, atol=1e-12)


def test_score_accepts_image_shaped_input_and_float32():
    """x: (B, 1, 3) gives the reshaped (B, 3) score; float32 agrees with float64 to float32
    rounding amplified by the conditioning of C_t (smallest eigenvalue ~alpha^2 0.01 + sigma^2
    at t = 0.1): 1e-5 relative to the largest entry."""
    sde = VPSDE()
    gmm = _gmm(sde)
    x = gmm.sample_marginal(64, 0.1, generator=torch.Generator().manual_seed(4))
    t = torch.full((64,), 0.1, dtype=F64)
    ref = gmm(x, t)
    torch.testing.assert_close(gmm(x[:, None, :], t), ref[:, None, :], rtol=0, atol=0)
    s32 = gmm(x.float(), t.float())
    assert s32.dtype == torch.float32
    assert (s32.double() - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_sample_data_moments():
    """Labels ~ Multinomial(w): |freq - w_k| <= 4 sqrt(w (1 - w) / n); given its label each
    draw is N(mu_k, Sigma_k): per eigendirection mean and variance within 4 SE."""
    gmm, n = _gmm(VPSDE()), 120_000
    x, labels = gmm.sample_data(n, generator=torch.Generator().manual_seed(5), return_labels=True)
    assert x.shape == (n, 3) and x.dtype == F64
    w = WEIGHTS.numpy()
    freq = np.bincount(labels.numpy(), minlength=3) / n
    assert (np.abs(freq - w) <= 4 * np.sqrt(w * (1 - w) / n)).all(), freq
    for k in range(3):
        assert_gaussian_law(x[labels == k], MEANS[k], COVS[k], n_se=4.0)


@pytest.mark.parametrize("sde,t", [(VPSDE(), 0.05), (SubVPSDE(), 0.3), (VESDE(), 0.2),
                                   (EDMSDE(), 0.5)], ids=["vp", "subvp", "ve", "edm"])
def test_sample_marginal_moments(sde, t):
    """Given its label, x_t ~ N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I): 4 SE per
    eigendirection; the unlabelled mean matches sum_k w_k alpha mu_k within 4 SE."""
    gmm, n = _gmm(sde), 90_000
    x, labels = gmm.sample_marginal(n, t, generator=torch.Generator().manual_seed(6),
                                    return_labels=True)
    alpha, sigma = (v.item() for v in sde.marginal(torch.tensor([t], dtype=F64)))
    for k in range(3):
        cov = alpha**2 * COVS[k] + sigma**2 * torch.eye(3, dtype=F64)
        assert_gaussian_law(x[labels == k], alpha * MEANS[k], cov, n_se=4.0)
    mean = alpha * (WEIGHTS[:, None] * MEANS).sum(0)
    assert ((x.mean(0) - mean).abs() <= 4 * x.std(0) / math.sqrt(n)).all()


def test_weights_are_normalised():
    """Weights need not sum to 1: they are normalised (w and 7 w define the same mixture)."""
    sde = VPSDE()
    a, b = _gmm(sde), GMMScore(7 * WEIGHTS, MEANS, COVS, sde)
    torch.testing.assert_close(b.weights, WEIGHTS / WEIGHTS.sum(), rtol=1e-15, atol=0)
    x, t = _points(a, sde, per_t=4)
    torch.testing.assert_close(b.marginal_logp(x, t), a.marginal_logp(x, t), rtol=1e-14, atol=0)


def _with(**kw):
    args = {"weights": WEIGHTS, "means": MEANS, "covs": COVS, "sde": VPSDE()}
    args.update(kw)
    return lambda: GMMScore(**args)


NON_PD = COVS.clone()
NON_PD[1] = torch.diag(torch.tensor([1.0, -0.5, 2.0], dtype=F64))
SINGULAR = COVS.clone()
SINGULAR[2] = torch.diag(torch.tensor([1.0, 0.0, 2.0], dtype=F64))
ASYM = COVS.clone()
ASYM[0, 0, 1] += 0.1


@pytest.mark.parametrize(
    "build,match",
    [
        (_with(covs=NON_PD), r"covs\[1\] is not positive definite: smallest eigenvalue -0\.5"),
        (_with(covs=SINGULAR), r"covs\[2\] is not positive definite: smallest eigenvalue 0"),
        (_with(covs=ASYM), r"covs\[0\] is not symmetric \(max \|C - C\^T\| = 0\.1\)"),
        (_with(weights=torch.tensor([0.2, -0.5, 0.3])), r"weights must be finite and > 0"),
        (_with(weights=torch.tensor([0.2, 0.0, 0.3])), r"weights must be finite and > 0"),
        (_with(weights=torch.tensor([0.2, float("nan"), 0.3])), "weights must be finite"),
        (_with(weights=WEIGHTS[:2]), r"means must have shape \(K=2, d\), got \(3, 3\)"),
        (_with(weights=WEIGHTS[:, None]), r"weights must have shape \(K,\), got \(3, 1\)"),
        (_with(covs=COVS[:, :2, :2]), r"covs must have shape \(K=3, d=3, d=3\), got \(3, 2, 2\)"),
        (_with(means=MEANS.clone().fill_(float("inf"))), "means contain non-finite values"),
        (lambda: GaussianScore(MEANS[:1], COVS[0], VPSDE()),
         r"mean must have shape \(d,\), got \(1, 3\)"),
        (lambda: GaussianScore(MEANS[0], COVS[0, :2, :2], VPSDE()),
         r"cov must have shape \(d=3, d=3\), got \(2, 2\)"),
        (lambda: GaussianScore(MEANS[0], NON_PD[1], VPSDE()),
         r"covs\[0\] is not positive definite: smallest eigenvalue -0\.5"),
    ],
    ids=["non-pd", "singular", "asym", "neg-weight", "zero-weight", "nan-weight", "k-mismatch",
         "weights-2d", "covs-shape", "means-inf", "gauss-mean-shape", "gauss-cov-shape",
         "gauss-non-pd"],
)
def test_constructor_validation(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_singular_cov_allowed_on_request():
    """allow_singular=True accepts a PSD covariance; the noised marginal is still regular."""
    sde = VPSDE()
    gmm = GMMScore(WEIGHTS, MEANS, SINGULAR, sde, allow_singular=True)
    x, t = _points(gmm, sde, per_t=4)
    assert torch.isfinite(gmm(x, t)).all()
    with pytest.raises(ValueError, match="not positive semi-definite: smallest eigenvalue -0.5"):
        GMMScore(WEIGHTS, MEANS, NON_PD, sde, allow_singular=True)


def test_call_shape_validation():
    gmm = _gmm(VPSDE())
    t = torch.full((4,), 0.5, dtype=F64)
    with pytest.raises(ValueError, match="x has 5 elements per sample, score expects d=3"):
        gmm(torch.zeros(4, 5, dtype=F64), t)
    with pytest.raises(ValueError, match=r"t must have shape \(B=4,\), got \(3,\)"):
        gmm(torch.zeros(4, 3, dtype=F64), t[:3])
    with pytest.raises(ValueError, match=r"t must have shape \(B=4,\), got \(4, 1\)"):
        gmm.marginal_logp(torch.zeros(4, 3, dtype=F64), t[:, None])
