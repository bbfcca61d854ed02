"""Forward processes against closed forms, moment ODEs and Euler–Maruyama (objectives.md §1).

Reference formulas are written out here from the spec table (§1.1), independently of
`scorekit.sde`, in float64 numpy.
"""

import math
import re

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from scorekit.sde import EDMSDE, SDES, VESDE, VPSDE, SubVPSDE, make_sde

F64 = torch.float64
PROCESSES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
IDS = ["vp", "subvp", "ve", "edm"]


def _int_beta(sde, t):
    return sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2


def _ref_marginal(sde, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(alpha_t, sigma_t) from the spec table, float64."""
    if isinstance(sde, (VPSDE, SubVPSDE)):
        b = _int_beta(sde, t)
        one_minus = -np.expm1(-b)
        sigma = np.sqrt(one_minus) if isinstance(sde, VPSDE) else one_minus
        return np.exp(-0.5 * b), sigma
    if isinstance(sde, VESDE):
        return np.ones_like(t), sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    return np.ones_like(t), t


def _ref_coeffs(sde, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(f_t, g(t)^2) of dx = f_t x dt + g dW from the spec table, float64."""
    if isinstance(sde, (VPSDE, SubVPSDE)):
        beta = sde.beta_min + t * (sde.beta_max - sde.beta_min)
        g2 = beta if isinstance(sde, VPSDE) else beta * -np.expm1(-2 * _int_beta(sde, t))
        return -0.5 * beta, g2
    if isinstance(sde, VESDE):
        log_r = math.log(sde.sigma_max / sde.sigma_min)
        return np.zeros_like(t), (sde.sigma_min * np.exp(t * log_r)) ** 2 * 2 * log_r
    return np.zeros_like(t), 2 * t


def _t_grid(sde, n: int, lo: float | None = None) -> torch.Tensor:
    lo = sde.eps if lo is None else lo
    return torch.logspace(math.log10(lo), math.log10(sde.T), n, dtype=F64)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_marginal_matches_spec_formulas(sde):
    t = _t_grid(sde, 30)
    alpha, sigma = sde.marginal(t)
    ref_a, ref_s = _ref_marginal(sde, t.numpy())
    np.testing.assert_allclose(alpha.numpy(), ref_a, rtol=1e-13)
    np.testing.assert_allclose(sigma.numpy(), ref_s, rtol=1e-13)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_public_coefficients_match_spec(sde):
    """drift(x, t) = f_t x for x: (B, 2, 3), and g(t), against the spec table."""
    t = _t_grid(sde, 7)
    x = torch.randn(7, 2, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    f, g2 = _ref_coeffs(sde, t.numpy())
    drift = sde.drift(x, t)
    assert drift.shape == x.shape
    np.testing.assert_allclose(drift.numpy(), f[:, None, None] * x.numpy(), rtol=1e-13,
                               atol=1e-300)
    np.testing.assert_allclose(sde.diffusion(t).numpy() ** 2, g2, rtol=1e-13)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_marginal_solves_moment_odes(sde):
    """alpha, sigma^2 solve d alpha/dt = f_t alpha, d v/dt = 2 f_t v + g^2 from t = 0.

    Integrated with the process's own (unchecked) f_t and g in DOP853 at rtol 1e-12, so the
    solver error is ~1e-11 relative; 1e-8 leaves room for that and nothing else. Initial
    values: alpha_0 = 1, v_0 = 0, except VE whose official convention is v_0 = sigma_min^2.
    """
    v0 = sde.sigma_min**2 if isinstance(sde, VESDE) else 0.0

    def rhs(t, y):
        tt = torch.tensor([t], dtype=F64)
        f, g = sde._drift_rate(tt).item(), sde._diffusion(tt).item()
        return [f * y[0], 2 * f * y[1] + g * g]

    t_eval = _t_grid(sde, 20)
    sol = integrate.solve_ivp(rhs, (0.0, sde.T), [1.0, v0], method="DOP853", t_eval=t_eval,
                              rtol=1e-12, atol=1e-30)
    assert sol.success
    alpha, sigma = sde.marginal(t_eval)
    np.testing.assert_allclose(alpha.numpy(), sol.y[0], rtol=1e-8)
    np.testing.assert_allclose(sigma.numpy() ** 2, sol.y[1], rtol=1e-8)


def _em_chain_moments(sde, grid: torch.Tensor, x0: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact mean and variance of the EM chain x <- x + f_t x dt + g(t) sqrt(dt) z started at
    x_eps ~ N(alpha_eps x0, sigma_eps^2): m <- k m, v <- k^2 v + g^2 dt with k = 1 + f dt."""
    f = sde.drift_rate(grid[:-1]).tolist()
    g = sde.diffusion(grid[:-1]).tolist()
    dt = grid.diff().tolist()
    a0, s0 = (v.item() for v in sde.marginal(grid[:1]))
    m, v = [a0 * x0], [s0**2]
    for fi, gi, hi in zip(f, g, dt, strict=True):
        k = 1 + fi * hi
        m.append(k * m[-1])
        v.append(k * k * v[-1] + gi * gi * hi)
    return np.array(m), np.array(v)


@pytest.fixture
def one_thread():
    """The EM loop is hundreds of small elementwise ops; on a loaded 2-core box intra-op threads
    only add synchronisation (measured 10x slower), so run it single-threaded."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_marginal_matches_euler_maruyama(sde, one_thread):
    """EM paths of dx = f x dt + g dW (via `drift` / `diffusion`) from x_eps ~ N(alpha_eps x0,
    sigma_eps^2), x0 = 1, have mean alpha_t x0 and std sigma_t at t ~ T * {0.1, 0.5, 1}.

    The EM chain is linear-Gaussian, so its exact law is N(m, v) from `_em_chain_moments`; its
    deviation from the marginal is the discretisation bias (0.1-2.1% of sigma here, vs
    4 SE = 1.4%). That bias is added to 4 SE (SE of the mean sigma / sqrt(n), of the std
    sigma / sqrt(2n)), and asserted to shrink ~2x when dt halves, so the slack is pure O(dt)
    error and cannot hide a wrong drift or diffusion (that would leave an O(1) residual).
    """
    n, steps, x0 = 40_000, 400, 1.0
    checkpoints = (40, 200, 400)
    gen = torch.Generator().manual_seed(0)
    grid = torch.linspace(sde.eps, sde.T, steps + 1, dtype=F64)
    alpha, sigma = (v.numpy() for v in sde.marginal(grid))
    g_sqrt_dt = sde.diffusion(grid[:-1]) * grid.diff().sqrt()
    m, v = _em_chain_moments(sde, grid, x0)
    m2, v2 = _em_chain_moments(sde, torch.linspace(sde.eps, sde.T, 2 * steps + 1, dtype=F64), x0)
    x = alpha[0] * x0 + sigma[0] * torch.randn(n, 1, dtype=F64, generator=gen)
    for i in range(steps):
        dt = (grid[i + 1] - grid[i]).item()
        noise = torch.randn(n, 1, dtype=F64, generator=gen)
        x = x + sde.drift(x, grid[i].expand(n)) * dt + g_sqrt_dt[i] * noise
        c = i + 1
        if c not in checkpoints:
            continue
        bias_m, bias_s = abs(m[c] - alpha[c] * x0), abs(math.sqrt(v[c]) - sigma[c])
        fine_m, fine_s = abs(m2[2 * c] - alpha[c] * x0), abs(math.sqrt(v2[2 * c]) - sigma[c])
        assert fine_s <= 0.6 * bias_s and fine_m <= 0.6 * bias_m + 1e-15, (c, bias_s, fine_s)
        mean, std = x.mean().item(), x.std().item()
        assert abs(mean - alpha[c] * x0) <= 4 * sigma[c] / math.sqrt(n) + bias_m, (c, mean)
        assert abs(std - sigma[c]) <= 4 * sigma[c] / math.sqrt(2 * n) + bias_s, (c, std)


def test_subvp_std_has_no_square_root():
    """sub-VP: sigma_t = 1 - exp(-B), i.e. variance (1 - exp(-B))^2 (score_sde sde_lib.py), not
    the VP form sqrt(1 - exp(-B)); and it never exceeds the VP std."""
    sub, vp = SubVPSDE(), VPSDE()
    t = _t_grid(sub, 50)
    tn = t.numpy()
    b = 0.1 * tn + 0.5 * (20.0 - 0.1) * tn**2  # defaults beta_min = 0.1, beta_max = 20
    _, sigma = sub.marginal(t)
    np.testing.assert_allclose(sigma.numpy() ** 2, (1 - np.exp(-b)) ** 2, rtol=1e-12)
    # The sqrt'd (VP) variance differs by a factor 1 / (1 - e^-B) >= 1.0001 on [eps, T].
    assert (np.abs(sigma.numpy() ** 2 / (1 - np.exp(-b)) - 1) > 1e-5).all()
    _, sigma_vp = vp.marginal(t)
    assert (sigma <= sigma_vp).all()


@pytest.mark.parametrize("cls", [VPSDE, SubVPSDE], ids=["vp", "subvp"])
def test_small_t_sigma_precision(cls):
    """sigma at t = 1e-5 (B ~ 1e-6) against the Taylor series of 1 - exp(-B).

    float64: series truncated after B^4 has relative error ~B^4/120 ~ 1e-26, so only rounding
    (a few ulps, 2e-16 each) remains: 1e-14. float32: B itself is rounded (6e-8 relative per
    op), expm1 and sqrt add an ulp each; 1e-6 is ~16 float32 ulps. The naive 1 - exp(-B) is
    off by 4.7% in float32 (objectives.md §1.2).
    """
    sde = cls(eps=1e-5)
    for dtype, rtol in ((F64, 1e-14), (torch.float32, 1e-6)):
        t = torch.tensor([1e-5], dtype=dtype)
        b = _int_beta(sde, t.double().item())
        one_minus = b - b**2 / 2 + b**3 / 6 - b**4 / 24
        ref = math.sqrt(one_minus) if cls is VPSDE else one_minus
        _, sigma = sde.marginal(t)
        assert sigma.dtype == dtype
        assert abs(sigma.item() / ref - 1) < rtol, (dtype, sigma.item(), ref)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_prior_logp_matches_scipy(sde):
    """Per-sample log density of N(0, prior_std^2 I) over all non-batch dims: shape (B,)."""
    z = 1.3 * sde.prior_sample((5, 2, 3), generator=torch.Generator().manual_seed(1), dtype=F64)
    logp = sde.prior_logp(z)
    assert logp.shape == (5,)
    ref = stats.multivariate_normal(np.zeros(6), sde.prior_std**2 * np.eye(6)).logpdf(
        z.reshape(5, 6).numpy())
    np.testing.assert_allclose(logp.numpy(), ref, rtol=1e-12, atol=1e-10)


def test_prior_sample_std():
    """prior_sample draws N(0, prior_std^2 I): std within 4 SE (prior_std / sqrt(2n))."""
    n = 40_000
    for sde in PROCESSES:
        z = sde.prior_sample((n,), generator=torch.Generator().manual_seed(2), dtype=F64)
        assert abs(z.std().item() - sde.prior_std) <= 4 * sde.prior_std / math.sqrt(2 * n)
        assert abs(z.mean().item()) <= 4 * sde.prior_std / math.sqrt(n)


def _bad_times(sde):
    return [sde.eps / 2, sde.T * 1.01, -0.1, float("nan")]


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_t_outside_interval_raises_naming_value(sde):
    """marginal / drift / drift_rate / diffusion reject t outside [eps, T] with the value in the
    message; a single bad entry in a batch is enough."""
    x = torch.zeros(3, 2, dtype=F64)
    for bad in _bad_times(sde):
        t = torch.tensor([sde.eps, bad, sde.T], dtype=F64)
        msg = re.escape(f"t={bad:.6g} is outside [eps, T]")
        for call in (sde.marginal, sde.drift_rate, sde.diffusion, lambda t: sde.drift(x, t)):
            with pytest.raises(ValueError, match=msg):
                call(t)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_t_endpoints_and_floats_accepted(sde):
    alpha, sigma = sde.marginal(torch.tensor([sde.eps, sde.T], dtype=F64))
    assert torch.isfinite(alpha).all() and (sigma > 0).all()
    alpha, sigma = sde.marginal(0.5 * sde.T)
    assert alpha.shape == sigma.shape == (1,)
    assert sde.drift(torch.ones(4, 3), 0.5 * sde.T).shape == (4, 3)


def test_t_bad_shape_or_dtype_raises():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"shape \(B,\), got \(2, 1\)"):
        sde.marginal(torch.full((2, 1), 0.5))
    with pytest.raises(ValueError, match="floating tensor, got dtype torch.int64"):
        sde.marginal(torch.tensor([1]))


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_noise_level_and_inverse(sde):
    """noise_level = sigma / alpha (overrides included), strictly increasing, and
    t_of_noise_level inverts it (closed forms or 60-step float64 bisection: ~1e-16 relative)."""
    t = _t_grid(sde, 60)
    alpha, sigma = sde.marginal(t)
    level = sde.noise_level(t)
    np.testing.assert_allclose(level.numpy(), (sigma / alpha).numpy(), rtol=1e-12)
    assert (level.diff() > 0).all()
    np.testing.assert_allclose(sde.t_of_noise_level(level).numpy(), t.numpy(), rtol=1e-10)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_lw_cum_is_antiderivative(sde):
    """_lw_cum(t2) - _lw_cum(t1) = int_{t1}^{t2} g^2 / sigma^2 dt, integrated by scipy quad in
    log t (the integrand is ~1/t near 0) with g, sigma from the spec formulas; quad's
    epsrel 1e-12 makes 1e-9 a safe margin. Starts at 1e-5, below the VP sampling eps, since
    DSM may train from t_min = 1e-5."""
    lo = min(sde.eps, 1e-5)
    t = _t_grid(sde, 8, lo=lo).numpy()

    def integrand(u):
        tt = np.exp(u)
        _, g2 = _ref_coeffs(sde, np.array([tt]))
        _, s = _ref_marginal(sde, np.array([tt]))
        return (g2 / s**2 * tt).item()

    cum = sde._lw_cum(torch.from_numpy(t)).numpy()
    for t1, t2, c1, c2 in zip(t[:-1], t[1:], cum[:-1], cum[1:], strict=True):
        ref, _ = integrate.quad(integrand, math.log(t1), math.log(t2), epsabs=0, epsrel=1e-12)
        assert abs((c2 - c1) / ref - 1) < 1e-9, (t1, t2, c2 - c1, ref)


@pytest.mark.parametrize("sde", PROCESSES, ids=IDS)
def test_lw_cum_inverse_round_trip(sde):
    """_lw_cum_inv(_lw_cum(t)) = t in float64 (closed forms; sub-VP bisects 100 times in log B),
    including t = 1e-5 where e^B - 1 ~ 1e-6 needs expm1."""
    t = _t_grid(sde, 50, lo=min(sde.eps, 1e-5))
    back = sde._lw_cum_inv(sde._lw_cum(t))
    assert back.dtype == F64
    np.testing.assert_allclose(back.numpy(), t.numpy(), rtol=1e-10)


def test_make_sde_builds_and_validates():
    sde = make_sde("vp", beta_max=10.0)
    assert isinstance(sde, VPSDE) and sde.beta_max == 10.0
    assert all(isinstance(make_sde(name), cls) for name, cls in SDES.items())
    with pytest.raises(ValueError, match=r"unknown sde 'vpp'; valid: \['edm', 'subvp', 've'"):
        make_sde("vpp")
    with pytest.raises(ValueError, match="unknown option 'beta_mx'"):
        make_sde("vp", beta_mx=10.0)


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: VPSDE(beta_min=0.0), "beta_min=0.0"),
        (lambda: SubVPSDE(beta_min=2.0, beta_max=1.0), "beta_max=1.0"),
        (lambda: VPSDE(eps=1.5), "eps=1.5"),
        (lambda: VESDE(sigma_min=60.0), "sigma_min=60.0"),
        (lambda: EDMSDE(sigma_data=0.0), "sigma_data must be > 0, got 0.0"),
    ],
    ids=["vp-beta", "subvp-order", "vp-eps", "ve-sigma", "edm-sigma-data"],
)
def test_constructor_validation(build, match):
    with pytest.raises(ValueError, match=match):
        build()
