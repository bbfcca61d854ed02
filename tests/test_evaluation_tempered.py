"""Evaluation of FKC's anneal mode against its target p^beta, not p: exact draws of p^beta by
importance resampling, and the separated-mode limit as a mixture, against closed forms."""

import math

import pytest
import torch
from _config import compose_config as _cfg

from scorekit.evaluation.tempered import tempered_beta, tempered_draws, tempered_mixture
from scorekit.scores import GMMScore
from scorekit.sde import VPSDE
from scorekit.train import Trainer


def _gmm(weights, means, stds):
    k = len(weights)
    covs = torch.stack([torch.eye(1, dtype=torch.float64) * s**2 for s in stds])
    return GMMScore(torch.tensor(weights), torch.tensor(means).reshape(k, 1), covs, VPSDE())


def test_draws_of_a_tempered_gaussian_have_variance_over_beta():
    """N(0, s^2)^beta is N(0, s^2 / beta): sample variance within 5 standard errors
    (SE of a normal sample variance: var sqrt(2 / n))."""
    s, beta, n = 1.5, 2.0, 20000
    x = tempered_draws(_gmm([1.0], [0.0], [s]), beta, n, torch.Generator().manual_seed(0))
    var = s**2 / beta
    assert abs(float(x.var()) - var) < 5 * var * math.sqrt(2 / n)
    assert abs(float(x.mean())) < 5 * math.sqrt(var / n)


def test_tempered_mode_weights_follow_w_to_the_beta():
    """Two far-apart modes of equal width, weights 0.8 / 0.2: p^2 puts 0.64 / 0.04 (normalised:
    0.941 / 0.059) on them; the draws agree within 4 binomial SE and the mixture exactly."""
    gmm, beta, n = _gmm([0.8, 0.2], [-10.0, 10.0], [1.0, 1.0]), 2.0, 20000
    want = 0.2**2 / (0.8**2 + 0.2**2)
    x = tempered_draws(gmm, beta, n, torch.Generator().manual_seed(1))
    frac = float((x[:, 0] > 0).double().mean())
    assert abs(frac - want) < 4 * math.sqrt(want * (1 - want) / n)
    mix = tempered_mixture(gmm, beta)
    assert mix.weights[1].item() == pytest.approx(want, rel=1e-12)
    assert torch.allclose(mix.covs, gmm.covs / beta)


def test_tempered_mixture_weights_include_the_width_factor():
    """Unequal widths: weight_k proportional to w_k^beta sigma_k^(1 - beta) in 1-D
    (|Sigma|^((1 - beta) / 2) with |Sigma| = sigma^2)."""
    gmm, beta = _gmm([0.5, 0.5], [-10.0, 10.0], [1.0, 2.0]), 3.0
    a, b = 0.5**beta * 1.0 ** (1 - beta), 0.5**beta * 2.0 ** (1 - beta)
    assert tempered_mixture(gmm, beta).weights[1].item() == pytest.approx(b / (a + b), rel=1e-12)


@pytest.mark.parametrize("section,beta", [({"method": "fkc", "beta": 2.0}, 2.0),
                                          ({"method": "fkc", "mode": "anneal", "beta": 1.0}, None),
                                          ({"method": "fkc", "mode": "product"}, None),
                                          ({"method": "em", "beta": 2.0}, None)])
def test_which_sections_target_p_beta(section, beta):
    assert tempered_beta(section) == beta


def test_fkc_evaluation_measures_against_p_beta(tmp_path):
    """`sampler=fkc sampler.beta=2` on the 0.5 / 0.3 / 0.2 mixture: metrics name the target p^2
    and the mode weights are compared with p^2's, not p's."""
    over = ["data=gmm3", "model=closed_form", "sampler=fkc", "sampler.steps=20",
            "sampler.n_corrector=0", "eval.n_samples=200", "eval.plot=false",
            "data.n_train=500", "data.n_test=200", "trainer.progress=false"]
    tr = Trainer(_cfg(over), run_dir=tmp_path / "run")
    tr.fit()
    m = tr.evaluate()
    assert m["target"] == "p^2"
    p = tr.data.exact_score(tr.sde)
    tempered = tempered_mixture(p, 2.0)
    assert len(m["mode_weights"]) == len(tempered.weights)
    # The metric is computed against p^2's weights: recompute both TVs from the sample weights.
    w_hat = torch.tensor(m["mode_weights"], dtype=torch.float64)
    tv = lambda w: float(0.5 * (w_hat - w).abs().sum())  # noqa: E731
    assert m["mode_weight_tv"] == pytest.approx(tv(tempered.weights))
    assert float((tempered.weights - p.weights).abs().sum()) > 0.1  # p^2's weights are not p's
    assert m["mode_weight_tv"] != pytest.approx(tv(p.weights))
