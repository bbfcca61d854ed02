"""The closed-form diffusion sampler (Scarvelis, Borde & Solomon 2023): Euler on the velocity of
the interpolant z = tau x0 + (1 - tau) noise (data at tau = 1), uniform in tau.

Any linear process maps onto that interpolant by matching noise levels, sigma/alpha = (1 - tau)/tau,
and one Euler step of dz/dtau = (m - z)/(1 - tau) is, in any process's variables, the step
x' = alpha' m + sigma' (x - alpha m)/sigma with m = (x + sigma^2 s)/alpha (the same line in
(x/alpha, sigma/alpha) coordinates, i.e. DDIM: `samplers.steps.ddim_coefficients`), so the
paper's sampler runs on any `sde` and any score; with `EmpiricalScore(smoothing=...)` it is the
paper's smoothed closed-form model. Start later than T with `teleport=`/`t_start=` (the
moment-matched Gaussian start, §7.1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from samplers.grids import time_grid
from samplers.loop import EAGER, Loop
from samplers.steps import check_choice, ddim_coefficients, finish
from scorekit.processes import Process, Score, compute_dtype

__all__ = ["closed_form"]


def closed_form(score: Score, sde, x: Tensor, *, steps: int = 100, denoise: str = "tweedie",
                t_start: float | None = None, generator: torch.Generator | None = None,
                loop: Loop = EAGER) -> tuple[Tensor, dict]:
    """Euler on the interpolant velocity from x at t_start (default T) to eps; x: (B, *D).

    denoise: "tweedie" returns the posterior mean at eps (+1 NFE; the paper's end point tau = 1),
    "none" the state at eps. Deterministic: `generator` is unused.
    """
    check_choice(denoise, ("tweedie", "none"), "denoise")
    process = Process(sde)
    ts = time_grid(process, steps, "interpolant", t_start=t_start)
    k1, k2 = ddim_coefficients(process, ts)
    t_vec = ts.to(device=x.device, dtype=compute_dtype(x.dtype))
    for i in loop.range(steps):
        t = t_vec[i].expand(x.shape[0])
        s = score(x, t)
        loop.report(i, t, x, s, process)
        x = k1[i] * x + k2[i] * s
    return finish(score, process, x, x, denoise), {"grid": "interpolant"}
