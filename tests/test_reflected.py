"""Reflected process on a box: heat-kernel series, normalisation, scores, fold, exact draws."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from scorekit.reflected import (
    ReflectedSDE,
    fold,
    heat_kernel_logp,
    heat_kernel_score,
    n_images,
)
from scorekit.sde import make_sde

F64 = torch.float64


def _kernel_samples(n, tau, seed):
    """(y, y0): y0 uniform on [0, 1], y an exact draw of the reflected kernel from it."""
    g = torch.Generator().manual_seed(seed)
    y0 = torch.rand(n, generator=g, dtype=F64)
    return fold(y0 + math.sqrt(2 * tau) * torch.randn(n, generator=g, dtype=F64)), y0


def _kernel_cdf(y, y0, s):
    """CDF of the reflected kernel on [0, 1]: the folded N(y0, s^2) (closed form; the images
    beyond |k| = 3 s + 3 lie more than 12 s away)."""
    k_max = math.ceil(3 * s) + 3
    k = np.arange(-k_max, k_max + 1)[:, None]
    ncdf = stats.norm.cdf
    return sum(ncdf((y - 2 * k - c) / s) - ncdf((-2 * k - c) / s) for c in (y0, -y0)).sum(0)


@pytest.mark.parametrize("tau", [0.005, 0.01, 0.02, 0.05])
def test_images_and_cosine_series_agree_in_overlap(tau):
    """sigma * |score_images - score_cosine(40 terms)| <= 1e-6 (and log p within 1e-6) on 1e4
    kernel samples and on a 201^2 grid masked to p > 1e-6 (objectives §5.4)."""
    s = math.sqrt(2 * tau)
    y, y0 = _kernel_samples(10_000, tau, seed=0)
    grid = torch.linspace(0, 1, 201, dtype=F64)
    gy, gy0 = (v.flatten() for v in torch.meshgrid(grid, grid, indexing="ij"))
    keep = heat_kernel_logp(gy, gy0, s, "images") > math.log(1e-6)
    y, y0 = torch.cat([y, gy[keep]]), torch.cat([y0, gy0[keep]])
    img = heat_kernel_score(y, y0, s, "images")
    cos = heat_kernel_score(y, y0, s, "cosine", n_terms=40)
    assert (s * (img - cos)).abs().max() < 1e-6
    lp_img = heat_kernel_logp(y, y0, s, "images")
    lp_cos = heat_kernel_logp(y, y0, s, "cosine", n_terms=40)
    assert (lp_img - lp_cos).abs().max() < 1e-6


def test_auto_switch_matches_a_long_image_sum():
    """The default ("auto": |k| <= 3 images up to tau = 0.05, 10 cosine terms above) against 61
    images, across the switch and up to tau = 12.5 (sigma = 5)."""
    y, y0 = _kernel_samples(4000, 0.01, seed=1)
    for s in (0.01, 0.1, 0.3162, 0.3163, 0.5, 1.0, 5.0):
        ref = heat_kernel_score(y, y0, s, "images", k_max=30)
        assert (s * (heat_kernel_score(y, y0, s) - ref)).abs().max() < 1e-12
        ref_lp = heat_kernel_logp(y, y0, s, "images", k_max=30)
        assert (heat_kernel_logp(y, y0, s) - ref_lp).abs().max() < 1e-12
    assert n_images(0.05) == 3


@pytest.mark.parametrize("tau", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("method", ["images", "cosine"])
def test_kernel_integrates_to_one(tau, method):
    """Gauss–Legendre (200 nodes) on [0, 1] of p(y | y0) for y0 at a face, inside and near one."""
    nodes, weights = np.polynomial.legendre.leggauss(200)
    y = torch.tensor(0.5 * (nodes + 1), dtype=F64)[:, None]
    w = torch.tensor(0.5 * weights, dtype=F64)[:, None]
    y0 = torch.tensor([0.0, 0.03, 0.4, 0.97, 1.0], dtype=F64)[None, :]
    n_terms = 40 if method == "cosine" else None
    p = heat_kernel_logp(y, y0, math.sqrt(2 * tau), method, n_terms=n_terms).exp()
    torch.testing.assert_close((w * p).sum(0), torch.ones(5, dtype=F64), rtol=0, atol=1e-10)


def test_box_kernel_integrates_to_one():
    """The process's transition density on a 2-D box [-1, 2]^2 integrates to 1 (tensor-product
    Gauss–Legendre); covers the affine map and the -D log L term."""
    sde = ReflectedSDE(lower=-1.0, upper=2.0)
    nodes, weights = np.polynomial.legendre.leggauss(120)
    u = torch.tensor(-1 + 1.5 * (nodes + 1), dtype=F64)
    w = torch.tensor(1.5 * weights, dtype=F64)
    x = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    ww = (w[:, None] * w[None, :]).reshape(-1)
    for t in (0.3, 0.6, 0.9):
        x0 = torch.tensor([[-0.7, 1.9]], dtype=F64).expand_as(x)
        logp = sde.transition_logp(x, x0, torch.full((x.shape[0],), t, dtype=F64))
        assert abs(float((ww * logp.exp()).sum()) - 1) < 1e-9


@pytest.mark.parametrize("s", [0.05, 0.3163, 2.0])
def test_score_vanishes_at_the_faces(s):
    y0 = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0], dtype=F64)
    for face in (0.0, 1.0):
        score = heat_kernel_score(torch.full_like(y0, face), y0, s)
        assert score.abs().max() < 1e-10


def test_transition_score_is_the_gradient_of_the_log_kernel():
    """transition_score == autograd of transition_logp (and a central difference, h = 1e-5),
    float64, on a non-unit box, at times on both sides of the series switch."""
    sde = ReflectedSDE(lower=-2.0, upper=1.0)
    g = torch.Generator().manual_seed(2)
    x0 = -2 + 3 * torch.rand(64, 3, generator=g, dtype=F64)
    for t_val in (1e-4, 0.2, 0.5, 0.6, 1.0):  # tau from 5e-9 to 12.5 on the unit box
        t = torch.full((64,), t_val, dtype=F64)
        xt = sde.noise(x0, t, generator=g).requires_grad_(True)
        (grad,) = torch.autograd.grad(sde.transition_logp(xt, x0, t).sum(), xt)
        score = sde.transition_score(xt.detach(), x0, t)
        sigma = float(sde.sigma(t[:1]))
        torch.testing.assert_close(sigma * score, sigma * grad, rtol=1e-10, atol=1e-12)
        h = 1e-5
        inner = ((xt > -2 + h) & (xt < 1 - h)).all(1)
        xi, x0i, ti = xt.detach()[inner], x0[inner], t[inner]
        fd = torch.stack([(sde.transition_logp(xi + h * e, x0i, ti)
                           - sde.transition_logp(xi - h * e, x0i, ti)) / (2 * h)
                          for e in torch.eye(3, dtype=F64)], 1)
        scale = score[inner].abs().clamp_min(1 / sigma)
        assert ((fd - score[inner]).abs() / scale).max() < 1e-6


def test_float32_score_matches_float64():
    sde = ReflectedSDE()
    g = torch.Generator().manual_seed(3)
    x0 = torch.rand(256, 4, generator=g, dtype=F64)
    t = torch.full((256,), 0.47, dtype=F64)  # tau just above the official switch 0.01
    xt = sde.noise(x0, t, generator=g)
    ref = sde.transition_score(xt, x0, t)
    got = sde.transition_score(xt.float(), x0.float(), t.float())
    assert got.dtype == torch.float32
    sigma = float(sde.sigma(t[:1]))
    assert (sigma * (got.double() - ref)).abs().max() < 1e-4  # float32 inputs, float64 series


def test_fold_properties():
    g = torch.Generator().manual_seed(4)
    x = 20 * torch.randn(10_000, generator=g, dtype=F64)
    for lo, hi in ((0.0, 1.0), (-1.0, 2.5)):
        y = fold(x, lo, hi)
        assert ((y >= lo) & (y <= hi)).all()
        assert torch.equal(fold(y, lo, hi), y)  # idempotent
        inside = (x >= lo) & (x <= hi)
        assert torch.equal(y[inside], x[inside])  # the identity inside, bit for bit
    assert fold(torch.tensor([-0.25, 1.25, 2.25, -1.75])).tolist() == [0.25, 0.75, 0.25, 0.25]


@pytest.mark.parametrize("s", [0.05, 0.4, 2.0])
def test_folded_gaussian_has_the_kernel_law(s):
    """fold(y0 + s z), 1e5 draws, against the reflected kernel's closed-form CDF (KS p > 1e-3;
    rejects CDF deviations above ~0.007 with probability >= 0.99)."""
    g = torch.Generator().manual_seed(5)
    y0 = 0.1
    y = fold(y0 + s * torch.randn(100_000, generator=g, dtype=F64)).numpy()
    assert stats.kstest(y, lambda v: _kernel_cdf(v, y0, s)).pvalue > 1e-3


def test_kernel_cdf_is_the_integral_of_the_density():
    """The CDF used above against trapezoid integration of heat_kernel_logp (ties the KS test
    to the density the objective uses)."""
    y = torch.linspace(0, 1, 20001, dtype=F64)
    for s in (0.05, 0.4, 2.0):
        p = heat_kernel_logp(y, torch.tensor(0.1, dtype=F64), s).exp()
        cdf = torch.cumulative_trapezoid(p, y)
        np.testing.assert_allclose(cdf[::1000].numpy(), _kernel_cdf(y[1::1000].numpy(), 0.1, s),
                                   atol=1e-7)


def test_noise_is_an_exact_draw_of_the_transition():
    """sde.noise on the box [-1, 3]: in the box, and its law is the kernel's (KS, 2e4 draws)."""
    sde = ReflectedSDE(lower=-1.0, upper=3.0)
    g = torch.Generator().manual_seed(6)
    x0 = torch.full((20_000, 1), 2.6, dtype=F64)
    t = torch.full((20_000,), 0.55, dtype=F64)
    xt = sde.noise(x0, t, generator=g)
    assert sde.contains(xt).all()
    s = float(sde.sigma(t[:1])) / 4
    y = ((xt[:, 0] + 1) / 4).numpy()
    assert stats.kstest(y, lambda v: _kernel_cdf(v, 0.9, s)).pvalue > 1e-3


def test_prior_is_uniform_on_the_box():
    sde = ReflectedSDE(lower=-1.0, upper=3.0)
    z = sde.prior_sample((20_000, 2), generator=torch.Generator().manual_seed(7), dtype=F64)
    assert sde.contains(z).all()
    for i in range(2):
        assert stats.kstest(z[:, i].numpy(), stats.uniform(-1, 4).cdf).pvalue > 1e-3
    torch.testing.assert_close(sde.prior_logp(z[:3]), torch.full((3,), -2 * math.log(4),
                                                                 dtype=F64))
    assert sde.prior_error < 1e-40  # sigma_max = 5 L: tau_T = 12.5


def test_process_interface():
    sde = make_sde("reflected", lower=0.0, upper=2.0)
    assert isinstance(sde, ReflectedSDE) and sde.is_reflected and not sde.is_linear
    t = torch.tensor([sde.eps, 1.0], dtype=F64)
    alpha, sigma = sde.marginal(t)
    assert alpha.tolist() == [1.0, 1.0]
    # Defaults 0.01 L and 5 L, sigma(t) = sigma_min (sigma_max / sigma_min)^t.
    torch.testing.assert_close(sigma, torch.tensor([0.02 * 500**sde.eps, 10.0], dtype=F64))
    assert sde.drift(torch.ones(2, 3, dtype=F64), t).abs().max() == 0
    torch.testing.assert_close(sde.diffusion(t), sigma * math.sqrt(2 * math.log(500)))


def test_errors_name_the_bad_value():
    with pytest.raises(NotImplementedError, match="no closed-form"):
        ReflectedSDE(base="vp")
    with pytest.raises(ValueError, match="'vq'"):
        ReflectedSDE(base="vq")
    with pytest.raises(ValueError, match="lower=1.0, upper=0.0"):
        ReflectedSDE(lower=1.0, upper=0.0)
    with pytest.warns(UserWarning, match="differs from the uniform prior"):
        ReflectedSDE(sigma_max=0.5)
    sde = ReflectedSDE()
    x0 = torch.full((2, 3), 0.5)
    with pytest.raises(ValueError, match=r"x0\[1\] has elements outside the box"):
        sde.transition_score(x0, torch.tensor([[0.5] * 3, [0.5, 1.5, 0.5]]), 0.5)
    with pytest.raises(ValueError, match="t=2"):
        sde.transition_score(x0, x0, 2.0)
    with pytest.raises(ValueError, match="share a shape"):
        sde.transition_score(x0, x0[:1], 0.5)
    with pytest.raises(ValueError, match="'legendre'"):
        heat_kernel_score(x0, x0, 0.1, method="legendre")
