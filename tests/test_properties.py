"""Property-based checks of the public boundaries: scores and samplers over shapes, dtypes and
times (valid input -> finite output of the right shape and dtype; invalid input -> ValueError
naming it), and the trainer's config schema."""

import math

import pytest
import torch
from _config import compose_config as _cfg
from hypothesis import given, settings
from hypothesis import strategies as st

import samplers
from scorekit.config import ConfigError, validate
from scorekit.reflected import ReflectedSDE
from scorekit.scores import EmpiricalScore, GaussianScore, GMMScore
from scorekit.sde import EDMSDE, VESDE, VPSDE

FAST = settings(max_examples=25, deadline=None)
SDES = {"vp": VPSDE(), "ve": VESDE(), "edm": EDMSDE()}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@st.composite
def sample_shapes(draw, max_d=4):
    """(n, *D) with 1 <= n <= 5 and D one of (d,), (1, d), (d, 1)."""
    n, d = draw(st.integers(1, 5)), draw(st.integers(1, max_d))
    return (n, *draw(st.sampled_from([(d,), (1, d), (d, 1)])))


def _score(kind, sde, d):
    g = torch.Generator().manual_seed(d)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    cov = a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64)
    if kind == "gauss":
        return GaussianScore(torch.randn(d, generator=g, dtype=torch.float64), cov, sde)
    if kind == "gmm":
        return GMMScore(torch.tensor([0.3, 0.7]), torch.randn(2, d, generator=g),
                        torch.stack([cov, 2 * cov]), sde)
    return EmpiricalScore(torch.randn(50, d, generator=g), sde, smoothing=0.1, n_smooth=4)


def _times(sde, n, u):
    """n times spread over [eps, T] by the fractions u (the end points included)."""
    return torch.tensor([sde.eps + f * (sde.T - sde.eps) for f in u[:n]], dtype=torch.float64)


@FAST
@given(kind=st.sampled_from(["gauss", "gmm", "empirical"]), sde=st.sampled_from(list(SDES)),
       shape=sample_shapes(), dtype=st.sampled_from(list(DTYPES)),
       u=st.lists(st.floats(0, 1), min_size=5, max_size=5))
def test_scores_valid_input(kind, sde, shape, dtype, u):
    sde, dtype = SDES[sde], DTYPES[dtype]
    score = _score(kind, sde, math.prod(shape[1:]))
    x = torch.randn(shape, dtype=dtype)
    out = score(x, _times(sde, shape[0], u).to(dtype))
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()


@FAST
@given(kind=st.sampled_from(["gauss", "gmm", "empirical"]), sde=st.sampled_from(list(SDES)),
       bad_t=st.one_of(st.floats(-10, -1e-3), st.floats(1.01, 1e3), st.just(math.nan)),
       n=st.integers(1, 4), at=st.integers(0, 3))
def test_scores_reject_t_outside_range(kind, sde, bad_t, n, at):
    """Outside [eps, T] (EmpiricalScore) or [0, T] (Gaussian, GMM: t = 0 is the data law)."""
    sde = SDES[sde]
    if sde.eps * (1 - 1e-5) <= bad_t <= sde.T * (1 + 1e-5):
        return  # EDM's T is sigma_max = 80: 1.01 .. 80 is inside
    score = _score(kind, sde, 2)
    t = torch.full((n,), 0.5 * sde.T, dtype=torch.float64)
    t[min(at, n - 1)] = bad_t
    with pytest.raises(ValueError, match=r"t=.* is outside \[.*, T="):
        score(torch.zeros(n, 2, dtype=torch.float64), t)


@FAST
@given(kind=st.sampled_from(["gauss", "gmm", "empirical"]), d=st.integers(1, 4),
       wrong=st.sampled_from(["d", "t_len", "t_2d", "int_x", "scalar_x"]))
def test_scores_reject_bad_shapes_and_dtypes(kind, d, wrong):
    sde = VPSDE()
    score = _score(kind, sde, d)
    x, t = torch.zeros(3, d, dtype=torch.float64), torch.full((3,), 0.5, dtype=torch.float64)
    x, t = {"d": (torch.zeros(3, d + 1, dtype=torch.float64), t), "t_len": (x, t[:2]),
            "t_2d": (x, t[:, None]), "int_x": (x.long(), t),
            "scalar_x": (torch.tensor(0.0, dtype=torch.float64), t)}[wrong]
    with pytest.raises(ValueError, match=r"elements per sample|t must have shape|floating"):
        score(x, t)


def _method_options(method):
    if method == "ggf":
        return {"abs_tol": 0.05, "rel_tol": 0.5}
    if method == "ode":
        return {"solver": "euler", "steps": 2}
    return {"steps": 2}


@pytest.mark.parametrize("method", [m for m in samplers.available()
                                    if not m.startswith("reflected_") and m != "jacobi"])
@settings(max_examples=10, deadline=None)
@given(sde=st.sampled_from(list(SDES)), shape=sample_shapes(max_d=3),
       dtype=st.sampled_from(list(DTYPES)), seed=st.integers(0, 2**31))
def test_samplers_valid_input(method, sde, shape, dtype, seed):
    sde, dtype = SDES[sde], DTYPES[dtype]
    score = _score("gauss", sde, math.prod(shape[1:]))
    res = samplers.sample(score, sde, shape, method=method, dtype=dtype,
                          generator=torch.Generator().manual_seed(seed),
                          **_method_options(method))
    assert res.x.shape == shape and res.x.dtype == dtype and torch.isfinite(res.x).all()
    assert res.nfe_per_sample.shape == (shape[0],) and res.nfe >= 1


@FAST
@given(method=st.sampled_from(["em", "pc", "heun", "closed_form", "dpm_solver"]),
       frac=st.floats(-0.5, 1.5), n=st.integers(1, 4))
def test_samplers_t_start_range(method, frac, n):
    """With x_init, any t_start in (eps, T] runs; anything else is refused, naming it."""
    sde = VPSDE()
    t_start = sde.eps + frac * (sde.T - sde.eps)
    x_init = torch.randn(n, 2)
    run = lambda: samplers.sample(_score("gauss", sde, 2), sde, (n, 2), method=method,  # noqa: E731
                                  x_init=x_init, t_start=t_start, steps=2)
    if sde.eps < t_start <= sde.T:
        assert torch.isfinite(run().x).all()
    else:
        with pytest.raises(ValueError, match="t_start=.* must lie in"):
            run()


@FAST
@given(shape=st.one_of(
    st.tuples(st.integers(-3, 0), st.integers(1, 3)),
    st.tuples(st.integers(1, 3), st.integers(-3, 0)),
    st.tuples(st.integers(1, 3)),
    st.tuples(st.integers(1, 3), st.floats(0.5, 3.5).filter(lambda v: v != int(v)))),
    method=st.sampled_from([m for m in samplers.available() if m != "jacobi"]))
def test_samplers_reject_bad_shapes(shape, method):
    sde = ReflectedSDE() if method.startswith("reflected_") else VPSDE()
    with pytest.raises(ValueError, match="shape must be"):
        samplers.sample(lambda x, t: -x, sde, shape, method=method)


@FAST
@given(steps=st.one_of(st.integers(-5, 0), st.just(True), st.floats(0.5, 5.0)),
       method=st.sampled_from(["em", "pc", "closed_form", "unipc", "fkc"]))
def test_samplers_reject_bad_steps(steps, method):
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        samplers.sample(_score("gauss", VPSDE(), 2), VPSDE(), (2, 2), method=method,
                        steps=steps)


@FAST
@given(dtype=st.sampled_from([torch.int64, torch.int32, torch.bool, torch.complex64, "float32"]))
def test_samplers_reject_non_float_dtype(dtype):
    with pytest.raises(ValueError, match="dtype must be a floating torch.dtype"):
        samplers.sample(_score("gauss", VPSDE(), 2), VPSDE(), (2, 2), steps=2, dtype=dtype)


def test_samplers_reject_device_mismatch_and_bad_x_init():
    sde, score = VPSDE(), _score("gauss", VPSDE(), 2)
    with pytest.raises(ValueError, match="generator is on cpu but device=meta"):
        samplers.sample(score, sde, (2, 2), steps=2, device="meta",
                        generator=torch.Generator())
    with pytest.raises(ValueError, match="x_init is on cpu but device=meta"):
        samplers.sample(score, sde, (2, 2), steps=2, device="meta", x_init=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="x_init has 1 non-finite entries"):
        samplers.sample(score, sde, (2, 2), steps=2,
                        x_init=torch.tensor([[0.0, math.inf], [0.0, 0.0]]))


_BASE = validate(_cfg(["trainer.progress=false"]))
INT_KEYS = {"steps": 1, "batch_size": 1, "ckpt_every": 1, "log_every": 1, "warmup": 0,
            "skip_nonfinite": 0}


@settings(max_examples=15, deadline=None)
@given(key=st.sampled_from(sorted(INT_KEYS)), value=st.integers(-10, 10))
def test_config_integer_ranges(key, value):
    cfg = validate(_BASE)
    cfg.trainer[key] = value
    if value >= INT_KEYS[key]:
        assert validate(cfg).trainer[key] == value
    else:
        with pytest.raises(ConfigError, match=f"trainer.{key} must be"):
            validate(cfg)


@settings(max_examples=15, deadline=None)
@given(section=st.sampled_from(["trainer", "eval", "logger"]),
       key=st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12))
def test_config_unknown_keys_named(section, key):
    cfg = validate(_BASE)
    if key in cfg[section]:
        return
    raw = {k: v for k, v in cfg.items()}
    raw[section] = {**cfg[section], key: 1}
    with pytest.raises(ConfigError, match=f"unknown config key '{section}.{key}'"):
        validate(raw)
