"""DPM-Solver++ (Lu et al. 2022b): multistep exponential integrators of the probability-flow
ODE in data prediction, and its stochastic 2M variant, for every linear process.

In x~ = x / alpha along lambda = -log s (`samplers.multistep`), with h = lambda_{i+1} - lambda_i,
D_i the data prediction at step i and r = h_{i-1} / h:

    1st order (DDIM)   x~ <- (s_{i+1}/s_i) x~ + (1 - e^-h) D_i
    2M                 D_i replaced by (1 + 1/(2r)) D_i - 1/(2r) D_{i-1}           (Alg. 2)
    3M                 + phi2 d1 - 2 phi3 d2 with d1 ~ h D' and d2 ~ h^2 D''/2 the divided
                       differences of D_i, D_{i-1}, D_{i-2}; phi2 = (e^-h - 1)/h + 1,
                       phi3 = phi2/h - 1/2 (h phi2 and -h^2 phi3 are the exact weights of
                       h D' and h^2 D'' in the integral)
    SDE 2M             x~ <- (s_{i+1}/s_i) e^-h x~ + (1 - e^-2h)(D_i + (D_i - D_{i-1})/(2r))
                             + s_{i+1} sqrt(1 - e^-2h) z

The first steps use the orders their history allows. Grid: uniform in lambda ("logsnr") by
default; NFE = steps (the last evaluation is the final denoise at eps).

The 3M update differs from the published multistep one (the official code, diffusers,
k-diffusion's dpmpp_3m_sde at eta = 0), which weighs d2 by phi3 instead of 2 phi3: since d2
estimates half of h^2 D'', that update is only second order (error ratio 4.2 per doubling of
the steps on a Gaussian, against 18 here; tests/test_samplers_multistep.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from samplers.loop import EAGER, Loop
from samplers.multistep import auto_order, finish_path, setup
from scorekit import rng
from scorekit.processes import Score

__all__ = ["dpm_solver", "dpm_solver_sde", "ORDERS"]

ORDERS = (1, 2, 3)
# 16-D Gaussian (VP / VE / EDM), error at 12 -> 15 evaluations: 2M 0.054 / 0.053 / 0.077 ->
# 0.044 / 0.040 / 0.060, 3M 0.097 / 0.055 / 0.073 -> 0.031 / 0.021 / 0.032.
THIRD_ORDER_FROM = 15


def dpm_solver(score: Score, sde, x: Tensor, *, steps: int | None = None, order: int | None = None,
               grid="logsnr", lower_order_final: bool = False, denoise: str = "tweedie",
               t_start: float | None = None, generator: torch.Generator | None = None,
               loop: Loop = EAGER) -> tuple[Tensor, dict]:
    """DPM-Solver++(`order`M) from x at t_start (default T) to eps; x: (B, *D). `steps`
    (default 20) score evaluations, the last the Tweedie denoise at eps (denoise="none": the
    state at eps, steps - 1 evaluations). order: 1, 2 or 3; None picks 2 below 15 evaluations
    and 3 from 15 (what measures best: `THIRD_ORDER_FROM`).
    lower_order_final: first order on the last step (and at most second order on the one
    before), as diffusers does below 15 steps. Deterministic: `generator` is unused."""
    if order is not None and order not in ORDERS:
        raise ValueError(f"order must be one of {list(ORDERS)} or None, got {order!r}")
    path = setup(sde, x, steps, grid, t_start, 20, denoise, "dpm_solver")
    order = auto_order(order, path.n + 1, THIRD_ORDER_FROM)
    xt, hist = x / path.alpha[0], []
    for i in loop.range(path.n):
        hist = [path.denoised(score, xt, i, loop), *hist[:2]]
        k = min(order, i + 1, (path.n - i) if lower_order_final else order)
        xt = _step(xt, path.level[i + 1] / path.level[i], path.h(i),
                   [path.h(i - j) for j in range(1, k)], hist[:k])
    return finish_path(score, path, xt, denoise, loop), {"grid": path.grid, "order": order}


def _step(xt: Tensor, ratio: float, h: float, h_prev: list[float], d: list[Tensor]) -> Tensor:
    """One DPM-Solver++ step of order len(d) (d: D_i, D_{i-1}, ...; h_prev: h_{i-1}, ...)."""
    out = ratio * xt - math.expm1(-h) * d[0]
    if len(d) == 2:  # 2M: the paper's midpoint form
        r = h_prev[0] / h
        out = out - math.expm1(-h) / (2 * r) * (d[0] - d[1])
    elif len(d) == 3:  # 3M: divided differences of the last three predictions
        r0, r1 = h_prev[0] / h, h_prev[1] / h
        d1_0, d1_1 = (d[0] - d[1]) / r0, (d[1] - d[2]) / r1
        d1 = d1_0 + (d1_0 - d1_1) * (r0 / (r0 + r1))
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi2 = math.expm1(-h) / h + 1
        phi3 = phi2 / h - 0.5
        out = out + phi2 * d1 - 2 * phi3 * d2
    return out


def dpm_solver_sde(score: Score, sde, x: Tensor, *, steps: int | None = None, grid="logsnr",
                   denoise: str = "tweedie", t_start: float | None = None,
                   generator: torch.Generator | None = None, loop: Loop = EAGER
                   ) -> tuple[Tensor, dict]:
    """The stochastic DPM-Solver++(2M) SDE solver (Lu et al. 2022b, Appendix; the reverse SDE's
    exact Gaussian transition around a second-order data prediction) from x at t_start
    (default T) to eps; x: (B, *D). `steps` (default 20) evaluations, as for "dpm_solver"."""
    path = setup(sde, x, steps, grid, t_start, 20, denoise, "dpm_solver_sde")
    xt, prev = x / path.alpha[0], None
    for i in loop.range(path.n):
        d = path.denoised(score, xt, i, loop)
        h = path.h(i)
        keep = -math.expm1(-2 * h)  # 1 - e^-2h
        xt = (path.level[i + 1] / path.level[i] * math.exp(-h)) * xt + keep * d
        if prev is not None:
            xt = xt + keep / (2 * path.h(i - 1) / h) * (d - prev)
        z = rng.randn(xt.shape, generator, xt.dtype, xt.device)
        xt = xt + (path.level[i + 1] * math.sqrt(keep)) * z
        prev = d
    return finish_path(score, path, xt, denoise, loop), {"grid": path.grid}
