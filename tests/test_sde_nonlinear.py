"""Non-linear-drift processes: simulation, prior, network scales and reverse Euler–Maruyama.

Exact references come from linear drifts run through the non-linear code paths: with an OU drift
-theta y every Euler–Maruyama chain (forward or reverse, with the exact Gaussian score) is an
affine Gaussian recursion whose mean and variance are propagated exactly in float64; sample
moments are compared within 5 SE (variance: relative SE sqrt(2 / (n - 1)) for Gaussian draws).
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats

import samplers
from scorekit.nets import MLPScore
from scorekit.processes.nonlinear import NONLINEAR_SDES, quartic_well_log_norm
from scorekit.sde import DoubleWellSDE, NonlinearSDE, make_sde

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_var(x: torch.Tensor, var: float, n_se: float = 5.0) -> None:
    n = x.numel()
    assert abs(x.mean().item()) <= n_se * math.sqrt(var / n), x.mean()
    assert abs(x.var().item() / var - 1) <= n_se * math.sqrt(2 / (n - 1)), (x.var(), var)


def _ou(theta: float = 1.5, g: float = 0.8, **kw) -> NonlinearSDE:
    return NonlinearSDE(lambda x, t: -theta * x, diffusion=g, elementwise=True, **kw)


def test_burn_in_prior_is_the_em_chain_law():
    """Without `prior`, prior_sample runs EM from 0 for burn_in: for OU the chain
    y <- (1 - theta d) y + g sqrt(d) z has variance g^2 d (1 - a^{2N}) / (1 - a^2), a = 1 - theta d
    after N steps (exact), n = 40k."""
    theta, g, burn_in, steps = 1.5, 0.8, 4.0, 400
    sde = _ou(theta, g, burn_in=burn_in, burn_in_steps=steps)
    x = sde.prior_sample((40_000, 1), generator=_gen(0), dtype=F64)
    d = burn_in / steps
    a = 1 - theta * d
    _assert_var(x, g**2 * d * (1 - a ** (2 * steps)) / (1 - a**2))


def test_reverse_em_on_ou_matches_exact_chain_law():
    """OU data N(0, lam): q_t = N(0, v_t), v_t = lam e^{-2 theta t} + g^2 (1 - e^{-2 theta t}) /
    (2 theta); prior N(0, v_T). samplers.sample(method='em', denoise='none') with the exact score
    -x / v_t runs x <- (1 + h (theta - g^2 / v_t)) x + g sqrt(h) z; its variance, propagated
    exactly, matches the samples (n = 20k, 100 steps). denoise='mean' drops the last noise."""
    theta, g, lam, n, steps = 1.5, 0.8, 2.0, 20_000, 100

    def v(t):
        return lam * torch.exp(-2 * theta * t) + g**2 * -torch.expm1(-2 * theta * t) / (2 * theta)

    def prior(shape, generator=None, device=None, dtype=None):
        return v(torch.tensor(1.0)).sqrt() * torch.randn(shape, generator=generator, dtype=dtype)

    sde = _ou(theta, g, prior=prior)
    grid = samplers.time_grid(sde, steps)
    var = float(v(torch.tensor(1.0, dtype=F64)))
    for i in range(steps):
        h = float(grid[i] - grid[i + 1])
        k1 = 1 + h * (theta - g**2 / float(v(grid[i])))
        var = k1**2 * var + (g**2 * h if i < steps - 1 else 0.0)
    res = samplers.sample(lambda x, t: -x / v(t)[:, None], sde, (n, 1), method="em",
                          steps=steps, denoise="mean", generator=_gen(1), dtype=F64)
    assert res.nfe == steps
    _assert_var(res.x, var)


def test_reverse_em_keeps_double_well_stationary_law():
    """Double well started at its stationary law with the exact (stationary) score: 500 reverse
    EM steps to eps leave the law stationary up to EM's O(h) invariant-measure bias; KS test
    against ∝ exp(-2 (y^2 - 1)^2), n = 5000 (a shift of EM bias size, ~1e-3, is far below the
    KS resolution ~1/sqrt(n))."""
    sde = DoubleWellSDE()
    res = samplers.sample(lambda x, t: sde.stationary_score(x), sde, (5000, 1), method="em",
                          steps=500, denoise="none", generator=_gen(2), dtype=F64)
    y = torch.linspace(-3, 3, 60_001, dtype=F64)
    dens = torch.exp(-2 * (y * y - 1) ** 2 - quartic_well_log_norm(2.0))
    cdf = torch.cat([torch.zeros(1, dtype=F64), torch.cumulative_trapezoid(dens, y)])
    assert abs(cdf[-1].item() - 1) < 1e-10

    grid, cdf_np = y.numpy(), cdf.numpy()
    assert stats.kstest(res.x[:, 0].numpy(), lambda v: np.interp(v, grid, cdf_np)).pvalue > 1e-3


def test_double_well_prior_logp_is_normalised():
    """prior_logp integrates to 1 (1-D trapezoid on [-3, 3], 1e-10) and sums over coordinates."""
    sde = DoubleWellSDE(barrier=0.7, diffusion=1.3)
    y = torch.linspace(-4, 4, 80_001, dtype=F64)
    total = torch.trapezoid(sde.prior_logp(y[:, None]).exp(), y).item()
    assert abs(total - 1) < 1e-10
    z = torch.randn(5, 3, dtype=F64, generator=_gen(3))
    per_coord = sum(sde.prior_logp(z[:, i:i + 1]) for i in range(3))
    torch.testing.assert_close(sde.prior_logp(z), per_coord, rtol=1e-14, atol=0)


def test_network_scales_and_reference_score():
    """Networks see (1, g sqrt(t)), the short-time transition scale. A network whose last layer
    is zero returns the reference (stationary) score exactly."""
    t = torch.tensor([0.001, 0.3, 1.0], dtype=F64)
    alpha, sigma = DoubleWellSDE(diffusion=1.5)._scales(t)
    torch.testing.assert_close(alpha, torch.ones_like(t))
    torch.testing.assert_close(sigma, 1.5 * t.sqrt(), rtol=1e-14, atol=0)
    dw = DoubleWellSDE()
    model = MLPScore(2, dw, hidden=8, depth=1).double()
    torch.nn.init.zeros_(model.net.layers[-1].weight)
    torch.nn.init.zeros_(model.net.layers[-1].bias)
    x = torch.randn(6, 2, dtype=F64, generator=_gen(4))
    torch.testing.assert_close(model(x, torch.full((6,), 0.4, dtype=F64)),
                               dw.stationary_score(x), rtol=1e-14, atol=1e-14)


def test_nonlinear_process_refuses_gaussian_only_operations():
    sde = DoubleWellSDE()
    t = torch.tensor([0.5])
    with pytest.raises(NotImplementedError, match="no closed-form marginal"):
        sde.marginal(t)
    with pytest.raises(NotImplementedError, match="not linear in x"):
        sde.drift_rate(t)
    with pytest.raises(ValueError, match=r"t=2 is outside \[eps, T\]"):
        sde.drift(torch.zeros(1, 2), torch.tensor([2.0]))
    score = lambda x, tt: sde.stationary_score(x)  # noqa: E731
    with pytest.raises(ValueError, match="method 'pc' needs a linear process"):
        samplers.sample(score, sde, (4, 2), method="pc")
    with pytest.raises(ValueError, match="denoise='tweedie' needs Gaussian transitions"):
        samplers.sample(score, sde, (4, 2), method="em")
    with pytest.raises(NotImplementedError, match="built without prior_logp"):
        _ou().prior_logp(torch.zeros(2, 1))


def test_make_sde_double_well_and_validation():
    """make_sde builds non-linear processes by name; both import paths give the same class."""
    from scorekit.processes import nonlinear as nonlinear_sde

    assert nonlinear_sde.NonlinearSDE is NonlinearSDE
    assert isinstance(NONLINEAR_SDES["double_well"](), DoubleWellSDE)
    sde = make_sde("double_well", barrier=2.0, T=2.0)
    assert sde.barrier == 2.0 and sde.T == 2.0 and not sde.is_linear
    with pytest.raises(ValueError, match="unknown option 'barier'"):
        make_sde("double_well", barier=2.0)
    for build, match in [
        (lambda: DoubleWellSDE(barrier=0.0), "barrier=0.0"),
        (lambda: NonlinearSDE("f"), "drift_fn must be callable"),
        (lambda: NonlinearSDE(lambda x, t: x, diffusion=0.0), "diffusion must be a number > 0"),
        (lambda: NonlinearSDE(lambda x, t: x, eps=2.0), "eps=2.0"),
        (lambda: NonlinearSDE(lambda x, t: x, burn_in_steps=0), "burn_in_steps=0"),
    ]:
        with pytest.raises(ValueError, match=match):
            build()
