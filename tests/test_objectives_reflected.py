"""Reflected DSM: its target is conditionally unbiased for the marginal score (the Hydra and
Trainer wiring is tested in test_train_objectives.py)."""

import math

import pytest
import torch

from scorekit.objectives import DSM, LocalDSM, ReflectedDSM, make_objective
from scorekit.reflected import ReflectedSDE, fold, heat_kernel_logp, heat_kernel_score
from scorekit.sde import VPSDE

F64 = torch.float64
POINTS, WEIGHTS = (0.25, 0.7), (0.5, 0.5)  # data: two point masses on [0, 1]


class MixtureScore:
    """Exact score of the point masses noised by the reflected process on [0, 1] (plus `shift`):
    sum_i w_i p(x | x_i) k(x | x_i) / sum_i w_i p(x | x_i)."""

    def __init__(self, sde, shift=0.0):
        self.sde, self.shift = sde, shift

    def __call__(self, x, t):
        s = self.sde.sigma(t.double())[:, None].expand_as(x)
        logw = torch.stack([math.log(w) + heat_kernel_logp(x, torch.full_like(x, p), s)
                            for p, w in zip(POINTS, WEIGHTS, strict=True)])
        k = torch.stack([heat_kernel_score(x, torch.full_like(x, p), s) for p in POINTS])
        return (torch.softmax(logw, 0) * k).sum(0) + self.shift


def _data(n, seed):
    g = torch.Generator().manual_seed(seed)
    pick = torch.rand(n, 1, generator=g, dtype=F64) < WEIGHTS[0]
    return torch.where(pick, POINTS[0], POINTS[1]).to(F64)


def _t_of_sigma(sde, sigma):
    return math.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)


@pytest.mark.parametrize("sigma", [0.05, 0.3, 0.6, 1.5])
def test_excess_loss_is_sigma2_c2(sigma):
    """L(s* + c) - L(s*) = sigma^2 c^2 (d = 1) for the exact marginal score s*: the cross term
    2 sigma^2 c E[s*(x_t) - target] vanishes because E[target | x_t] = s*(x_t). Common draws,
    n = 2e4, tolerance 5 SE of the per-sample difference; sigma spans both kernel series."""
    sde = ReflectedSDE()
    loss = ReflectedDSM(sde)
    x0, t, c = _data(20_000, 0), _t_of_sigma(sde, sigma), 0.7
    base = loss.per_sample(MixtureScore(sde), x0, t, torch.Generator().manual_seed(1))
    shifted = loss.per_sample(MixtureScore(sde, c), x0, t, torch.Generator().manual_seed(1))
    diff = shifted - base
    se = diff.std() / math.sqrt(len(diff))
    assert abs(float(diff.mean()) - sigma**2 * c**2) < 5 * se


def test_unfolded_target_fails_the_excess_identity():
    """Negative control: the naive target -z / sigma (the Gaussian's score, ignoring the fold)
    is not conditionally unbiased near the faces: the same identity misses by > 5 SE."""
    sde = ReflectedSDE()
    sigma, c = 0.3, 0.7
    x0 = _data(20_000, 0)
    z = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    xt = fold(x0 + sigma * z)
    t = torch.full((len(x0),), _t_of_sigma(sde, sigma), dtype=F64)
    s_star = MixtureScore(sde)(xt, t)
    diff = (sigma**2 * ((s_star + c + z / sigma) ** 2 - (s_star + z / sigma) ** 2))[:, 0]
    se = diff.std() / math.sqrt(len(diff))
    assert abs(float(diff.mean()) - sigma**2 * c**2) > 5 * se


def test_weightings_and_reductions():
    """likelihood = 2 log(sigma_max / sigma_min) x sigma2 for VE noise; "mean" = "sum" / d."""
    sde = ReflectedSDE()
    x0 = torch.rand(64, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    model = MixtureScore(sde, shift=0.3)
    out = {(w, r): ReflectedDSM(sde, weighting=w, reduction=r)(
        model, x0, generator=torch.Generator().manual_seed(3))
        for w in ("sigma2", "likelihood") for r in ("sum", "mean")}
    ratio = 2 * math.log(sde.sigma_max / sde.sigma_min)
    torch.testing.assert_close(out["likelihood", "sum"], ratio * out["sigma2", "sum"])
    torch.testing.assert_close(out["sigma2", "mean"], out["sigma2", "sum"] / 3)


def test_objective_validation():
    with pytest.raises(ValueError, match="needs a scorekit.reflected.ReflectedSDE, got VPSDE"):
        ReflectedDSM(VPSDE())
    with pytest.raises(ValueError, match="use ReflectedDSM"):
        DSM(ReflectedSDE())
    with pytest.raises(ValueError, match="use ReflectedDSM"):
        LocalDSM(ReflectedSDE())
    with pytest.raises(ValueError, match="'edm'"):
        ReflectedDSM(ReflectedSDE(), weighting="edm")
    assert isinstance(make_objective("reflected_dsm", ReflectedSDE(), t_min=1e-4), ReflectedDSM)
