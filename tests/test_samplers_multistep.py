"""Native multistep solvers (DPM-Solver++ 1/2M/3M, UniPC with its corrector, the stochastic
DPM-Solver++(2M)) against closed forms of Gaussian data: the order of convergence of each, the
published 3M's second order, agreement with k-diffusion (same evaluation points) and with
diffusers (on its 1000-entry table), the SDE solver's output law, and exact NFE."""

import math

import pytest
import torch

import samplers
from scorekit.scores import GaussianScore
from scorekit.sde import EDMSDE, VESDE, VPSDE

F64 = torch.float64
SDES = [VPSDE(), VESDE(), EDMSDE()]
IDS = ["vp", "ve", "edm"]
LAM = torch.tensor([0.05, 0.2, 0.6, 1.5], dtype=F64)
MEAN = torch.tensor([0.5, -1.0, 0.3, 0.1], dtype=F64)


def _basis(d=4):
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0),
                                       dtype=F64))
    return q


def _coef(sde, t):
    """(alpha_t, sigma_t) from the processes' definitions, written here."""
    if isinstance(sde, VPSDE):
        b = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t * t
        return math.exp(-0.5 * b), math.sqrt(-math.expm1(-b))
    if isinstance(sde, VESDE):
        return 1.0, sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t
    return 1.0, t


def _exact(sde, q, x_t):
    """Tweedie's mean at eps of the exact probability-flow image of x_T: per eigendirection
    y(eps) = y(T) sqrt(c(eps) / c(T)), c = alpha^2 lam + sigma^2; then
    E[x0 | x] = m + lam alpha (x - alpha m) / c along each direction."""
    (a0, s0), (a1, s1) = _coef(sde, sde.T), _coef(sde, sde.eps)
    c0, c1 = a0**2 * LAM + s0**2, a1**2 * LAM + s1**2
    y = (x_t - a0 * MEAN) @ q * torch.sqrt(c1 / c0)
    return MEAN + (y * (a1 * LAM / c1)) @ q.T


def _setup(sde, n=256):
    q = _basis()
    score = GaussianScore(MEAN, q @ torch.diag(LAM) @ q.T, sde)
    x_t = sde.prior_sample((n, 4), generator=torch.Generator().manual_seed(1), dtype=F64)
    return score, q, x_t


def _errors(sde, method, ns, **opts):
    score, q, x_t = _setup(sde)
    want = _exact(sde, q, x_t)
    out = []
    for n in ns:
        res = samplers.sample(score, sde, x_t.shape, method=method, steps=n, x_init=x_t,
                              dtype=F64, **opts)
        assert res.nfe == n and (res.nfe_per_sample == n).all()
        out.append(float((res.x - want).abs().max()))
    return out


# Error ratio per doubling of the steps (40 -> 80 -> 160): a method of order p halves its error
# p times, 2^p, up to the next term's share at these step counts (observed: DPM-Solver++ 1 /
# 2M 1.98-2.00 / 3.8-4.1; 3M 17-24, its leading terms cancelling on this linear flow; UniPC-1,
# -2 with the corrector one order higher, 4.0 / 7.6-8.2; UniPC-3 with it 9-14).
ORDERS = [("dpm_solver", {"order": 1}, 1.7, 2.4), ("dpm_solver", {"order": 2}, 3.3, 4.8),
          ("dpm_solver", {"order": 3}, 6.0, 40.0),
          ("unipc", {"order": 1, "corrector": True}, 3.3, 4.8),
          ("unipc", {"order": 2, "corrector": True}, 6.0, 10.0),
          ("unipc", {"order": 2, "corrector": True, "variant": "bh1"}, 6.0, 10.0),
          ("unipc", {"order": 3, "corrector": True}, 6.0, 40.0),
          ("unipc", {"order": 2, "corrector": False}, 3.3, 4.8)]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("method,opts,lo,hi", ORDERS,
                         ids=[f"{m}-{'-'.join(f'{k}{v}' for k, v in o.items())}"
                              for m, o, _, _ in ORDERS])
def test_order_of_convergence(sde, method, opts, lo, hi):
    errs = _errors(sde, method, (40, 80, 160), **opts)
    ratios = [a / b for a, b in zip(errs, errs[1:], strict=False)]
    assert all(lo < r < hi for r in ratios), (errs, ratios)


def _published_3m(score, sde, x_t, n):
    """DPM-Solver++(3M) as published (official code, diffusers, k-diffusion's dpmpp_3m_sde at
    eta = 0): the second divided difference weighed by phi3 once, in x~ = x / alpha."""
    ts = samplers.time_grid(sde, n - 1, "logsnr")
    a, s = zip(*(_coef(sde, float(t)) for t in ts), strict=True)
    lam = [math.log(ai / si) for ai, si in zip(a, s, strict=True)]
    xt, ds = x_t / a[0], []
    for i in range(n - 1):
        t = torch.full((x_t.shape[0],), float(ts[i]), dtype=F64)
        x = a[i] * xt
        ds = [(x + s[i] ** 2 * score(x, t)) / a[i], *ds[:2]]
        h = lam[i + 1] - lam[i]
        xt = (s[i + 1] / a[i + 1]) / (s[i] / a[i]) * xt - math.expm1(-h) * ds[0]
        if len(ds) == 2:
            xt = xt - math.expm1(-h) / 2 * (ds[0] - ds[1])  # 2M on the uniform grid
        elif len(ds) == 3:  # r0 = r1 = 1 on a lambda-uniform grid
            d1 = 1.5 * (ds[0] - ds[1]) - 0.5 * (ds[1] - ds[2])
            d2 = 0.5 * ((ds[0] - ds[1]) - (ds[1] - ds[2]))
            phi2 = math.expm1(-h) / h + 1
            xt = xt + phi2 * d1 - (phi2 / h - 0.5) * d2
    t = torch.full((x_t.shape[0],), sde.eps, dtype=F64)
    x = a[-1] * xt
    return (x + s[-1] ** 2 * score(x, t)) / a[-1]


def test_published_3m_is_second_order_ours_third():
    """The published multistep 3M weighs d2 ~ h^2 D''/2 by phi3 where the exact integral asks
    for 2 phi3: its error only quarters per doubling; ours falls by more than 2^3."""
    sde = VPSDE()
    score, q, x_t = _setup(sde)
    want = _exact(sde, q, x_t)
    pub = [float((_published_3m(score, sde, x_t, n) - want).abs().max()) for n in (40, 80, 160)]
    ours = _errors(sde, "dpm_solver", (40, 80, 160), order=3)
    assert all(3.3 < a / b < 4.8 for a, b in zip(pub, pub[1:], strict=False)), pub
    assert all(a / b > 8 for a, b in zip(ours, ours[1:], strict=False)), ours


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_dpm_solver_2m_equals_k_diffusion(sde):
    """Same evaluation points (uniform in log s from s(T) to s(eps), then the denoise): our 2M
    and k-diffusion's sample_dpmpp_2m on exponential sigmas agree to its float32 sigmas
    (relative 1e-6 per point, amplified over 20 steps: bound 1e-5)."""
    from benchmarks import _peers

    if isinstance(_peers.k_diffusion(), str):
        pytest.skip("k-diffusion is not installed (pip install --no-deps k-diffusion)")
    score, _, x_t = _setup(sde)
    for nfe in (10, 20):
        ours = samplers.sample(score, sde, x_t.shape, method="dpm_solver", order=2, steps=nfe,
                               x_init=x_t, dtype=F64).x
        kd, calls = _peers.run_kd("dpmpp_2m", "exponential", nfe, score, sde, x_t, 0)
        assert calls == nfe
        torch.testing.assert_close(kd, ours, rtol=0, atol=1e-5 * ours.abs().max())


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("native,adapter,opts", [
    ("dpm_solver", "dpm_solver_diffusers", {"order": 2}),
    ("unipc", "unipc_diffusers", {"order": 2, "corrector": True})])
def test_native_agrees_with_diffusers(sde, native, adapter, opts):
    """At 20 NFE both evaluate at the same lambda-uniform points, diffusers rounded to its
    1000-entry table (spacing 0.012 in log s): the outputs agree to 1e-2 of their scale (the
    rounding perturbs each point by < 0.006 in lambda); at 10 NFE within 2e-2."""
    score, _, x_t = _setup(sde)
    for nfe, tol in ((10, 2e-2), (20, 1e-2)):
        a = samplers.sample(score, sde, x_t.shape, method=native, steps=nfe, x_init=x_t,
                            dtype=F64, **opts)
        b = samplers.sample(score, sde, x_t.shape, method=adapter, steps=nfe, x_init=x_t,
                            dtype=F64)
        assert a.nfe == b.nfe == nfe
        assert float((a.x - b.x).abs().max()) < tol * float(a.x.abs().max())


def test_diffusers_adapters_under_a_float64_default_dtype():
    """A float64 default dtype (a common way to ask for float64 samples) used to make UniPC's
    weight solve mix float32 and float64 ("Expected A and B to have the same dtype")."""
    sde = VPSDE()
    score = GaussianScore(torch.zeros(3), torch.eye(3) * 0.5, sde)
    old = torch.get_default_dtype()
    torch.set_default_dtype(F64)
    try:
        for method in ("unipc_diffusers", "dpm_solver_diffusers", "euler_diffusers"):
            for dtype in (torch.float32, F64):
                res = samplers.sample(score, sde, (32, 3), method=method, steps=8, dtype=dtype)
                assert res.x.dtype == dtype and torch.isfinite(res.x).all()
    finally:
        torch.set_default_dtype(old)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_sde_solver_output_law(sde):
    """The stochastic DPM-Solver++(2M) ends with Tweedie's mean at eps: for Gaussian data and
    a chain that samples p_eps its law is N(m, Sigma alpha^2 C^-1 Sigma) per eigendirection,
    variance lam^2 alpha^2 / c. At 60 evaluations the discretisation bias is below the sampling
    error: each variance within 5 SE (SE = var sqrt(2/n)) + 2 % and each mean within 5 SE."""
    q = _basis()
    score = GaussianScore(MEAN, q @ torch.diag(LAM) @ q.T, sde)
    n = 40_000
    res = samplers.sample(score, sde, (n, 4), method="dpm_solver_sde", steps=60, dtype=F64,
                          generator=torch.Generator().manual_seed(3))
    a, s = _coef(sde, sde.eps)
    var = LAM**2 * a**2 / (a**2 * LAM + s**2)
    y = (res.x - MEAN) @ q
    assert ((y.var(0) / var - 1).abs() < 5 * (2 / n) ** 0.5 + 0.02).all(), y.var(0) / var
    assert (y.mean(0).abs() < 5 * (var / n).sqrt()).all(), y.mean(0)


@pytest.mark.parametrize("method", ["dpm_solver", "unipc", "dpm_solver_sde"])
def test_float32_and_float64_and_auto_defaults(method):
    sde = VPSDE()
    score, _, _ = _setup(sde)
    for dtype in (torch.float32, F64):
        res = samplers.sample(score, sde, (64, 4), method=method, steps=12, dtype=dtype,
                              generator=torch.Generator().manual_seed(0))
        assert res.x.dtype == dtype and torch.isfinite(res.x).all() and res.nfe == 12
    if method != "dpm_solver_sde":
        info = [samplers.sample(score, sde, (8, 4), method=method, steps=n).info
                for n in (10, 20)]
        assert info[0]["order"] == 2 and info[1]["order"] == 3
    with pytest.raises(ValueError, match="steps >= 2"):
        samplers.sample(score, sde, (8, 4), method=method, steps=1)


class _DiagonalScore:
    """The exact score of N(m, diag(lam)) under a linear process, written from the marginal
    x_t ~ N(alpha m, alpha^2 lam + sigma^2)."""

    def __init__(self, sde, m, lam):
        self.sde, self.m, self.lam = sde, m, lam

    def __call__(self, x, t):
        coef = torch.tensor([_coef(self.sde, float(s)) for s in t.unique()], dtype=F64)
        assert coef.shape[0] == 1  # one time per call for these solvers
        a, s = float(coef[0, 0]), float(coef[0, 1])
        return -(x - a * self.m.to(x.dtype)) / (a * a * self.lam.to(x.dtype) + s * s)


@pytest.mark.parametrize("method", ["dpm_solver", "unipc"])
def test_sixteen_dim_gaussian_at_10_and_20_nfe(method):
    """The fast path's targets on the 16-D Gaussian with eigenvalues log-uniform in [0.01, 1]
    (VP, float64, n = 20000): error = mean |var / lam - 1| + mean |mean error| / sqrt(lam) at
    most 0.055 at 10 NFE and 0.03 at 20 (k-diffusion's DPM-Solver++(2M) on exponential sigmas:
    0.055 / 0.030). The error of exact draws at this n is about 0.0136 (E|chi2_{n-1}/(n-1) - 1|
    ~ sqrt(4 / (pi n)) = 0.008 plus E|N(0, 1/n)| = 0.0056), included in both bounds."""
    sde, d, n = VPSDE(), 16, 20000
    g = torch.Generator().manual_seed(0)
    lam = torch.logspace(-2.0, 0.0, d, dtype=F64)
    m = 0.5 * torch.randn(d, generator=g, dtype=F64)
    score = _DiagonalScore(sde, m, lam)
    for nfe, bound in ((10, 0.055), (20, 0.03)):
        res = samplers.sample(score, sde, (n, d), method=method, steps=nfe, dtype=F64,
                              generator=torch.Generator().manual_seed(1))
        assert res.nfe == nfe
        y = res.x - m
        err = float((y.var(0) / lam - 1).abs().mean() + (y.mean(0) / lam.sqrt()).abs().mean())
        assert err <= bound, (nfe, err)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_euler_diffusers_evaluates_at_the_schedulers_sigma(sde):
    """diffusers' Euler steps through Karras sigmas between the table's entries: each score
    call is at the time whose noise level sigma_t / alpha_t is the scheduler's sigma (rounding
    the timestep to the table was 0.14-0.40 % off). The noise level is written here from the
    processes' closed forms."""
    import diffusers

    seen = []

    def score(x, t):
        seen.append(float(t[0]))
        return -x

    samplers.sample(score, sde, (4, 2), method="euler_diffusers", steps=9, dtype=F64)
    # The scheduler, built by diffusers from the same Karras settings on our table's levels.
    res_levels = []
    for t in seen:
        if isinstance(sde, VPSDE):
            log_alpha = -0.25 * t**2 * (sde.beta_max - sde.beta_min) - 0.5 * t * sde.beta_min
            res_levels.append(math.sqrt(math.expm1(-2 * log_alpha)))
        else:
            res_levels.append(sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** t)
    sched = diffusers.EulerDiscreteScheduler(
        num_train_timesteps=1000, use_karras_sigmas=True, final_sigmas_type="zero",
        trained_betas=samplers.diffusers_adapter.trained_betas(sde))
    sched.set_timesteps(9)
    want = sched.sigmas[:-1].double().tolist()
    assert len(seen) == 9
    assert res_levels == pytest.approx(want, rel=1e-9)
