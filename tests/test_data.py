"""Data sets: shapes, seeded splits, and each toy law checked against its closed form.

Tolerances: 4 standard errors of the sample size (a proportion: sqrt(w (1 - w) / n); a mean:
sqrt(var / n); a Gaussian covariance entry: sqrt((C_ii C_jj + C_ij^2) / n)); exact geometry
(noise = 0) to float64 round-off.
"""

import math
from collections import Counter

import pytest
import torch

from scorekit.data import (
    checkerboard,
    digits,
    gmm,
    gmm_params,
    make_dataset,
    moons,
    swissroll,
)
from scorekit.data.synthetic import gmm_with_labels
from scorekit.scores import GMMScore
from scorekit.sde import VPSDE

F64 = torch.float64
POINTS = {"gmm": gmm, "moons": moons, "swissroll": swissroll, "checkerboard": checkerboard}
GMM_PARAMS = [{"layout": "three"},
              {"n_modes": 5, "radius": 3.0, "std": 0.3, "weights": [1.0, 2.0, 3.0, 4.0, 5.0]}]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _assert_mixture_moments(x, labels, weights, means, covs, n_se: float = 4.0) -> None:
    """Per component k: weight, mean and covariance of the draws labelled k, to n_se SE."""
    n = x.shape[0]
    for k in range(weights.shape[0]):
        xs = x[labels == k].double()
        nk, w, c = xs.shape[0], float(weights[k]), covs[k]
        assert abs(nk / n - w) <= n_se * math.sqrt(w * (1 - w) / n), (k, nk / n, w)
        se_mean = (c.diagonal() / nk).sqrt()
        assert ((xs.mean(0) - means[k]).abs() <= n_se * se_mean).all(), (k, xs.mean(0))
        se_cov = ((c.diagonal()[:, None] * c.diagonal()[None, :] + c**2) / nk).sqrt()
        assert ((torch.cov(xs.T) - c).abs() <= n_se * se_cov).all(), (k, torch.cov(xs.T))


# ---------------------------------------------------------------- make_dataset


@pytest.mark.parametrize("name", sorted(POINTS))
def test_points_dataset_shapes(name):
    ds = make_dataset(name, n_train=300, n_test=100, seed=0)
    assert ds.train.shape == (300, 2) and ds.test.shape == (100, 2)
    assert ds.train.dtype == ds.test.dtype == torch.float32
    assert (ds.kind, ds.sample_shape, ds.dim) == ("points", (2,), 2)
    assert torch.isfinite(ds.train).all() and torch.isfinite(ds.test).all()


@pytest.mark.parametrize("name", sorted(POINTS))
def test_points_split_is_one_seeded_draw(name):
    # train and test are consecutive, disjoint slices of one draw of n_train + n_test points.
    ds = make_dataset(name, n_train=300, n_test=100, seed=3)
    x = POINTS[name](400, generator=_gen(3))
    assert torch.equal(ds.train, x[:300]) and torch.equal(ds.test, x[300:])


@pytest.mark.parametrize("name", [*sorted(POINTS), "digits"])
def test_seed_determines_data(name):
    a, b = make_dataset(name, n_test=50, seed=1), make_dataset(name, n_test=50, seed=1)
    c = make_dataset(name, n_test=50, seed=2)
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.test, c.test)


def test_digits_images_are_sklearn_rescaled():
    from sklearn.datasets import load_digits

    x = digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32
    ref = torch.as_tensor(load_digits().images, dtype=torch.float64) / 8 - 1  # x / 16 * 2 - 1
    assert torch.equal(x[:, 0].double(), ref)
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0


def test_digits_range_option():
    """data.low / data.high map the pixels affinely (e.g. to [0, 1] for a reflected box)."""
    unit = make_dataset("digits", seed=0, low=0.0, high=1.0)
    ref = make_dataset("digits", seed=0)
    assert unit.value_range == (0.0, 1.0) and ref.value_range == (-1.0, 1.0)
    torch.testing.assert_close(unit.train, (ref.train + 1) / 2)
    assert float(unit.train.min()) == 0.0 and float(unit.train.max()) == 1.0
    with pytest.raises(ValueError, match="low=1.0, high=0.0"):
        make_dataset("digits", low=1.0, high=0.0)


def test_digits_split_partitions_the_set():
    ds = make_dataset("digits", seed=0)
    assert (ds.kind, ds.sample_shape, ds.dim) == ("image", (1, 8, 8), 64)
    assert ds.test.shape == (1797 // 4, 1, 8, 8) and ds.train.shape == (1797 - 449, 1, 8, 8)

    def rows(x):
        return Counter(tuple(r) for r in x.flatten(1).tolist())

    assert not rows(ds.train) & rows(ds.test)
    assert rows(ds.train) + rows(ds.test) == rows(digits())


def test_digits_sizes_are_capped():
    ds = make_dataset("digits", n_train=100, n_test=1000)
    assert ds.train.shape[0] == 100 and ds.test.shape[0] == 1797 // 4


@pytest.mark.parametrize("kwargs,word", [({"name": "mnist"}, "'mnist'"),
                                         ({"name": "moons", "sigma": 0.1}, "'sigma'"),
                                         ({"name": "digits", "noise": 0.1}, "'noise'")])
def test_make_dataset_rejects_unknown_names(kwargs, word):
    with pytest.raises(ValueError, match=word):
        make_dataset(**kwargs)


@pytest.mark.parametrize("key,val", [("n_train", 0), ("n_test", -1), ("n_train", True),
                                     ("n_test", 2.5)])
def test_make_dataset_rejects_bad_sizes(key, val):
    with pytest.raises(ValueError, match=key):
        make_dataset("moons", **{key: val})


@pytest.mark.parametrize("params,word", [
    ({"layout": "grid"}, "'grid'"), ({"n_modes": 0}, "n_modes"), ({"std": 0.0}, "std"),
    ({"weights": [1.0, -1.0, 1.0], "layout": "three"}, "weights"),
    ({"weights": [1.0, 1.0]}, "weights")])
def test_gmm_rejects_bad_params(params, word):
    with pytest.raises(ValueError, match=word):
        make_dataset("gmm", **params)


def test_checkerboard_rejects_too_few_squares():
    with pytest.raises(ValueError, match="squares"):
        make_dataset("checkerboard", squares=1)


# ---------------------------------------------------------------- mixtures


def test_gmm_ring_params_geometry():
    w, means, covs = gmm_params(n_modes=6, radius=3.0, std=0.2, weights=[1, 2, 3, 1, 2, 3])
    assert w.dtype == means.dtype == covs.dtype == F64
    assert torch.allclose(w, torch.tensor([1, 2, 3, 1, 2, 3], dtype=F64) / 12, atol=1e-15)
    ang = torch.arange(6, dtype=F64) * math.pi / 3
    assert torch.allclose(means, 3.0 * torch.stack([ang.cos(), ang.sin()], 1), atol=1e-14)
    assert torch.allclose(covs, 0.04 * torch.eye(2, dtype=F64).expand(6, 2, 2), atol=1e-15)


@pytest.mark.parametrize("params", GMM_PARAMS, ids=["three", "ring5"])
def test_gmm_draws_match_params(params):
    x, labels = gmm_with_labels(40000, _gen(0), **params)
    _assert_mixture_moments(x, labels, *gmm_params(**params))
    assert torch.equal(gmm(40000, _gen(0), **params), x.float())


@pytest.mark.parametrize("params", GMM_PARAMS, ids=["three", "ring5"])
def test_exact_score_is_the_datasets_mixture(params):
    ds = make_dataset("gmm", n_train=20000, n_test=10, seed=0, **params)
    sde = VPSDE()
    score = ds.exact_score(sde)
    w, means, covs = gmm_params(**params)
    assert isinstance(score, GMMScore) and score.sde is sde
    assert torch.allclose(score.weights, w, atol=1e-15) and torch.equal(score.means, means)
    assert torch.equal(score.covs, covs)
    x, labels = score.sample_data(40000, _gen(1), return_labels=True)
    _assert_mixture_moments(x, labels, w, means, covs)
    # The training set has the mixture's mean: sum_k w_k mu_k, variance sum_k w_k (C_k +
    # mu_k mu_k') - m m'.
    m = w @ means
    var = (w[:, None] * (covs.diagonal(dim1=1, dim2=2) + means**2)).sum(0) - m**2
    err = (ds.train.double().mean(0) - m).abs()
    assert (err <= 4 * (var / ds.train.shape[0]).sqrt()).all(), err


def test_exact_score_only_for_mixtures():
    with pytest.raises(ValueError, match="'moons'"):
        make_dataset("moons", n_train=10, n_test=10).exact_score(VPSDE())


# ---------------------------------------------------------------- 2-D shapes


@pytest.mark.parametrize("squares", [4, 5])
def test_checkerboard_uniform_on_dark_squares(squares):
    n = 20000
    x = checkerboard(n, _gen(0), dtype=F64, squares=squares)
    assert ((x >= -2) & (x < 2)).all()
    size = 4.0 / squares
    cell = torch.floor((x + 2) / size)
    assert ((cell.sum(1) % 2) == 0).all()  # (i + j) even: the dark squares
    n_dark = (squares * squares + 1) // 2
    idx = (cell[:, 0] * squares + cell[:, 1]).long()
    freq = torch.bincount(idx, minlength=squares * squares)[idx.unique()].double() / n
    assert freq.numel() == n_dark
    p = 1 / n_dark
    assert ((freq - p).abs() <= 4 * math.sqrt(p * (1 - p) / n)).all(), freq
    # Within its square a point is uniform: offsets / size ~ U(0, 1), mean 1/2, var 1/12.
    frac = (x + 2) / size - cell
    assert ((frac.mean(0) - 0.5).abs() <= 4 * math.sqrt(1 / 12 / n)).all()


def test_moons_noise_free_points_lie_on_the_two_arcs():
    # Undo the centring and scaling: the upper arc is the unit circle at (0, 0) with y >= 0,
    # the lower one the unit circle at (1, 0.5) with y <= 0.5.
    n = 5000
    p = 0.8 * moons(n, _gen(0), dtype=F64, noise=0.0) + torch.tensor([0.5, 0.25], dtype=F64)
    upper = ((p.norm(dim=1) - 1).abs() < 1e-12) & (p[:, 1] >= 0)
    q = p - torch.tensor([1.0, 0.5], dtype=F64)
    lower = ((q.norm(dim=1) - 1).abs() < 1e-12) & (q[:, 1] <= 0)
    assert (upper | lower).all()
    assert abs(float(upper.double().mean()) - 0.5) <= 4 * math.sqrt(0.25 / n)


def test_moons_moments_and_range():
    """Angle a ~ U(0, pi), arc chosen by a fair coin: var_x = (1/2 + 1/4 + s^2) / 0.64 and
    var_y = (1/2 - 4/pi^2 + (4/pi - 1/2)^2 / 4 + s^2) / 0.64 (within-arc plus between-arc);
    mean 0. SE of a variance: sqrt((m4 - var^2) / n) with the sample fourth moment."""
    n, s = 20000, 0.05
    x = moons(n, _gen(0), dtype=F64, noise=s)
    var = torch.tensor([0.75 + s**2, 0.5 - 4 / math.pi**2 + (4 / math.pi - 0.5) ** 2 / 4 + s**2],
                       dtype=F64) / 0.64
    xc = x - x.mean(0)
    assert (x.mean(0).abs() <= 4 * (var / n).sqrt()).all(), x.mean(0)
    se_var = ((xc**4).mean(0) - xc.var(0) ** 2).div(n).sqrt()
    assert ((xc.var(0) - var).abs() <= 4 * se_var).all(), (xc.var(0), var)
    tail = 6 * s / 0.8  # P(|noise| > 6 sd) ~ 2e-9 per coordinate
    lo = torch.tensor([-1.5 / 0.8, -0.75 / 0.8], dtype=F64) - tail
    hi = torch.tensor([1.5 / 0.8, 0.75 / 0.8], dtype=F64) + tail
    assert ((x >= lo) & (x <= hi)).all()


def test_swissroll_noise_free_points_lie_on_the_spiral():
    # 7.5 x = u (cos u, sin u) with u ~ U(1.5 pi, 4.5 pi): the radius is the angle.
    n = 5000
    p = 7.5 * swissroll(n, _gen(0), dtype=F64, noise=0.0)
    r = p.norm(dim=1)
    assert ((r >= 1.5 * math.pi - 1e-12) & (r <= 4.5 * math.pi + 1e-12)).all()
    assert torch.allclose(p, r[:, None] * torch.stack([r.cos(), r.sin()], 1), atol=1e-12)
    assert abs(float(r.mean()) - 3 * math.pi) <= 4 * 3 * math.pi / math.sqrt(12 * n)


def test_swissroll_range_with_noise():
    s = 0.25
    r = (7.5 * swissroll(20000, _gen(0), dtype=F64, noise=s)).norm(dim=1)
    # |2-D noise| > 6 s has probability exp(-18) ~ 2e-8 per point.
    assert ((r >= 1.5 * math.pi - 6 * s) & (r <= 4.5 * math.pi + 6 * s)).all()
    assert float(r.max()) > 4.5 * math.pi - 1 and float(r.min()) < 1.5 * math.pi + 1
