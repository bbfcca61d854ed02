"""Euler–Maruyama and predictor–corrector against exact laws (samplers.md §1.6).

The chains' coefficients, time grid and marginals are the reference formulas of `_ref`, never
the samplers' own tables: a wrong coefficient in the code cannot move its own target."""

import pytest
import torch
from _gauss import assert_gaussian_law, chain_law, marginal_moments, random_spd, tweedie_affine
from _ref import ancestral_rows, em_rows, uniform_grid

import samplers
from samplers.steps import langevin_move
from scorekit.scores import GaussianScore
from scorekit.sde import VESDE, VPSDE

D = 4
N_SAMPLES = 20000


def _gauss(sde):
    mean = torch.tensor([0.5, -1.0, 0.0, 2.0], dtype=torch.float64)
    return GaussianScore(mean, random_spd(D, 0.05, 2.0, seed=1), sde)


def _run(score, sde, method, steps, seed=0, **opts):
    g = torch.Generator().manual_seed(seed)
    return samplers.sample(score, sde, (N_SAMPLES, D), method=method, steps=steps, generator=g,
                           dtype=torch.float64, **opts)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_em_matches_exact_chain_law(sde):
    """EM output (no denoising) has exactly the law of the discretised affine chain."""
    gs, steps = _gauss(sde), 200
    res = _run(gs, sde, "em", steps, denoise="none")
    grid = uniform_grid(sde, steps)
    m, c = chain_law(gs, sde, grid, em_rows(sde, grid))
    assert_gaussian_law(res.x, m, c)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_ancestral_predictor_matches_chain_law(sde):
    """PC with the reverse-diffusion predictor and no corrector: exact affine chain law."""
    gs, steps = _gauss(sde), 200
    res = _run(gs, sde, "pc", steps, corrector="none", n_corrector=0, denoise="none")
    grid = uniform_grid(sde, steps)
    m, c = chain_law(gs, sde, grid, ancestral_rows(sde, grid))
    assert_gaussian_law(res.x, m, c)


def test_chain_law_detects_wrong_coefficients():
    """The chain-law check has power: a chain with g^2 off by 5% is rejected at this n."""
    sde = VPSDE()
    gs, steps = _gauss(sde), 200
    grid = uniform_grid(sde, steps)
    good = em_rows(sde, grid)
    bad = good.clone()
    bad[:, 1] *= 1.05
    x = _run(gs, sde, "em", steps, denoise="none").x
    m, c = chain_law(gs, sde, grid, bad)
    with pytest.raises(AssertionError):
        assert_gaussian_law(x, m, c)


def test_em_chain_converges_first_order():
    """Covariance error of the EM chain vs p_eps halves when steps double (weak order 1)."""
    sde = VPSDE()
    gs = _gauss(sde)
    _, c_eps = marginal_moments(gs, sde.eps)
    errs = []
    for steps in (100, 200, 400):
        grid = uniform_grid(sde, steps)
        _, c = chain_law(gs, sde, grid, em_rows(sde, grid))
        errs.append(torch.linalg.matrix_norm(c - c_eps).item())
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(1.6 <= r <= 2.5 for r in ratios), (errs, ratios)


def test_em_tweedie_output_law():
    """Tweedie-denoised EM output is the affine image of the chain law."""
    sde = VPSDE()
    gs, steps = _gauss(sde), 200
    res = _run(gs, sde, "em", steps, denoise="tweedie")
    grid = uniform_grid(sde, steps)
    m, c = chain_law(gs, sde, grid, em_rows(sde, grid))
    a, b = tweedie_affine(gs, sde, sde.eps)
    assert_gaussian_law(res.x, a @ m + b, a @ c @ a.T)


def test_em_denoise_mean_drops_last_noise():
    """denoise='mean' equals the noisy output minus the last step's noise term."""
    sde = VPSDE()
    gs = _gauss(sde)
    x_none = _run(gs, sde, "em", 10, seed=3, denoise="none").x
    x_mean = _run(gs, sde, "em", 10, seed=3, denoise="mean").x
    grid = uniform_grid(sde, 10)
    k3 = em_rows(sde, grid)[-1, 2].item()
    resid = (x_none - x_mean) / k3  # must be the last standard-normal draw
    assert abs(resid.mean().item()) < 5 / (resid.numel() ** 0.5)
    assert abs(resid.var().item() - 1) < 5 * (2 / resid.numel()) ** 0.5


def test_pc_langevin_ve_gauss():
    """VE PC (reverse diffusion + Langevin, snr 0.16) lands on p_eps per eigendirection.

    PC is not exact at 200 steps: the tolerance on the variance ratio is twice the bias of the
    predictor-only chain (its exact law, from the reference ancestral step) plus 5 SE; means
    must agree within 5 SE.
    """
    sde, steps = VESDE(), 200
    gs = _gauss(sde)
    res = _run(gs, sde, "pc", steps, denoise="none")
    m, c = marginal_moments(gs, sde.eps)
    grid = uniform_grid(sde, steps)
    _, c_chain = chain_law(gs, sde, grid, ancestral_rows(sde, grid))
    lam, u = torch.linalg.eigh(c)
    bias = ((u.T @ c_chain @ u).diagonal() / lam - 1).abs().max().item()
    y = (res.x.double() - m) @ u
    n = y.shape[0]
    assert (y.mean(0).abs() <= 5 * (lam / n).sqrt()).all()
    tol = 2 * bias + 5 * (2 / n) ** 0.5
    assert ((y.var(0) / lam - 1).abs() <= tol).all(), (y.var(0) / lam, tol)


def test_pc_per_sample_norm_is_batch_independent():
    """per_sample Langevin steps do not depend on the other rows; batch_mean ones do."""
    gs = _gauss(VESDE())
    x = torch.randn(64, D, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    t = torch.full((64,), 0.5, dtype=torch.float64)
    out = {}
    for n in (16, 64):
        for mode in ("per_sample", "batch_mean"):
            g = torch.Generator().manual_seed(7)  # first rows of z agree across batch sizes
            z = torch.randn(x[:n].shape, generator=g, dtype=x.dtype)
            out[n, mode] = langevin_move(x[:n].clone(), gs(x[:n], t[:n]), z, 1.0, 0.16,
                                         mode)[:4]
    assert torch.allclose(out[16, "per_sample"], out[64, "per_sample"], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out[16, "batch_mean"], out[64, "batch_mean"])


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("method,rows,opts", [
    ("em", em_rows, {}),
    ("pc", ancestral_rows, {"corrector": "none", "n_corrector": 0}),
], ids=["em", "pc"])
def test_sde_samplers_land_on_p_eps(sde, method, rows, opts):
    """EM and the reverse-diffusion predictor at 500 steps sample p_eps itself (not just their
    chain): per eigendirection the variance ratio is within the chain's exact discretisation
    bias (its law from the reference rows vs p_eps, both from the formulas) + 5 SE."""
    gs, steps = _gauss(sde), 500
    res = _run(gs, sde, method, steps, denoise="none", **opts)
    m_eps, c_eps = marginal_moments(gs, sde.eps)
    _, c_chain = chain_law(gs, sde, uniform_grid(sde, steps), rows(sde, uniform_grid(sde, steps)))
    lam, u = torch.linalg.eigh(c_eps)
    bias = ((u.T @ c_chain @ u).diagonal() / lam - 1).abs()
    y = (res.x.double() - m_eps) @ u
    n = y.shape[0]
    assert (y.mean(0).abs() <= 5 * (lam / n).sqrt()).all()
    assert ((y.var(0) / lam - 1).abs() <= bias + 5 * (2 / (n - 1)) ** 0.5).all(), \
        (y.var(0) / lam, bias)
    assert bias.max() < 0.05  # the chain itself is close to p_eps at this step count
