"""Per-step hooks honoured by every method: `callback(i, t, x, x0_hat)` once per step with the
state the step's score saw and that evaluation's posterior mean, early stopping by returning
True, and a progress bar."""

import pytest
import torch

import samplers
from scorekit.dirichlet import JacobiDiffusion
from scorekit.reflected import ReflectedSDE
from scorekit.scores import GaussianScore
from scorekit.sde import VPSDE, DoubleWellSDE

F64 = torch.float64
N = 16
# method -> (options, the number of steps it reports, or None where the solver chooses)
FIXED = {"em": ({"steps": 7}, 7), "pc": ({"steps": 5, "snr": 0.05}, 5), "heun": ({"steps": 6}, 5),
         "closed_form": ({"steps": 6}, 6), "dpm_solver": ({"steps": 5}, 5),
         "unipc": ({"steps": 5}, 5), "euler_diffusers": ({"steps": 5}, 5),
         "fkc": ({"steps": 6, "beta": 1.0}, 6), "ode": ({"rtol": 1e-6, "atol": 1e-6}, None),
         "ggf": ({"abs_tol": 0.05, "rel_tol": 0.1}, None)}


def _gauss(sde):
    return GaussianScore(torch.tensor([0.5, -0.2], dtype=F64),
                         torch.tensor([[0.3, 0.1], [0.1, 0.2]], dtype=F64), sde)


def _record(store):
    def callback(i, t, x, x0):
        store.append((i, t, x, x0))
    return callback


def test_every_registered_method_takes_the_loop():
    from scorekit._validate import accepted_kwargs

    for name in samplers.available():
        assert "loop" in accepted_kwargs(samplers.api._METHODS[name]), name


@pytest.mark.parametrize("method", sorted(FIXED))
def test_callback_once_per_step_with_tweedie_estimate(method):
    sde = VPSDE()
    score = _gauss(sde)
    opts, n_steps = FIXED[method]
    seen = []
    dtype = torch.float32 if method == "unipc" else F64
    res = samplers.sample(score, sde, (N, 2), method=method, dtype=dtype, callback=_record(seen),
                          generator=torch.Generator().manual_seed(0), **opts)
    assert len(seen) >= 1 and [s[0] for s in seen] == list(range(len(seen)))
    if n_steps is not None:
        assert len(seen) == n_steps
    for _, t, x, x0 in seen:
        assert t.shape == (N,) and x.shape == (N, 2) and x0.shape == (N, 2)
        # x0_hat is Tweedie's mean from the score at (x, t), written from the formula here
        # (ggf: samples already at eps keep the estimate of their last evaluation).
        live = t > sde.eps + 1e-5 if method == "ggf" else torch.ones(N, dtype=torch.bool)
        t, x = t.double()[live], x.double()[live]
        beta = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2
        alpha, var = torch.exp(-0.5 * beta)[:, None], -torch.expm1(-beta)[:, None]
        want = (x + var * score(x, t)) / alpha
        # float32 (unipc): x + sigma^2 s cancels to ~alpha |x| at T (alpha_T ~ 7e-3), so
        # ~150 eps32 ~ 2e-5 relative; 1e-3 leaves 50x margin. float64: 1e-8.
        tol = 1e-3 if dtype == torch.float32 else 1e-8
        torch.testing.assert_close(x0.double()[live], want, rtol=tol,
                                   atol=tol * want.abs().max())
    assert res.x.shape == (N, 2)


@pytest.mark.parametrize("method", ["em", "heun", "ode", "ggf", "pc", "fkc"])
def test_returning_true_stops_and_returns_that_estimate(method):
    sde = VPSDE()
    seen = []

    def callback(i, t, x, x0):
        seen.append(x0)
        return i == 2

    res = samplers.sample(_gauss(sde), sde, (N, 2), method=method, dtype=F64, callback=callback,
                          generator=torch.Generator().manual_seed(0), **FIXED[method][0])
    assert res.info["stopped_at_step"] == 2 and len(seen) == 3
    assert torch.equal(res.x, seen[-1])


def test_callback_on_constrained_processes(tmp_path):
    """Reflected samplers report Tweedie's mean; Dirichlet and non-linear processes, which have
    no posterior mean in closed form, report None."""
    box = ReflectedSDE(lower=-1.0, upper=2.0)
    for method in ("em", "pc", "reflected_ode"):
        seen = []
        samplers.sample(lambda x, t: torch.zeros_like(x), box, (N, 2), method=method, steps=4,
                        callback=_record(seen), dtype=F64)
        assert len(seen) == 4 and seen[0][3] is not None
    jac = JacobiDiffusion(3, T=2.0, n_time=40, n_grid=128, cache_dir=tmp_path)
    seen = []
    samplers.sample(lambda x, t: torch.zeros_like(x), jac, (N, 1, 3), method="jacobi", steps=3,
                    time_dilation=2, callback=_record(seen))
    assert len(seen) == 6 and seen[0][3] is None and seen[0][2].shape == (N, 1, 3)
    seen = []
    dw = DoubleWellSDE()
    samplers.sample(lambda x, t: dw.stationary_score(x), dw, (N, 1), method="em", steps=4,
                    denoise="mean", callback=_record(seen))
    assert len(seen) == 4 and seen[0][3] is None


def test_fkc_sample_callback_and_progress():
    sde = VPSDE()
    seen = []
    res = samplers.fkc_sample(_gauss(sde), sde, (N, 2), steps=5, callback=_record(seen),
                              progress=True, generator=torch.Generator().manual_seed(0))
    assert len(seen) == 5 and res.log_weights is not None


@pytest.mark.parametrize("method", ["em", "ode", "ggf", "jacobi"])
def test_progress_bar(method, capsys, tmp_path):
    """progress=True draws a tqdm bar on stderr and changes nothing else."""
    if method == "jacobi":
        sde, shape = JacobiDiffusion(3, T=2.0, n_time=40, n_grid=128, cache_dir=tmp_path), (N, 1, 3)
        score, opts = (lambda x, t: torch.zeros_like(x)), {"steps": 3}
    else:
        sde, shape, opts = VPSDE(), (N, 2), FIXED[method][0]
        score = _gauss(sde)
    runs = [samplers.sample(score, sde, shape, method=method, progress=p, dtype=F64,
                            generator=torch.Generator().manual_seed(0), **opts)
            for p in (False, True)]
    assert torch.equal(runs[0].x, runs[1].x)
    assert f"{method}:" in capsys.readouterr().err  # the bar, named after the method


def test_hook_errors_name_the_problem():
    sde = VPSDE()
    with pytest.raises(TypeError, match="callback must be callable"):
        samplers.sample(_gauss(sde), sde, (4, 2), steps=2, callback="print")

    def plain(score, sde, x, *, steps=3, generator=None):
        return x, {}

    samplers.register("plain_test", plain)
    try:
        with pytest.raises(ValueError, match="does not report its steps"):
            samplers.sample(_gauss(sde), sde, (4, 2), method="plain_test", progress=True)
    finally:
        samplers.api._METHODS.pop("plain_test")
