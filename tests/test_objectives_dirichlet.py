"""DirichletDSM: the exact posterior score is the conditional mean of the targets, both model
parameterisations agree, givens are excluded, time sampling follows w(t)."""

import pytest
import torch

from scorekit.dirichlet import JacobiDiffusion
from scorekit.objectives import DirichletDSM, make_objective
from scorekit.sde import VPSDE

F64 = torch.float64
K = 3
PI = torch.tensor([0.5, 0.3, 0.2], dtype=F64)


@pytest.fixture(scope="module")
def jac(tmp_path_factory):
    return JacobiDiffusion(K, T=2.0, n_time=40, n_grid=512,
                           cache_dir=tmp_path_factory.mktemp("jacobi"))


class ExactPosterior(torch.nn.Module):
    """Cells i.i.d. categorical(pi): P(c | x_t) ∝ pi_c q(x_t | e_c)."""

    def __init__(self, jac, log_prior):
        super().__init__()
        self.jac, self.log_prior = jac, log_prior

    def posterior_logits(self, x, t, known=None):
        return self.jac.log_likelihood(x, t) + self.log_prior


class StickOffset(torch.nn.Module):
    """The exact score in stick coordinates plus a constant c."""

    def __init__(self, jac, c):
        super().__init__()
        self.exact, self.c = ExactPosterior(jac, PI.log()), c

    def stick_score(self, x, t, known=None):
        probs = torch.softmax(self.exact.posterior_logits(x, t), -1)
        return self.exact.jac.posterior_v_score(probs, x, t) + self.c


def _data(n, cells=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.one_hot(torch.multinomial(PI, n * cells, True, generator=gen)
                                       .reshape(n, cells), K).to(F64)


def _loss(obj, model, x0, seed, **kw):
    return obj.per_sample(model, x0, generator=torch.Generator().manual_seed(seed), **kw)


def test_exact_score_is_the_conditional_mean_of_targets(jac):
    """With common random numbers, L(s* + c) - L(s* - c) = 4c sum v(1-v)(s* - target)/w has
    mean 0 iff s* = E[target | x_t] (5 SE); a wrong prior gives a clearly non-zero mean."""
    obj = DirichletDSM(jac, importance_sampling=False)
    x0 = _data(8000)
    c = torch.full((K - 1,), 0.5, dtype=F64)
    d = _loss(obj, StickOffset(jac, c), x0, 1) - _loss(obj, StickOffset(jac, -c), x0, 1)
    assert d.mean().abs() < 5 * d.std() / len(d) ** 0.5
    wrong = StickOffset(jac, c)
    wrong.exact.log_prior = torch.zeros(K, dtype=F64)   # uniform instead of pi
    wrong_m = StickOffset(jac, -c)
    wrong_m.exact.log_prior = wrong.exact.log_prior
    dw = _loss(obj, wrong, x0, 1) - _loss(obj, wrong_m, x0, 1)
    assert dw.mean().abs() > 10 * dw.std() / len(dw) ** 0.5


def test_posterior_and_stick_parameterisations_agree(jac):
    obj = DirichletDSM(jac)
    x0 = _data(64)
    a = _loss(obj, ExactPosterior(jac, PI.log()), x0, 2)
    b = _loss(obj, StickOffset(jac, torch.zeros(K - 1, dtype=F64)), x0, 2)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_known_cells_are_excluded(jac):
    obj = DirichletDSM(jac, reduction="mean")
    x0 = _data(16)
    model = StickOffset(jac, torch.full((K - 1,), 3.0, dtype=F64))
    everything = torch.ones(16, 4, dtype=torch.bool)
    assert (_loss(obj, model, x0, 3, known=everything) == 0).all()
    half = torch.zeros(16, 4, dtype=torch.bool)
    half[:, :2] = True
    assert (_loss(obj, model, x0, 3, known=half) > 0).all()


def test_cross_entropy_term(jac):
    x0 = _data(32)
    model = ExactPosterior(jac, PI.log())
    base = _loss(DirichletDSM(jac), model, x0, 4)
    with_ce = _loss(DirichletDSM(jac, ce_weight=2.0), model, x0, 4)
    assert (with_ce >= base).all() and (with_ce > base).any()
    with pytest.raises(ValueError, match="posterior_logits"):
        _loss(DirichletDSM(jac, ce_weight=1.0), StickOffset(jac, 0.0), x0, 4)


def test_time_sampling_follows_w(jac):
    """Importance sampling draws grid indices with probability w / sum w (5 SE per index)."""
    obj = DirichletDSM(jac, importance_sampling=True)
    n = 200000
    idx = obj.sample_index(n, torch.Generator().manual_seed(5))
    freq = torch.bincount(idx, minlength=jac.n_time).to(F64) / n
    p = jac.loss_weight / jac.loss_weight.sum()
    assert ((freq - p).abs() < 5 * torch.sqrt(p * (1 - p) / n)).all()


def test_registry_and_validation(jac):
    assert isinstance(make_objective("dirichlet_dsm", jac, importance_sampling=False),
                      DirichletDSM)
    with pytest.raises(TypeError, match="JacobiDiffusion"):
        DirichletDSM(VPSDE())
    with pytest.raises(ValueError, match="reduction"):
        DirichletDSM(jac, reduction="max")
    with pytest.raises(ValueError, match="one-hot"):
        DirichletDSM(jac)(ExactPosterior(jac, PI.log()), torch.ones(4, 2, 5, dtype=F64))
