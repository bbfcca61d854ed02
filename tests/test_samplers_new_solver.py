"""A new solver in one short function: Euler on the probability-flow ODE, written from the
core's pieces (time grid, PF-ODE velocity, per-step report, final denoise), registered and run
through `samplers.sample` with exact NFE, callbacks and early stopping; its error against the
closed-form flow map of Gaussian data halves when the steps double (first order)."""

import math

import pytest
import torch

import samplers
from samplers.grids import time_grid
from samplers.loop import EAGER
from samplers.steps import finish, velocity
from scorekit.processes import Process
from scorekit.scores import GaussianScore
from scorekit.sde import VPSDE

F64 = torch.float64


# --- the solver: everything a fixed-step method needs ------------------------------------------
def pf_euler(score, sde, x, *, steps=100, grid="logsnr", denoise="none", t_start=None,
             generator=None, loop=EAGER):
    """Euler steps on dx/dt = f - g^2 s / 2 from t_start (default T) to eps; x: (B, *D)."""
    process = Process(sde)
    ts = time_grid(process, steps, grid, t_start=t_start)
    t_vec = ts.to(x)
    for i in range(steps):
        t = t_vec[i].expand(x.shape[0])
        s = score(x, t)
        loop.report(i, t, x, s, process)
        x = x - (ts[i] - ts[i + 1]).item() * velocity(process, x, t, s)
    return finish(score, process, x, x, denoise), {"grid": grid}
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _registered():
    samplers.register("pf_euler", pf_euler)
    yield
    samplers.api._METHODS.pop("pf_euler")


def _gauss(sde, d=3):
    lam = torch.tensor([0.05, 0.4, 1.5], dtype=F64)[:d]
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(0),
                                       dtype=F64))
    return torch.tensor([0.5, -1.0, 0.3], dtype=F64)[:d], q, lam


def _flow_map(x_t, mean, q, lam, sde, t0, t1):
    """Exact PF-ODE map of N(mean, q diag(lam) q^T) data from t0 to t1 (written from the
    formulas: u_k^T (x - alpha mean) scales by sqrt(c_k(t1) / c_k(t0)), c = alpha^2 lam + s^2)."""
    def coef(t):
        beta = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t * t
        return math.exp(-0.5 * beta), math.sqrt(1 - math.exp(-beta))

    (a0, s0), (a1, s1) = coef(t0), coef(t1)
    r = torch.sqrt((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2))
    return a1 * mean + ((x_t - a0 * mean) @ q * r) @ q.T


def test_new_solver_is_first_order_against_the_exact_flow():
    sde = VPSDE()
    mean, q, lam = _gauss(sde)
    score = GaussianScore(mean, q @ torch.diag(lam) @ q.T, sde)
    x_t = torch.randn(256, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    exact = _flow_map(x_t, mean, q, lam, sde, sde.T, sde.eps)
    errs = []
    for n in (40, 80, 160):
        res = samplers.sample(score, sde, (256, 3), method="pf_euler", steps=n, dtype=F64,
                              x_init=x_t)
        assert res.nfe == n and (res.nfe_per_sample == n).all()
        errs.append((res.x - exact).norm(dim=1).mean().item())
    # Euler's global error is O(h): each doubling of the steps halves it (1.6-2.5 allows the
    # O(h^2) remainder at these step counts).
    assert all(1.6 < a / b < 2.5 for a, b in zip(errs, errs[1:], strict=False)), errs


def test_new_solver_gets_callbacks_and_stops_early():
    sde = VPSDE()
    mean, q, lam = _gauss(sde)
    score = GaussianScore(mean, q @ torch.diag(lam) @ q.T, sde)
    seen = []

    def callback(i, t, x, x0):
        seen.append((i, t[0].item(), x0))
        return i == 4

    res = samplers.sample(score, sde, (16, 3), method="pf_euler", steps=10, dtype=F64,
                          callback=callback, generator=torch.Generator().manual_seed(0))
    assert [s[0] for s in seen] == [0, 1, 2, 3, 4] and res.info["stopped_at_step"] == 4
    assert res.nfe == 5 and torch.equal(res.x, seen[-1][2])
    assert seen[0][1] == pytest.approx(sde.T) and seen[1][1] < seen[0][1]
