"""Probability-flow ODE, Heun, diffusers schedulers and likelihood against Gaussian closed forms."""

import math

import _ref
import pytest
import torch
from _gauss import (
    assert_gaussian_law,
    chain_law,
    marginal_moments,
    pf_ode_map,
    pf_ode_to_level,
    random_spd,
    tweedie_affine,
)

import samplers
from samplers.diffusers_adapter import make_scheduler
from scorekit.scores import GaussianScore
from scorekit.sde import EDMSDE, VESDE, VPSDE, SubVPSDE

SDES = [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()]
IDS = ["vp", "subvp", "ve", "edm"]


def _gauss(sde, d=4):
    mean = torch.tensor([0.5, -1.0, 0.0, 2.0, 1.0, -0.5][:d], dtype=torch.float64)
    return GaussianScore(mean, random_spd(d, 0.05, 2.0, seed=1), sde)


def _prior(sde, n, d=4, seed=0):
    return sde.prior_sample((n, d), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.float64)


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_ode_matches_closed_form_flow(sde):
    """dopri5 at rtol = atol = 1e-8 equals the closed-form PF-ODE map T -> eps to 1e-4."""
    gs = _gauss(sde)
    x = _prior(sde, 256)
    res = samplers.sample(gs, sde, x.shape, method="ode", x_init=x, dtype=torch.float64,
                          rtol=1e-8, atol=1e-8)
    ref = pf_ode_map(gs, sde, x, sde.T, sde.eps)
    assert (res.x - ref).abs().max() < 1e-4


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_ode_default_tolerance_lands_on_p_eps(sde):
    """Default rtol = atol = 1e-5: samples have the law of p_eps's flow image of the prior.

    The exact law of the output is the closed-form map applied to the actual prior, i.e. the
    Gaussian with the map's covariance; we compare moments within 5 SE.
    """
    gs = _gauss(sde)
    res = samplers.sample(gs, sde, (20000, 4), method="ode", dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0))
    mt, ct = marginal_moments(gs, sde.T)
    # Prior N(0, s^2 I) pushed through the linear flow map: affine image of a Gaussian.
    eye = torch.eye(4, dtype=torch.float64)
    a = pf_ode_map(gs, sde, eye, sde.T, sde.eps) - pf_ode_map(gs, sde, 0 * eye, sde.T, sde.eps)
    b = pf_ode_map(gs, sde, torch.zeros(1, 4, dtype=torch.float64), sde.T, sde.eps)[0]
    cov = sde.prior_std**2 * a.T @ a
    assert_gaussian_law(res.x, b, cov)
    assert res.nfe < 300  # default tolerances, not torchdiffeq's 1e-7/1e-9


def test_ode_bad_options():
    sde = VPSDE()
    gs = _gauss(sde)
    with pytest.raises(ValueError, match="'dopri55'.*dopri5"):
        samplers.sample(gs, sde, (4, 4), method="ode", solver="dopri55")
    with pytest.raises(ValueError, match="rtol must be > 0, got 0"):
        samplers.sample(gs, sde, (4, 4), method="ode", rtol=0)
    with pytest.raises(ValueError, match="fixed-step"):
        samplers.sample(gs, sde, (4, 4), method="ode", steps=10)


def test_ode_fixed_step_solver():
    """rk4 with 50 steps is close to the closed-form map (4th order)."""
    sde = VPSDE()
    gs = _gauss(sde)
    x = _prior(sde, 64)
    res = samplers.sample(gs, sde, x.shape, method="ode", x_init=x, dtype=torch.float64,
                          solver="rk4", steps=200)
    assert res.nfe == 4 * 200
    assert (res.x - pf_ode_map(gs, sde, x, sde.T, sde.eps)).abs().max() < 1e-2


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_heun_is_second_order(sde):
    """Heun's error against the closed-form flow (+ Tweedie) falls ~4x per doubling of steps."""
    gs = _gauss(sde)
    x = _prior(sde, 512)
    a, b = tweedie_affine(gs, sde, sde.eps)
    ref = pf_ode_map(gs, sde, x, sde.T, sde.eps) @ a.T + b
    errs = []
    for steps in (40, 80, 160):
        res = samplers.sample(gs, sde, x.shape, method="heun", steps=steps, x_init=x,
                              dtype=torch.float64)
        assert res.nfe == 2 * steps - 1
        errs.append((res.x - ref).abs().max().item())
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(3.0 < r < 5.5 for r in ratios), (errs, ratios)


def test_diffusers_alphas_cumprod_match_process():
    """The scheduler's alphas_cumprod are alpha_bar(t_n) = exp(-int beta) on the adapter's table,
    a geometric grid of noise levels from sigma(eps)/alpha(eps) to sigma(T)/alpha(T) (written
    here from the VP formulas); diffusers stores float32, so 1e-5 relative is its rounding."""
    sde = VPSDE()
    sched = make_scheduler("dpm_solver_diffusers", sde)
    ends = (_ref.alpha_sigma(sde, sde.eps), _ref.alpha_sigma(sde, sde.T))
    lo, hi = (float(s / a) for a, s in ends)
    level = torch.logspace(math.log10(lo), math.log10(hi), 1000, dtype=torch.float64)
    abar = 1 / (1 + level**2)
    assert ((sched.alphas_cumprod.double() - abar) / abar).abs().max() < 1e-5


# Observed max-error ratios per doubling (20 -> 40 -> 80 steps), all processes: Euler 2.0;
# DPM-Solver++(2M) 2.9-4.5; UniPC 3.0-7.8 (its corrector raises the order). Bounds: first order
# must halve, second order must beat 3.
ORDER_BOUNDS = {"euler_diffusers": (1.7, 2.3), "dpm_solver_diffusers": (3.0, 8.0),
                "unipc_diffusers": (3.0, 9.0)}


@pytest.mark.parametrize("sde", SDES, ids=IDS)
@pytest.mark.parametrize("method", sorted(ORDER_BOUNDS))
def test_diffusers_converge_to_exact_flow(sde, method):
    """With the exact Gaussian score each scheduler's output (final sigma 0) converges to the
    closed-form PF-ODE image of the same prior draw at its order; NFE = steps."""
    gs = _gauss(sde)
    x = _prior(sde, 256)
    ref = pf_ode_to_level(gs, sde, x, sde.T, 0.0)
    errs = []
    for steps in (40, 80):
        res = samplers.sample(gs, sde, x.shape, method=method, steps=steps, x_init=x,
                              dtype=torch.float64)
        assert res.nfe == steps
        errs.append((res.x - ref).abs().max().item())
    lo, hi = ORDER_BOUNDS[method]
    assert lo < errs[0] / errs[1] < hi, errs


def _affine_output(method, gs, sde, steps):
    """(A, b) of a deterministic sampler that is affine in x_T for a Gaussian score."""
    d = gs.dim
    x = torch.cat([torch.zeros(1, d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)])
    out = samplers.sample(gs, sde, x.shape, method=method, steps=steps, x_init=x,
                          dtype=torch.float64).x
    return (out[1:] - out[0]).T, out[0]


def test_diffusers_few_steps_beat_em():
    """At 10 NFE DPM-Solver's output law is much closer to the data than EM's (both exact laws:
    DPM-Solver is affine in x_T; EM's chain law is propagated in closed form). Measured relative
    covariance errors: DPM-Solver 0.075, EM 0.209; the bound asks for at least a factor 2."""
    sde = VPSDE()
    gs = _gauss(sde)
    a, b = _affine_output("dpm_solver_diffusers", gs, sde, 10)
    cov_dpm = sde.prior_std**2 * a @ a.T
    grid = _ref.uniform_grid(sde, 9)  # 9 EM steps + Tweedie = 10 NFE
    m, c = chain_law(gs, sde, grid, _ref.em_rows(sde, grid))
    ta, tb = tweedie_affine(gs, sde, sde.eps)
    cov_em = ta @ c @ ta.T
    rel = lambda c: (torch.linalg.matrix_norm(c - gs.cov) / torch.linalg.matrix_norm(gs.cov)).item()  # noqa: E731
    assert rel(cov_dpm) < 0.5 * rel(cov_em), (rel(cov_dpm), rel(cov_em))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_log_likelihood_exact_trace(sde):
    """Exact-trace PF-ODE likelihood with the exact p_T as prior equals log p_eps (1e-3/dim)."""
    gs = _gauss(sde, d=3)
    x = gs.sample_marginal(32, sde.eps, generator=torch.Generator().manual_seed(0))
    t_eps = torch.full((32,), sde.eps, dtype=torch.float64)
    exact_prior = lambda z: gs.marginal_logp(z, torch.full((z.shape[0],), sde.T,  # noqa: E731
                                                           dtype=torch.float64))
    lp = samplers.log_likelihood(gs, sde, x, exact_trace=True, rtol=1e-6, atol=1e-6,
                                 prior_logp=exact_prior)
    assert (lp - gs.marginal_logp(x, t_eps)).abs().max() < 1e-3 * 3


def test_log_likelihood_nominal_prior_centered():
    """With the nominal N(0, I) prior and centred data, VP's prior mismatch is O(alpha_T^2)."""
    sde = VPSDE()
    gs = GaussianScore(torch.zeros(3), random_spd(3, 0.05, 2.0, seed=2), sde)
    x = gs.sample_marginal(32, sde.eps, generator=torch.Generator().manual_seed(0))
    lp = samplers.log_likelihood(gs, sde, x)
    ref = gs.marginal_logp(x, torch.full((32,), sde.eps, dtype=torch.float64))
    assert (lp - ref).abs().max() < 1e-3 * 3


def test_log_likelihood_hutchinson_unbiased():
    """Hutchinson (Rademacher) estimates of one x over 64 probe draws: mean within 5 SE of
    the exact-trace value."""
    sde = VPSDE()
    d = 6
    gs = _gauss(sde, d=d)
    x = gs.sample_marginal(1, sde.eps, generator=torch.Generator().manual_seed(3)).repeat(64, 1)
    exact = samplers.log_likelihood(gs, sde, x[:1], exact_trace=True)
    hutch = samplers.log_likelihood(gs, sde, x, exact_trace=False,
                                    generator=torch.Generator().manual_seed(4))
    se = hutch.std() / math.sqrt(64)
    assert hutch.std() > 0  # probes were really random
    assert (hutch.mean() - exact[0]).abs() <= 5 * se


def test_bits_per_dim_offsets():
    zero = torch.zeros(1)
    assert samplers.bits_per_dim(zero, 3072, 256, model_scale=2.0).item() == 7.0
    assert samplers.bits_per_dim(zero, 3072, 256).item() == 8.0
    nll = torch.tensor([3072 * math.log(2)])  # one bit per dim
    assert samplers.bits_per_dim(nll, 3072, 256).item() == pytest.approx(9.0)
    with pytest.raises(ValueError, match="num_dims"):
        samplers.bits_per_dim(zero, 0)
