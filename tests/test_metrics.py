"""Metrics against closed forms: Fréchet distance of Gaussians, sliced W2 of shifts, RBF MMD.

Tolerances: 4 standard errors, either from replicate draws (the mean of R i.i.d. estimates) or
from a delta-method variance derived below; deterministic identities to float64 round-off.
"""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.spatial.distance
import torch
from _gauss import random_spd

from scorekit.metrics import (
    frechet_distance,
    gaussian_frechet,
    mmd,
    mode_metrics,
    sliced_wasserstein,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _one_thread():
    """The replicate loops run thousands of tiny ops: intra-op threads only add synchronisation,
    which stalls badly when the CPU is shared."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _normal(n: int, mean: torch.Tensor, cov: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    chol = torch.linalg.cholesky(cov)
    return mean + torch.randn(n, mean.shape[0], generator=gen, dtype=F64) @ chol.T


def _sqrtm(c: torch.Tensor) -> torch.Tensor:
    lam, u = torch.linalg.eigh(c)
    return (u * lam.sqrt()) @ u.T


# ---------------------------------------------------------------- Fréchet distance


def test_gaussian_frechet_matches_scipy_sqrtm():
    d = 5
    s1, s2 = random_spd(d, 0.1, 4.0, seed=1), random_spd(d, 0.3, 2.0, seed=2)
    mu1 = torch.randn(d, generator=_gen(3), dtype=F64)
    mu2 = torch.randn(d, generator=_gen(4), dtype=F64)
    a, b = s1.numpy(), s2.numpy()
    r1 = scipy.linalg.sqrtm(a)
    cross = scipy.linalg.sqrtm(r1 @ b @ r1)
    ref = float(((mu1 - mu2) ** 2).sum()) + np.trace(a + b - 2 * cross).real
    assert gaussian_frechet(mu1, s1, mu2, s2) == pytest.approx(ref, abs=1e-8)


def test_gaussian_frechet_commuting_closed_form():
    # Diagonal covariances commute: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2,
    # including a singular (PSD) one: diag(1, 0) vs diag(4, 1) gives 1 + 1 = 2.
    mu1, mu2 = torch.tensor([0.0, 1.0], dtype=F64), torch.tensor([3.0, -1.0], dtype=F64)
    c1, c2 = torch.diag(torch.tensor([1.0, 0.0], dtype=F64)), torch.diag(
        torch.tensor([4.0, 1.0], dtype=F64))
    assert gaussian_frechet(mu1, c1, mu2, c2) == pytest.approx(13.0 + 2.0, abs=1e-12)


def test_gaussian_frechet_both_singular_matches_scipy_sqrtm():
    """Fewer samples than features on both sides (no Cholesky factor): the symmetric square
    root path, against scipy's sqrtm formula."""
    a = torch.randn(4, 6, generator=_gen(8), dtype=F64)
    b = torch.randn(5, 6, generator=_gen(9), dtype=F64)
    c1, c2 = torch.cov(a.T), torch.cov(b.T)
    r1 = scipy.linalg.sqrtm(c1.numpy())
    cross = np.trace(scipy.linalg.sqrtm(r1 @ c2.numpy() @ r1)).real
    ref = float((a.mean(0) - b.mean(0)).pow(2).sum() + c1.trace() + c2.trace()) - 2 * cross
    # sqrtm of a singular matrix keeps only about half the digits (errors ~ sqrt(eps) ~ 1e-8
    # per unit eigenvalue), hence 1e-6 here and not the 1e-8 of the full-rank test.
    assert gaussian_frechet(a.mean(0), c1, b.mean(0), c2) == pytest.approx(ref, rel=1e-6)


def test_gaussian_frechet_zero_for_equal_and_symmetric():
    s1, s2 = random_spd(4, 0.05, 5.0, seed=5), random_spd(4, 0.2, 1.0, seed=6)
    mu = torch.ones(4, dtype=F64)
    assert abs(gaussian_frechet(mu, s1, mu, s1)) < 1e-10
    assert gaussian_frechet(mu, s1, 2 * mu, s2) == pytest.approx(
        gaussian_frechet(2 * mu, s2, mu, s1), abs=1e-10)


def test_frechet_distance_of_a_translate_is_squared_shift():
    # Translating a sample leaves its covariance unchanged, so FD = |c|^2 exactly.
    a = torch.randn(500, 3, generator=_gen(0), dtype=F64)
    c = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    assert frechet_distance(a, a + c) == pytest.approx(float(c @ c), abs=1e-9)


def test_frechet_distance_bias_for_equal_covariances():
    """E[FD_hat] for two independent n-samples of N(0, S) (FD = 0), to O(n^-2): the mean
    term is exactly 2 tr S / n; the unbiased covariances give, by the
    Bures metric at S (eigenvalues lam), (1/(n-1)) [tr S + sum_{i != j} lam_i lam_j /
    (lam_i + lam_j)]. Checked on the mean of R replicates to 4 SE."""
    d, n, reps = 4, 1000, 100
    lam = torch.tensor([0.5, 1.0, 1.5, 2.0], dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(0), dtype=F64))
    cov = q @ torch.diag(lam) @ q.T
    mu = torch.zeros(d, dtype=F64)
    gen = _gen(1)
    fd = torch.tensor([frechet_distance(_normal(n, mu, cov, gen), _normal(n, mu, cov, gen))
                       for _ in range(reps)])
    pair = lam[:, None] * lam[None, :] / (lam[:, None] + lam[None, :])
    cov_bias = (lam.sum() + pair.sum() - pair.diagonal().sum()) / (n - 1)
    expected = float(2 * lam.sum() / n + cov_bias)
    se = float(fd.std() / math.sqrt(reps))
    assert abs(float(fd.mean()) - expected) <= 4 * se, (float(fd.mean()), expected, se)
    assert cov_bias > 6 * se  # leaving out the covariance bias would fail by >= 2 SE


def test_frechet_distance_converges_to_closed_form():
    """One estimate at n = 20000 with different means and covariances. Delta method: with
    T = S1^-1/2 (S1^1/2 S2 S1^1/2)^1/2 S1^-1/2 (the OT map), grad_S1 FD = I - T,
    grad_S2 FD = I - T^-1, Var tr(G S_hat) = 2 tr(G S G S) / (n - 1), Var of the mean term
    4 dmu' (S1 + S2) dmu / n. Allowed: 4 SD plus the bias, exactly (tr S1 + tr S2) / n for the
    means, and for the covariances the equal-covariance bound d(d+1)/2 lam_max / (n - 1) per
    side (second order, ~2% of 4 SD here)."""
    d, n = 3, 20000
    s1, s2 = random_spd(d, 0.3, 2.0, seed=1), random_spd(d, 0.5, 3.0, seed=2)
    mu1, mu2 = torch.zeros(d, dtype=F64), torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    exact = gaussian_frechet(mu1, s1, mu2, s2)
    gen = _gen(7)
    est = frechet_distance(_normal(n, mu1, s1, gen), _normal(n, mu2, s2, gen))
    r1 = _sqrtm(s1)
    r1_inv = torch.linalg.inv(r1)
    t_map = r1_inv @ _sqrtm(r1 @ s2 @ r1) @ r1_inv
    eye = torch.eye(d, dtype=F64)
    g1, g2 = eye - t_map, eye - torch.linalg.inv(t_map)
    dmu = mu1 - mu2
    var = (4 * dmu @ (s1 + s2) @ dmu / n + 2 * torch.trace(g1 @ s1 @ g1 @ s1) / (n - 1)
           + 2 * torch.trace(g2 @ s2 @ g2 @ s2) / (n - 1))
    lam_max = torch.linalg.eigvalsh(s1)[-1] + torch.linalg.eigvalsh(s2)[-1]
    bias = (s1.trace() + s2.trace()) / n + d * (d + 1) / 2 * lam_max / (n - 1)
    assert abs(est - exact) <= float(4 * var.sqrt() + bias), (est, exact)


def test_frechet_distance_one_feature_and_images():
    # 1-D: FD = (m1 - m2)^2 + (s1 - s2)^2 with the unbiased sample std.
    a = torch.randn(300, 1, generator=_gen(0), dtype=F64)
    b = 2.0 + 3.0 * torch.randn(300, 1, generator=_gen(1), dtype=F64)
    ref = float((a.mean() - b.mean()) ** 2 + (a.std() - b.std()) ** 2)
    assert frechet_distance(a, b) == pytest.approx(ref, abs=1e-10)
    imgs = torch.randn(50, 1, 2, 2, generator=_gen(2), dtype=F64)
    assert frechet_distance(imgs, imgs + 1.0) == pytest.approx(4.0, abs=1e-9)


def test_frechet_distance_rejects_bad_shapes():
    with pytest.raises(ValueError, match="3 vs 2"):
        frechet_distance(torch.zeros(10, 3), torch.zeros(10, 2))
    with pytest.raises(ValueError, match="feats_a"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(10, 3))


# ---------------------------------------------------------------- sliced Wasserstein


def _default_dirs(d: int, n_proj: int) -> torch.Tensor:
    """The default directions, as the code draws them: normalised N(0, I) columns, seed 0."""
    dirs = torch.randn(d, n_proj, generator=_gen(0), dtype=F64)
    return dirs / dirs.norm(dim=0, keepdim=True)


def test_sliced_wasserstein_zero_for_same_set():
    a = torch.randn(400, 3, generator=_gen(0), dtype=F64)
    perm = torch.randperm(400, generator=_gen(1))
    assert float(sliced_wasserstein(a, a)) == 0.0
    assert float(sliced_wasserstein(a, a[perm])) == 0.0


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_wasserstein_one_dim_shift_is_exact(p):
    # In 1-D every direction is +-1, so each projected shift is |c| and SW_p = |c|.
    a = torch.randn(500, 1, generator=_gen(0), dtype=F64)
    assert float(sliced_wasserstein(a, a - 0.7, p=p)) == pytest.approx(0.7, abs=1e-12)


def test_sliced_wasserstein_shift_matches_projection_factor():
    """A shift c projects to the constant c.theta, so SW_2^2 = mean_theta (c.theta)^2 over the
    drawn directions exactly; for theta uniform on S^(d-1), (c.theta)^2 / |c|^2 ~ Beta(1/2,
    (d-1)/2): mean 1/d, variance 2(d-1) / (d^2 (d+2)), so 4 SE over n_proj directions."""
    d, n_proj = 4, 256
    a = torch.randn(300, d, generator=_gen(0), dtype=F64)
    c = torch.tensor([1.0, -2.0, 0.5, 0.0], dtype=F64)
    sw = float(sliced_wasserstein(a, a + c, n_proj=n_proj))
    exact = float((c @ _default_dirs(d, n_proj)).pow(2).mean().sqrt())
    assert sw == pytest.approx(exact, abs=1e-12)
    c2 = float(c @ c)
    se = c2 * math.sqrt(2 * (d - 1) / (d**2 * (d + 2)) / n_proj)
    assert abs(sw**2 - c2 / d) <= 4 * se


def test_sliced_wasserstein_symmetric():
    a = torch.randn(300, 2, generator=_gen(0), dtype=F64)
    b = 1.0 + torch.randn(450, 2, generator=_gen(1), dtype=F64)
    assert float(sliced_wasserstein(a, b)) == pytest.approx(float(sliced_wasserstein(b, a)),
                                                            abs=1e-14)
    assert float(sliced_wasserstein(a, b[:300])) == pytest.approx(
        float(sliced_wasserstein(b[:300], a)), abs=1e-14)


def test_sliced_wasserstein_unequal_sizes_shift():
    """b = a repeated twice, shifted by c (1-D). Interpolated quantiles of a sit within a
    quarter gap g_k of the sorted values, so SW(a, aa) <= sqrt(sum_k g_k^2 / (16 N)), and by
    Minkowski |SW(a, aa + c) - |c|| <= SW(a, aa)."""
    a = torch.randn(1000, 1, generator=_gen(0), dtype=F64)
    gaps = torch.sort(a[:, 0])[0].diff()
    bound = float((gaps.pow(2).sum() / (16 * a.shape[0])).sqrt())
    self_sw = float(sliced_wasserstein(a, a.repeat(2, 1)))
    assert self_sw <= bound + 1e-15
    assert abs(float(sliced_wasserstein(a, a.repeat(2, 1) + 0.4)) - 0.4) <= self_sw + 1e-12


def test_sliced_wasserstein_detects_shift():
    # Sorted projections of b + c are those of b plus c.theta, so by Minkowski
    # SW(a, b + c) lies within SW(a, b) of the exact shift value S_c.
    a = torch.randn(2000, 2, generator=_gen(0), dtype=F64)
    b = torch.randn(2000, 2, generator=_gen(1), dtype=F64)
    c = torch.tensor([0.5, 0.0], dtype=F64)
    s_c = float((c @ _default_dirs(2, 256)).pow(2).mean().sqrt())
    null = float(sliced_wasserstein(a, b))
    shifted = float(sliced_wasserstein(a, b + c))
    assert abs(shifted - s_c) <= null + 1e-12
    assert null < s_c / 4 < shifted / 3


def test_sliced_wasserstein_deterministic_and_generator():
    a = torch.randn(200, 3, generator=_gen(0), dtype=F64)
    b = a * torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    assert float(sliced_wasserstein(a, b)) == float(sliced_wasserstein(a, b))
    assert float(sliced_wasserstein(a, b, generator=_gen(0))) == float(sliced_wasserstein(a, b))
    assert float(sliced_wasserstein(a, b, generator=_gen(5))) != float(sliced_wasserstein(a, b))


def test_sliced_wasserstein_rejects_bad_input():
    with pytest.raises(ValueError, match="3 features"):
        sliced_wasserstein(torch.zeros(5, 3), torch.zeros(5, 2))
    with pytest.raises(ValueError, match="n_proj"):
        sliced_wasserstein(torch.zeros(5, 3), torch.zeros(5, 3), n_proj=0)


# ---------------------------------------------------------------- MMD


def _rbf_mmd2(h: float, d: int, s1: float, s2: float, dmu: float) -> float:
    """Population MMD^2 between N(mu1, s1^2 I) and N(mu2, s2^2 I) for exp(-r^2 / (2 h^2)):
    E k(x, y) = (h^2 / (h^2 + v))^(d/2) exp(-|dmu|^2 / (2 (h^2 + v))), v the variance of x - y."""
    def ek(v: float, m2: float) -> float:
        return (h**2 / (h**2 + v)) ** (d / 2) * math.exp(-m2 / (2 * (h**2 + v)))

    return ek(2 * s1**2, 0.0) + ek(2 * s2**2, 0.0) - 2 * ek(s1**2 + s2**2, dmu**2)


def test_mmd_unbiased_under_null():
    """Same law: the U-statistic has mean 0 (so it is sometimes negative); the biased
    V-statistic would sit at 2 (1 - E k(x, x')) / n above it, far outside 4 SE."""
    n, reps, h = 200, 50, 1.0
    gen = _gen(0)
    vals = torch.tensor([mmd(torch.randn(n, 2, generator=gen, dtype=F64),
                             torch.randn(n, 2, generator=gen, dtype=F64), bandwidth=h)
                         for _ in range(reps)])
    se = float(vals.std() / math.sqrt(reps))
    assert abs(float(vals.mean())) <= 4 * se
    assert (vals < 0).any()
    v_bias = 2 * (1 - (h**2 / (h**2 + 2)) ** (2 / 2)) / n
    assert 8 * se < v_bias


def test_mmd_matches_population_value_for_different_laws():
    n, reps, h, s2, shift = 200, 40, 1.0, 1.3, 0.5
    gen = _gen(1)
    c = torch.tensor([shift, 0.0], dtype=F64)
    vals = torch.tensor([mmd(torch.randn(n, 2, generator=gen, dtype=F64),
                             c + s2 * torch.randn(n, 2, generator=gen, dtype=F64), bandwidth=h)
                         for _ in range(reps)])
    exact = _rbf_mmd2(h, 2, 1.0, s2, shift)
    se = float(vals.std() / math.sqrt(reps))
    assert abs(float(vals.mean()) - exact) <= 4 * se, (float(vals.mean()), exact, se)
    assert float(vals.mean()) > 10 * se  # clearly positive


def test_mmd_chunking_and_symmetry():
    a = torch.randn(100, 3, generator=_gen(0), dtype=F64)
    b = 0.5 + torch.randn(70, 3, generator=_gen(1), dtype=F64)
    ref = mmd(a, b, bandwidth=1.5)
    assert mmd(a, b, bandwidth=1.5, chunk=7) == pytest.approx(ref, abs=1e-12)
    assert mmd(b, a, bandwidth=1.5) == pytest.approx(ref, abs=1e-12)


def test_mmd_median_heuristic():
    # The bandwidth is the median pooled distance: MMD is then scale-free, and equals the
    # fixed-bandwidth value at that median (to the ~1e-8 relative error of matmul-based cdist).
    a = torch.randn(150, 2, generator=_gen(0), dtype=F64)
    b = 0.3 + torch.randn(120, 2, generator=_gen(1), dtype=F64)
    dists = np.sort(scipy.spatial.distance.pdist(torch.cat([a, b]).numpy()))
    median = float(dists[(len(dists) - 1) // 2])
    assert mmd(a, b) == pytest.approx(mmd(a, b, bandwidth=median), rel=1e-6)
    assert mmd(3.0 * a, 3.0 * b) == pytest.approx(mmd(a, b), rel=1e-9)


def test_mmd_rejects_degenerate_bandwidth():
    a = torch.zeros(10, 2)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(a, a)
    with pytest.raises(ValueError, match="bandwidth"):
        mmd(torch.randn(10, 2), torch.randn(10, 2), bandwidth=0.0)


# --- mode_metrics ----------------------------------------------------------------------------
def _ring():
    from scorekit.data import make_dataset
    from scorekit.sde import VPSDE

    ds = make_dataset("gmm", n_train=8000, n_test=8000, seed=3)
    return ds, ds.exact_score(VPSDE())


def test_mode_metrics_exact_samples():
    """Exact samples: TV ~ 0.5 sum sqrt(2 w (1-w) / (pi n)) = 0.012 at n = 8000 (< 0.03 is
    > 4 SE away), std ratios 1 within 4 SE (per mode ~1000 points: SE of sqrt(tr cov_hat/tr cov)
    ~ 1/sqrt(4 * 1000) ~ 0.016), off-mode fraction ~ Binomial(8000, 0.001)/8000 < 0.0025."""
    ds, gmm = _ring()
    m = mode_metrics(ds.test, gmm)
    assert m["mode_weight_tv"] < 0.03
    assert all(abs(r - 1) < 4 * 0.016 for r in m["mode_std_ratio"])
    assert max(m["mode_mean_error"]) < 4 * (1 / 1000) ** 0.5 * 2 ** 0.5
    assert m["off_mode_fraction"] < 0.0025


def test_mode_metrics_detect_failures():
    ds, gmm = _ring()
    x = ds.test.double()
    means = gmm.means
    lab = ((x[:, None, :] - means) ** 2).sum(-1).argmin(1)
    blurred = means[lab] + 1.5 * (x - means[lab])  # every mode 1.5x wider
    mb = mode_metrics(blurred, gmm)
    assert abs(mb["mode_std_ratio_mean"] - 1.5) < 0.05
    # P(chi2_2 > 13.8 / 2.25) = exp(-3.07) = 0.046, SE 0.0023 at n = 8000
    assert mb["off_mode_fraction"] > 0.035
    dropped = x[lab != 0]  # one of 8 modes missing: TV = 1/8 exactly in expectation
    assert abs(mode_metrics(dropped, gmm)["mode_weight_tv"] - 0.125) < 0.03
