"""The closed-form diffusion sampler (Scarvelis, Borde & Solomon 2023): Euler on the velocity of
the interpolant z = tau x0 + (1 - tau) noise (data at tau = 1), uniform in tau.

Any linear process maps onto that interpolant by matching noise levels, sigma/alpha = (1 - tau)/tau,
and one Euler step of dz/dtau = (m - z)/(1 - tau) is, in any process's variables, the step
x' = alpha' m + sigma' (x - alpha m)/sigma with m = (x + sigma^2 s)/alpha (the same line in
(x/alpha, sigma/alpha) coordinates, i.e. DDIM), so the paper's sampler runs on any `sde` and any
score; with `EmpiricalScore(smoothing=...)` it is the paper's smoothed closed-form model.
Start later than T with `teleport=`/`t_start=` (the moment-matched Gaussian start, §7.1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from samplers.base import Score
from samplers.sde_solvers import _check_choice, _finish
from scorekit.sde import SDE

DENOISE = ("tweedie", "none")


def interpolant_grid(sde: SDE, steps: int, t_start: float | None = None) -> Tensor:
    """Decreasing float64 t grid (steps + 1) uniform in the interpolant time
    tau = 1 / (1 + sigma/alpha) from t_start (default T) to eps."""
    t0 = float(sde.T if t_start is None else t_start)
    lam = sde.noise_level(torch.tensor([t0, sde.eps], dtype=torch.float64))
    tau0, tau1 = (1 / (1 + lam)).tolist()
    tau = torch.linspace(tau0, tau1, steps + 1, dtype=torch.float64)
    grid = sde.t_of_noise_level((1 - tau) / tau)
    grid[0], grid[-1] = t0, sde.eps
    return grid


def closed_form(score: Score, sde: SDE, x: Tensor, *, steps: int = 100,
                denoise: str = "tweedie", t_start: float | None = None,
                generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Euler on the interpolant velocity from x at t_start (default T) to eps; x: (B, *D).

    denoise: "tweedie" returns the posterior mean at eps (+1 NFE; the paper's end point tau = 1),
    "none" the state at eps. Deterministic: `generator` is unused.
    """
    _check_choice(denoise, DENOISE, "denoise")
    ts = interpolant_grid(sde, steps, t_start)
    alpha, sigma = sde._marginal(ts)
    # x' = (alpha'/alpha) x + (alpha' sigma^2/alpha - sigma' sigma) s, coefficients in float64
    k1 = (alpha[1:] / alpha[:-1]).tolist()
    k2 = (alpha[1:] * sigma[:-1] ** 2 / alpha[:-1] - sigma[1:] * sigma[:-1]).tolist()
    t_vec = ts.to(device=x.device, dtype=x.dtype)
    for i in range(steps):
        x = k1[i] * x + k2[i] * score(x, t_vec[i].expand(x.shape[0]))
    return _finish(score, sde, x, x, denoise), {"grid": "interpolant"}
