"""The hot-loop benchmark's contenders sample the same process and are counted alike.

Data N(0, I) under VP has the exact score -x at every t, so every contender should end at
variance 1 up to its own discretisation error:
- EM-type loops (plain, torchsde, scorekit): the reverse step x <- (1 + h b/2) x - h b x + ...
  has variance error O(b h) per step that decays with the process; measured about 0.01 at
  100 steps. The sample variance of n = 16384 draws has standard error sqrt(2/n) = 0.011, so
  the tolerance 0.06 is the bias bound plus 4 standard errors.
- diffusers' Euler-ancestral steps in VE form have the closed-form variance recursion
  v' = ((1 + s'^2)/(1 + s^2))^2 v + s_up^2 (exact Gaussian denoiser), which ends well below
  1 at few steps: its sample variance must match that recursion, not 1.
"""

import math

import pytest
import torch

from benchmarks.hot_loop import (
    ExactScore,
    contenders,
    diffusers_ancestral,
    headline,
    plain_em,
    run_config,
    scorekit_em,
    torchsde_em,
)
from scorekit.sde import VPSDE

N_DRAWS, STEPS = 16384, 100
SE = math.sqrt(2 / N_DRAWS)


def _variance(fn, steps=STEPS):
    g = torch.Generator().manual_seed(0)
    return fn(ExactScore(), VPSDE(), (N_DRAWS, 2), steps, g).var(0)


@pytest.mark.parametrize("fn", [plain_em, torchsde_em])
def test_em_type_peers_reach_the_data_variance(fn):
    pytest.importorskip("torchsde")
    assert (_variance(fn) - 1).abs().max() < 0.01 + 4 * SE


def test_diffusers_peer_matches_its_closed_form_variance():
    pytest.importorskip("diffusers")
    from diffusers import EulerAncestralDiscreteScheduler

    from samplers.diffusers_adapter import trained_betas

    steps = 20
    sched = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, prediction_type="epsilon",
                                            trained_betas=trained_betas(VPSDE()))
    sched.set_timesteps(steps)
    sig = sched.sigmas.double().tolist()
    v = sig[0] ** 2 + 1
    for s, s_next in zip(sig[:-1], sig[1:], strict=True):
        up2 = s_next**2 * (s**2 - s_next**2) / s**2
        v = ((1 + s_next**2) / (1 + s**2)) ** 2 * v + up2
    got = _variance(diffusers_ancestral, steps)
    assert v < 0.9   # the method's own bias at 20 steps, not a set-up error
    assert (got - v).abs().max() < 4 * SE * v


def test_scorekit_matches_the_plain_loop_and_counts():
    """scorekit's EM is the plain loop's update (same noise stream) up to float rounding;
    run_config counts NFE per sample (torchsde: one extra shape-check call) and pairs ratios."""
    g = torch.Generator().manual_seed(0)
    plain = plain_em(ExactScore(), VPSDE(), (256, 2), 10, g)
    import samplers

    g = torch.Generator().manual_seed(0)
    ours = samplers.sample(ExactScore(), VPSDE(), (256, 2), method="em", steps=10,
                           denoise="none", generator=g).x
    torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    which = {k: v for k, v in contenders("cpu").items() if k != "scorekit+compile"}
    rows = run_config("exact", 64, 5, "cpu", 2, which)
    nfe = {r["contender"]: r["nfe"] for r in rows if r["status"] == "ok"}
    assert nfe["plain"] == 5 and nfe["scorekit"] == 5
    if "torchsde" in nfe:
        assert nfe["torchsde"] == 6
    assert all(r["vs_scorekit"] > 0 for r in rows if r["status"] == "ok")
    heads = headline(rows)
    assert {h["settings"] for h in heads} == {"exact score"}
    assert scorekit_em("eager")(ExactScore(), VPSDE(), (8, 2), 3,
                                torch.Generator().manual_seed(0)) == 3
