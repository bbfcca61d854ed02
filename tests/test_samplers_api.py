"""Public sampler API: method registry, honest NFE accounting, input validation."""

import pytest
import torch

import samplers
from samplers.grids import GRIDS, time_grid
from samplers.result import CountingScore
from scorekit.reflected import ReflectedSDE
from scorekit.scores import GaussianScore
from scorekit.sde import EDMSDE, VESDE, VPSDE, SubVPSDE


def _score(sde, d=3):
    return GaussianScore(torch.zeros(d), torch.eye(d) * 0.5, sde)


class CallLog:
    """A score that records how many rows it saw, independently of samplers' own counter."""

    def __init__(self, score):
        self.score, self.rows = score, 0

    def __call__(self, x, t):
        self.rows += x.shape[0]
        return self.score(x, t)


# method -> (options, expected NFE for steps=13); None where the count depends on the solve.
EXPECTED = {
    "em": ({"denoise": "tweedie"}, 13 + 1),
    "pc": ({"denoise": "tweedie"}, 13 * 2 + 1),  # one Langevin corrector + one predictor call
    "heun": ({}, 2 * 13 - 1),
    "ode": ({}, None),
    "ggf": ({"rel_tol": 0.1}, None),
    "dpm_solver": ({}, 13),
    "dpm_solver_sde": ({}, 13),
    "unipc": ({}, 13),
    "dpm_solver_diffusers": ({}, 13),
    "unipc_diffusers": ({}, 13),
    "euler_diffusers": ({}, 13),
    "closed_form": ({"denoise": "tweedie"}, 13 + 1),
    "fkc": ({"beta": 2.0}, 27),  # (1 predictor + 1 MALA move) per step, +1 first step
    "reflected_em": ({"denoise": "tweedie"}, 13 + 1),  # run on a ReflectedSDE
    "reflected_pc": ({"denoise": "tweedie"}, 13 * 2 + 1),
    "reflected_ode": ({"denoise": "tweedie"}, 13 * 2 + 1),  # Heun: 2 per step
}


# Samplers of simplex processes (JacobiDiffusion), NFE-checked in test_samplers_jacobi.py.
SIMPLEX = ("jacobi",)


def test_every_method_has_an_nfe_expectation():
    assert sorted([*EXPECTED, *SIMPLEX]) == samplers.available()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("method", sorted(EXPECTED))
def test_nfe_counted_by_calls(method, dtype):
    """Every method, in float32 and float64: samples of that dtype, NFE = rows the score saw."""
    sde = ReflectedSDE() if method.startswith("reflected_") else VPSDE()
    log = CallLog(_score(sde))
    n = 7
    opts, expected = EXPECTED[method]
    steps = None if method in ("ode", "ggf") else 13  # adaptive: tolerances, not steps
    res = samplers.sample(log, sde, (n, 3), method=method, steps=steps, dtype=dtype, **opts)
    assert res.x.dtype == dtype and bool(torch.isfinite(res.x).all())
    assert res.nfe_per_sample.shape == (n,)
    assert res.nfe == res.nfe_per_sample.double().mean().item() == log.rows / n
    if expected is not None:
        assert res.nfe == expected


def test_ode_nfe_includes_rejected_steps():
    """dopri5 (FSAL): 2 initial evaluations + 6 per attempted step, rejected ones included
    (tight tolerances make the step controller reject some steps)."""
    sde = VPSDE()
    log = CallLog(_score(sde))
    res = samplers.sample(log, sde, (5, 3), method="ode", rtol=1e-7, atol=1e-7)
    info = res.info
    assert info["rejected_steps"] > 0
    assert res.nfe == 2 + 6 * (info["accepted_steps"] + info["rejected_steps"])


def test_counting_score_rows():
    c = CountingScore(lambda x, t: x, n=5)
    c(torch.zeros(2, 1), torch.zeros(2), rows=torch.tensor([1, 3]))
    c(torch.zeros(5, 1), torch.zeros(5))
    assert c.counts.tolist() == [1, 2, 1, 2, 1]
    with pytest.raises(ValueError, match="rows"):
        c(torch.zeros(2, 1), torch.zeros(2))


def test_unknown_method_lists_valid_names():
    with pytest.raises(ValueError) as err:
        samplers.sample(_score(VPSDE()), VPSDE(), (4, 3), method="dpm++")
    assert "'dpm++'" in str(err.value)
    for name in samplers.available():
        assert name in str(err.value)


@pytest.mark.parametrize("steps", [0, -3, 2.5])
def test_bad_steps(steps):
    with pytest.raises(ValueError, match=f"steps must be an integer >= 1, got {steps}"):
        samplers.sample(_score(VPSDE()), VPSDE(), (4, 3), steps=steps)


def test_unknown_option_named():
    with pytest.raises(ValueError, match="'snrr'.*'em'"):
        samplers.sample(_score(VPSDE()), VPSDE(), (4, 3), method="em", snrr=0.1)


def test_bad_shape_and_choice():
    with pytest.raises(ValueError, match=r"shape must be"):
        samplers.sample(_score(VPSDE()), VPSDE(), (4,))
    with pytest.raises(ValueError, match="'median'"):
        samplers.sample(_score(VPSDE()), VPSDE(), (4, 3), denoise="median")
    with pytest.raises(ValueError, match="x has 2 elements"):
        samplers.sample(_score(VPSDE()), VPSDE(), (4, 2), steps=2)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(), EDMSDE()],
                         ids=["vp", "subvp", "ve", "edm"])
@pytest.mark.parametrize("kind", GRIDS)
def test_time_grids(sde, kind):
    g = time_grid(sde, 17, kind)
    assert g.dtype == torch.float64 and g.shape == (18,)
    assert g[0] == sde.T and g[-1] == sde.eps
    assert (g[1:] < g[:-1]).all()


def test_logsnr_grid_uniform_in_log_noise_level():
    sde = VPSDE()
    lvl = torch.log(sde.noise_level(time_grid(sde, 20, "logsnr")))
    diffs = lvl[1:] - lvl[:-1]
    assert torch.allclose(diffs, diffs.mean().expand_as(diffs), rtol=1e-8)


def test_deterministic_with_generator():
    sde = VPSDE()
    a = samplers.sample(_score(sde), sde, (8, 3), steps=5,
                        generator=torch.Generator().manual_seed(3)).x
    b = samplers.sample(_score(sde), sde, (8, 3), steps=5,
                        generator=torch.Generator().manual_seed(3)).x
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["em", "heun", "dpm_solver", "ggf", "ode"])
@pytest.mark.parametrize("bad,err,match", [
    (lambda x, t: x[:, :1], ValueError, r"shape \(4, 1\) for x of shape \(4, 3\)"),
    (lambda x, t: x[:1], ValueError, r"shape \(1, 3\) for x of shape \(4, 3\)"),
    (lambda x, t: x[0], ValueError, r"shape \(3,\) for x of shape \(4, 3\)"),
    (lambda x, t: x.double(), ValueError, "torch.float64 for x in torch.float32"),
    (lambda x, t: None, TypeError, "returned NoneType"),
], ids=["B1", "1D", "D", "float64", "none"])
def test_score_output_checked_on_the_first_call(method, bad, err, match):
    """A wrong-shaped score output would broadcast silently, a float64 one would promote the
    samples: every method stops at the first call, naming what it got and what it needed."""
    with pytest.raises(err, match=match):
        samplers.sample(bad, VPSDE(), (4, 3), method=method, steps=4 if method != "ggf"
                        and method != "ode" else None)
