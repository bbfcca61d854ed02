"""The NaN/inf guard of every sampler, and same seed -> same samples for every method."""

import math

import pytest
import torch

import samplers
from samplers.result import CountingScore, FiniteGuard, NonFiniteError
from scorekit.reflected import ReflectedSDE
from scorekit.scores import GaussianScore
from scorekit.sde import VPSDE

SDE = VPSDE()
N, D = 4, 2
REFLECTED = [m for m in samplers.available() if m.startswith("reflected_")]
# Every method of a linear process, run on VPSDE (jacobi samples the simplex: its own tests).
LINEAR = [m for m in samplers.available() if m not in REFLECTED and m != "jacobi"]
# Small budgets per method; ggf is adaptive (loose tolerances keep it to a few dozen NFE).
OPTIONS = {"ggf": {"abs_tol": 0.05, "rel_tol": 0.5}, "ode": {"solver": "euler", "steps": 10},
           "heun": {"steps": 6}}


def _opts(method):
    return OPTIONS.get(method, {"steps": 10})


def _gauss():
    return GaussianScore(torch.tensor([1.0, -1.0]), torch.tensor([[1.0, 0.3], [0.3, 0.5]]), SDE)


def _nan_below(t_bad, rows=slice(0, 1)):
    """Exact Gaussian score, except NaN in `rows` wherever t < t_bad."""
    exact = _gauss()

    def score(x, t):
        s = exact(x, t)
        bad = torch.zeros(x.shape[0], dtype=torch.bool)
        bad[rows] = True
        return torch.where((bad & (t < t_bad))[:, None], torch.full_like(s, math.nan), s)
    return score


@pytest.mark.parametrize("method", LINEAR)
def test_nan_score_stops_with_step_t_and_fraction(method):
    with pytest.raises(NonFiniteError, match=r"non-finite score at evaluation step \d+, t") as err:
        samplers.sample(_nan_below(0.5), SDE, (N, D), method=method, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0), **_opts(method))
    e = err.value
    assert e.step >= 1 and e.bad == D
    t = e.t if isinstance(e.t, tuple) else (e.t, e.t)
    assert SDE.eps <= t[0] <= t[1] < 0.5  # only the bad sample's t, on CPU
    assert e.fraction == pytest.approx(D / (e.total))


def test_em_names_the_exact_step():
    """EM, 10 uniform steps from T = 1: t_i = 1 - i (1 - eps) / 10, first below 0.5 at i = 6,
    the 7th evaluation; one sample of four is bad, so 2 of 8 entries."""
    with pytest.raises(NonFiniteError) as err:
        samplers.sample(_nan_below(0.5), SDE, (N, D), method="em", steps=10,
                        dtype=torch.float64)
    e = err.value
    assert (e.step, e.bad, e.total) == (7, 2, 8) and e.fraction == 0.25
    assert e.t == pytest.approx(1 - 6 * (1 - SDE.eps) / 10)
    assert "evaluation step 7, t=0.4006: 2 of 8 entries (25%)" in str(e)


def test_fkc_product_guarded():
    with pytest.raises(NonFiniteError, match="evaluation step 7"):
        samplers.fkc_sample([_gauss(), _nan_below(0.5)], SDE, (N, D), mode="product", steps=10,
                            n_corrector=0, dtype=torch.float64)


def test_diverging_state_caught_at_the_end():
    """A finite score whose steps overflow the state: the final check names the samples."""
    def huge(x, t):
        return torch.full_like(x, 3e38)
    with pytest.raises(NonFiniteError, match=r"non-finite samples after the last step "
                                             r"\(evaluation step 2\): 8 of 8 entries \(100%\)"):
        samplers.sample(huge, SDE, (N, D), method="em", steps=2, denoise="none")


def test_guard_can_be_disabled():
    res = samplers.sample(_nan_below(0.5), SDE, (N, D), method="em", steps=10,
                          check_finite=False)
    assert torch.isnan(res.x[0]).all() and torch.isfinite(res.x[1:]).all()


def test_deferred_guard_names_first_bad_evaluation():
    """The accelerator path (counts queued on the device, read every `every` evaluations),
    forced on CPU: the error still names the first bad evaluation and its t and fraction."""
    guard = FiniteGuard(every=4, defer=True)
    counter = CountingScore(lambda x, t: x, 3, guard=guard)
    x = torch.ones(3, 2)
    for i in range(1, 6):
        counter(x, torch.full((3,), 1.0 - 0.1 * i))  # evaluations 1..5 fine, one flush
    x[1, 0] = math.inf
    counter(x, torch.full((3,), 0.4))  # evaluation 6: bad, queued
    counter(x * math.nan, torch.full((3,), 0.3))  # evaluation 7: worse, queued
    with pytest.raises(NonFiniteError) as err:
        counter(x, torch.full((3,), 0.2))  # evaluation 8 fills the window: flush
    e = err.value
    assert (e.step, e.bad, e.total) == (6, 1, 6) and e.t == pytest.approx(0.4)
    guard = FiniteGuard(every=64, defer=True)
    guard(x, None, 1)
    with pytest.raises(NonFiniteError, match="evaluation step 1"):
        guard.final(torch.zeros(3), 1)  # the end of sampling flushes the queue


def test_guard_ignores_overflowing_sum_of_finite_values():
    FiniteGuard()(torch.full((4, 2), 3e38), torch.full((4,), 0.5), 1)  # sum is inf, entries not


@pytest.mark.parametrize("method", REFLECTED)
def test_reflected_methods_guarded_and_deterministic(method):
    """The reflected samplers on a box: a NaN score stops them naming t; same seed, same
    samples."""
    sde = ReflectedSDE()
    centre = lambda x, t: -(x - 0.5)  # noqa: E731

    def nan_below(x, t):
        return torch.where((t < 0.5)[:, None], torch.full_like(x, math.nan), centre(x, t))
    with pytest.raises(NonFiniteError, match=r"non-finite score at evaluation step \d+, t"):
        samplers.sample(nan_below, sde, (N, D), method=method, steps=10, dtype=torch.float64)

    def run(seed):
        return samplers.sample(centre, sde, (N, D), method=method, steps=10,
                               generator=torch.Generator().manual_seed(seed)).x
    assert torch.equal(run(3), run(3)) and not torch.equal(run(3), run(4))


@pytest.mark.parametrize("method", LINEAR)
def test_same_seed_same_samples(method):
    def run(seed):
        return samplers.sample(_gauss(), SDE, (N, D), method=method,
                               generator=torch.Generator().manual_seed(seed), **_opts(method))
    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.x, b.x) and torch.equal(a.nfe_per_sample, b.nfe_per_sample)
    assert not torch.equal(a.x, c.x)
