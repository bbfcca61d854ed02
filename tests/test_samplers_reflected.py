"""Reflected samplers: samples stay in the box without clipping and follow the exact marginal.

KS power used below (one-sample, two-sided, p > 1e-3 to pass): with n = 20 000 draws the test
rejects when D > 1.95 / sqrt(n) = 0.0138. The empirical CDF at any point has sd <= 0.5 / sqrt(n)
= 0.0035, so a law whose CDF is off by >= 0.022 somewhere (e.g. 2.2 % of the mass piled on a
face, or moved across the box) is rejected with probability >= 0.99.
"""

import pytest
import torch
from _reflected import TruncatedGaussianScore
from scipy import stats

import samplers
from scorekit.reflected import ReflectedSDE
from scorekit.sde import VPSDE

F64 = torch.float64
N = 20_000


def _zero(x, t):
    return torch.zeros_like(x)


def _ks_uniform(x, lower, upper):
    u = stats.uniform(lower, upper - lower).cdf
    return [stats.kstest(x[:, i].numpy(), u).pvalue for i in range(x.shape[1])]


@pytest.mark.parametrize("method", ["em", "pc"])
def test_uniform_data_stays_uniform(method):
    """Uniform data on [-1, 2]^3 has score 0 at every t; from the uniform prior the reflected
    sampler must return uniform samples, all in the box (no clipping anywhere). KS per
    coordinate, n = 2e4 (power: module docstring)."""
    sde = ReflectedSDE(lower=-1.0, upper=2.0)
    res = samplers.sample(_zero, sde, (N, 3), method=method, steps=50, denoise="none",
                          dtype=F64, generator=torch.Generator().manual_seed(0))
    assert res.info["method"] == f"reflected_{method}"
    assert sde.contains(res.x).all()
    assert min(_ks_uniform(res.x, -1.0, 2.0)) > 1e-3


def test_clamping_instead_of_folding_fails_the_uniform_test():
    """Negative control: the same sampler with the fold replaced by a clamp (an unreflected step
    followed by thresholding) piles mass on the faces and fails the KS test above."""
    sde = ReflectedSDE(lower=-1.0, upper=2.0)
    sde.fold = lambda x: x.clamp(sde.lower, sde.upper)
    res = samplers.sample(_zero, sde, (N, 3), method="em", steps=50, denoise="none", dtype=F64,
                          generator=torch.Generator().manual_seed(0))
    assert max(_ks_uniform(res.x, -1.0, 2.0)) < 1e-10


def _truncated_gaussian():
    """Two truncated Gaussians on the box [-1, 1], each with mass against a face: unit-box
    means 0.2 / 0.9 with sds 0.15 / 0.1; sigma from 0.01 to 2 box widths."""
    sde = ReflectedSDE(lower=-1.0, upper=1.0, sigma_min=0.02, sigma_max=4.0)
    return sde, TruncatedGaussianScore([-0.6, 0.8], [0.3, 0.2], sde)


def _ks_marginal(x, score, t):
    return [stats.kstest(x[:, i].numpy(), score.cdf(i, t)).pvalue for i in range(x.shape[1])]


@pytest.mark.slow
def test_reflected_em_with_exact_score_matches_truncated_gaussian():
    """Reflected EM, 50 uniform steps to eps = 1e-5, with the exact score of the noised
    truncated Gaussians (closed form, tests/_reflected.py): every sample in the box, and each
    coordinate's law equals p_eps (KS, n = 2e4; power in the module docstring). Seeds 0-19:
    smallest p 0.0016 of 40 coordinate tests, as expected without bias; 2e5 pooled draws at 100
    steps: D = 0.0022, p = 0.26."""
    sde, score = _truncated_gaussian()
    res = samplers.sample(score, sde, (N, 2), method="em", steps=50, denoise="none", dtype=F64,
                          generator=torch.Generator().manual_seed(0))
    assert sde.contains(res.x).all()
    assert min(_ks_marginal(res.x, score, sde.eps)) > 1e-3


def test_sign_flipped_score_fails_the_marginal_test():
    """Negative control for the test above: the score with its sign flipped (n = 2000, 20 steps
    suffice) is rejected by the same KS test."""
    sde, score = _truncated_gaussian()
    res = samplers.sample(lambda x, t: -score(x, t), sde, (2000, 2), method="em", steps=20,
                          denoise="none", dtype=F64, generator=torch.Generator().manual_seed(0))
    assert sde.contains(res.x).all()
    assert max(_ks_marginal(res.x, score, sde.eps)) < 1e-10


@pytest.mark.slow
def test_reflected_pc_with_exact_score_matches_truncated_gaussian():
    """Reflected PC (EM predictor, folded Langevin corrector at snr 0.05), 50 steps, n = 1e4:
    in the box, KS p > 1e-3 per coordinate (rejects CDF errors >= 0.031 with probability 0.99).
    Seeds 0-19: smallest p 0.032 (D <= 0.0144). The default snr 0.16 is a Langevin step too
    large for 2-D data: it biases the CDF by ~0.015, which n = 2e4 detects."""
    sde, score = _truncated_gaussian()
    res = samplers.sample(score, sde, (N // 2, 2), method="pc", steps=50, predictor="em",
                          snr=0.05, denoise="none", dtype=F64,
                          generator=torch.Generator().manual_seed(0))
    assert res.nfe == 100
    assert sde.contains(res.x).all()
    assert min(_ks_marginal(res.x, score, sde.eps)) > 1e-3


@pytest.mark.slow
def test_reflected_ode_with_exact_score_matches_truncated_gaussian():
    """The reflected PF-ODE (Heun in sigma, 30 steps, NFE 60) maps the uniform prior to p_eps
    with the exact score: in the box, KS p > 1e-3 per coordinate at n = 2e4. Seeds 0-19:
    smallest p 0.004 of 40 (D <= 0.0124)."""
    sde, score = _truncated_gaussian()
    res = samplers.sample(score, sde, (N, 2), method="reflected_ode", steps=30, dtype=F64,
                          generator=torch.Generator().manual_seed(0))
    assert res.nfe == 60
    assert sde.contains(res.x).all()
    assert min(_ks_marginal(res.x, score, sde.eps)) > 1e-3


def test_em_is_reflected_em_for_a_reflected_process():
    sde = ReflectedSDE()
    x = [samplers.sample(_zero, sde, (16, 2), method=m, steps=5,
                         generator=torch.Generator().manual_seed(1)).x
         for m in ("em", "reflected_em")]
    assert torch.equal(x[0], x[1])


def test_tweedie_is_clamped_and_counted():
    """Tweedie's x + sigma^2 s ignores the faces: the result is clamped and the clamped share
    reported (a score pushing outwards makes it positive)."""
    sde = ReflectedSDE()
    res = samplers.sample(lambda x, t: 100 * (x - 0.5), sde, (64, 4), method="em", steps=5,
                          denoise="tweedie", generator=torch.Generator().manual_seed(2))
    assert res.nfe == 6 and sde.contains(res.x).all()
    assert 0 < res.info["clamped_fraction"] <= 1


def test_method_and_process_mismatches_raise():
    sde = ReflectedSDE()
    for method in ("ode", "heun", "ggf", "dpm_solver", "fkc"):
        with pytest.raises(ValueError, match=f"method '{method}' does not keep samples in the"):
            samplers.sample(_zero, sde, (4, 2), method=method)
    for method in ("reflected_em", "reflected_pc", "reflected_ode"):
        with pytest.raises(ValueError, match=f"'{method}' needs a scorekit.reflected"):
            samplers.sample(_zero, VPSDE(), (4, 2), method=method)
    with pytest.raises(ValueError, match="1 starting samples lie outside the box"):
        samplers.sample(_zero, sde, (4, 2), x_init=torch.tensor([[0.5, 0.5]] * 3 + [[1.5, 0]]))
    tp = samplers.GaussianTeleport(torch.zeros(2), torch.eye(2), VPSDE())
    with pytest.raises(ValueError, match="teleportation ignores the box"):
        samplers.sample(_zero, sde, (4, 2), teleport=tp, t_start=0.5)
