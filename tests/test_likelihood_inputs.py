"""log_likelihood's input checks and NaN guard: errors name the bad value instead of
torchdiffeq's `AssertionError: underflow in dt`."""

import pytest
import torch

import samplers
from scorekit.sde import VPSDE


def _std_normal_score(x, t):
    """Score of N(0, I) data under VP: p_t = N(0, I) for every t, so s(x, t) = -x."""
    return -x


def _x(n=4, d=2, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_nan_score_raises_floating_point_error_naming_t_and_rows():
    """A score that is NaN on rows 1 and 3 for t > 0.5 fails at the first evaluation past 0.5,
    naming that t and the 2 of 4 bad rows."""
    def score(x, t):
        bad = (t > 0.5)[:, None] & (torch.arange(x.shape[0]) % 2 == 1)[:, None]
        return torch.where(bad, torch.full_like(x, float("nan")), -x)

    with pytest.raises(FloatingPointError, match=r"score is non-finite .* for 2 of 4 rows "
                                                 r"\(first: row 1\)") as err:
        samplers.log_likelihood(score, VPSDE(), _x())
    t_bad = float(str(err.value).split("at t=")[1].split(" ")[0])
    assert 0.5 < t_bad <= 1.0


def test_stiff_score_underflow_becomes_floating_point_error():
    """A finite score with a 1e16 jump at t = 0.5 drives dopri5's dt below float64's spacing
    at 0.5; the solver's assertion is re-raised with the time and the rtol/atol hint."""
    def score(x, t):
        return -x + 1e16 * (t > 0.5).to(x.dtype)[:, None]

    with pytest.raises(FloatingPointError, match=r"underflowed .* near t=0\.5 .* raise rtol/atol"):
        samplers.log_likelihood(score, VPSDE(), _x())


def test_nan_x_raises_value_error_naming_rows():
    x = _x(8)
    x[5, 1] = float("nan")
    x[6, 0] = float("inf")
    with pytest.raises(ValueError, match=r"x has 2 non-finite rows of 8 \(first: row 5\)"):
        samplers.log_likelihood(_std_normal_score, VPSDE(), x)


def test_integer_x_raises():
    x = torch.ones(4, 2, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"x must be a floating tensor .* torch\.int64"):
        samplers.log_likelihood(_std_normal_score, VPSDE(), x)


def test_x_without_data_dims_raises():
    with pytest.raises(ValueError, match=r"shape \(B, \*D\) .* got \(4,\)"):
        samplers.log_likelihood(_std_normal_score, VPSDE(), torch.zeros(4, dtype=torch.float64))
