"""The `Process` view and the prediction conversions against the processes' formulas, written
here: alpha, sigma, lambda = log(alpha / sigma) and its inverse, f_t and g for VP, sub-VP, VE
and EDM; score <-> eps <-> x0 conversions and Tweedie's mean."""

import math

import pytest
import torch

from scorekit.processes import Process
from scorekit.processes.predictions import (
    eps_from_score,
    scaled_score_from_x0,
    score_from_x0,
    tweedie,
    x0_from_eps,
    x0_from_scaled_score,
    x0_from_score,
)
from scorekit.sde import EDMSDE, VESDE, VPSDE, SubVPSDE

F64 = torch.float64


def _reference(sde, t):
    """(alpha, sigma, f_t, g) from the papers' definitions (Song et al. 2021; Karras 2022)."""
    if isinstance(sde, (VPSDE, SubVPSDE)):
        b0, b1 = sde.beta_min, sde.beta_max
        beta, big_b = b0 + t * (b1 - b0), b0 * t + 0.5 * (b1 - b0) * t * t
        alpha = math.exp(-0.5 * big_b)
        if isinstance(sde, VPSDE):
            return alpha, math.sqrt(1 - math.exp(-big_b)), -0.5 * beta, math.sqrt(beta)
        return (alpha, 1 - math.exp(-big_b), -0.5 * beta,
                math.sqrt(beta * (1 - math.exp(-2 * big_b))))
    if isinstance(sde, VESDE):
        r = sde.sigma_max / sde.sigma_min
        sigma = sde.sigma_min * r**t
        return 1.0, sigma, 0.0, sigma * math.sqrt(2 * math.log(r))
    return 1.0, t, 0.0, math.sqrt(2 * t)  # EDM: sigma(t) = t


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()],
                         ids=["vp", "subvp", "ve", "edm"])
def test_view_matches_the_formulas(sde):
    p = Process(sde)
    ts = torch.linspace(sde.eps, sde.T, 7, dtype=F64)
    for t in ts.tolist():
        alpha, sigma, f, g = _reference(sde, t)
        tt = torch.tensor([t], dtype=F64)
        got = (p.alpha(tt).item(), p.sigma(tt).item(), p.drift_rate(tt).item(),
               p.diffusion(tt).item())
        assert got == pytest.approx((alpha, sigma, f, g), rel=1e-10, abs=1e-300)
        assert p.lambda_(tt).item() == pytest.approx(math.log(alpha / sigma), rel=1e-9,
                                                     abs=1e-12)
        assert p.noise_level(tt).item() == pytest.approx(sigma / alpha, rel=1e-10)
    # The inverse of lambda: t_of_lambda(lambda_(t)) = t, and lambda decreases in t.
    lam = p.lambda_(ts)
    assert (lam[1:] < lam[:-1]).all()
    torch.testing.assert_close(p.t_of_lambda(lam), ts, rtol=1e-9, atol=1e-12)
    # The unchecked view agrees with the validated public API on valid times.
    a, s = sde.marginal(ts)
    assert torch.equal(p.alpha(ts), a) and torch.equal(p.sigma(ts), s)
    assert torch.equal(p.diffusion(ts), sde.diffusion(ts))
    x = torch.randn(7, 3, dtype=F64)
    assert torch.equal(p.drift(x, ts), sde.drift(x, ts))


def test_conversions_round_trip():
    g = torch.Generator().manual_seed(0)
    x, s = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    alpha, sigma = torch.rand(5, generator=g, dtype=F64) + 0.1, torch.rand(5, generator=g,
                                                                             dtype=F64) + 0.1
    a, sg = alpha[:, None], sigma[:, None]
    x0 = x0_from_score(x, s, alpha, sigma)
    torch.testing.assert_close(x0, (x + sg**2 * s) / a)
    torch.testing.assert_close(score_from_x0(x, x0, alpha, sigma), s)
    torch.testing.assert_close(scaled_score_from_x0(x, x0, alpha, sigma), sg * s)
    torch.testing.assert_close(x0_from_scaled_score(x, sg * s, alpha, sigma), x0)
    eps = eps_from_score(s, sigma)
    torch.testing.assert_close(eps, -sg * s)
    # EDM's rescaled form: x0 = x / alpha - (sigma / alpha) eps_hat.
    torch.testing.assert_close(x0_from_eps(x / a, eps, sigma / alpha), x0)


def test_tweedie_is_the_posterior_mean_of_gaussian_data():
    """x0 ~ N(m, v I): E[x0 | x_t] = m + v alpha (x - alpha m) / (alpha^2 v + sigma^2), with the
    Gaussian's exact score -(x - alpha m) / (alpha^2 v + sigma^2)."""
    sde, m, v, t = VPSDE(), 0.7, 0.3, 0.4
    alpha, sigma, _, _ = _reference(sde, t)
    c = alpha**2 * v + sigma**2
    x = torch.randn(6, 2, dtype=F64)
    got = tweedie(lambda x, t: -(x - alpha * m) / c, Process(sde), x, t)
    torch.testing.assert_close(got, m + v * alpha * (x - alpha * m) / c)
