"""Reused step plans: a cached plan gives the same samples as a fresh build, a changed process
attribute is a new key (never a stale table), uncacheable processes are rebuilt, and the cache
stays bounded."""

import pytest
import torch

import samplers
from samplers import plans
from scorekit.scores import GaussianScore
from scorekit.sde import EDMSDE, VPSDE


@pytest.fixture(autouse=True)
def _fresh():
    plans.clear_plans()
    yield
    plans.clear_plans()


def _draw(sde, method, steps, seed=0, **opts):
    score = GaussianScore(torch.zeros(3), torch.eye(3) * 0.5, sde)
    g = torch.Generator().manual_seed(seed)
    return samplers.sample(score, sde, (64, 3), method=method, steps=steps, generator=g,
                           **opts).x


@pytest.mark.parametrize("method,sde,opts", [
    ("em", VPSDE(), {}), ("pc", VPSDE(), {"snr": 0.1}), ("heun", EDMSDE(), {}),
    ("em", EDMSDE(), {"grid": "edm"}), ("pc", VPSDE(), {"predictor": "em"})])
def test_cached_plan_reproduces_fresh_build(method, sde, opts):
    """Same seed: the solve that builds the plan, the one that reuses it, and one after the
    cache is cleared are bit-identical; the reuse adds no new plan."""
    first = _draw(sde, method, 7, **opts)
    held = plans.cached_plans()
    assert held > 0
    again = _draw(sde, method, 7, **opts)
    assert plans.cached_plans() == held
    plans.clear_plans()
    fresh = _draw(sde, method, 7, **opts)
    assert torch.equal(first, again) and torch.equal(first, fresh)


def test_changed_attribute_is_a_new_plan_not_a_stale_one():
    """Mutating beta_max after a solve: the next solve matches a process built with the new
    value (and differs from the old), so a cached table is never reused for other parameters."""
    sde = VPSDE()
    old = _draw(sde, "em", 5)
    sde.beta_max = 10.0
    mutated = _draw(sde, "em", 5)
    plans.clear_plans()
    rebuilt = _draw(VPSDE(beta_max=10.0), "em", 5)
    assert torch.equal(mutated, rebuilt) and not torch.equal(mutated, old)
    # Other steps / grid / t_start settings are other plans too.
    assert not torch.equal(_draw(sde, "em", 6), mutated)


def test_keys_and_bound():
    """Processes holding tensors are not cacheable; the cache evicts the least recently used
    plan beyond MAX_PLANS."""
    class Tabled(VPSDE):
        def __init__(self):
            super().__init__()
            self.table = torch.zeros(3)

    assert plans.process_key(Tabled()) is None
    assert plans.process_key(VPSDE()) == plans.process_key(VPSDE())
    assert plans.process_key(VPSDE()) != plans.process_key(VPSDE(beta_max=10.0))
    built = []
    for i in range(plans.MAX_PLANS + 5):
        plans.memo(("k", i), lambda i=i: built.append(i) or i)
    assert plans.cached_plans() == plans.MAX_PLANS
    plans.memo(("k", 0), lambda: built.append("again") or 0)   # evicted: built again
    plans.memo(("k", plans.MAX_PLANS + 4), lambda: built.append("hit") or 0)
    assert built[-1] == "again" and "hit" not in built
    assert plans.memo(None, lambda: "uncached") == "uncached" and plans.cached_plans() \
        == plans.MAX_PLANS
