"""EDM's deterministic Heun sampler (Karras et al. 2022, Alg. 1 with s(t) = alpha_t).

In the rescaled variables x~ = x / alpha_t and noise level s = sigma_t / alpha_t every linear
process obeys dx~/ds = -sigma_t score(x, t) = eps_hat(x, t), with nearly straight trajectories:

    x~ = x / alpha_0;  for i in 0..N-1:
        d1 = eps_hat(alpha_i x~, t_i);  x~' = x~ + (s_{i+1} - s_i) d1              (Euler)
        d2 = eps_hat(alpha_{i+1} x~', t_{i+1});  x~ <- x~ + (s_{i+1} - s_i)(d1 + d2) / 2
    then EDM's last step, Euler from s_N to 0: x0 = x~ - s_N eps_hat (= Tweedie's mean).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from samplers.grids import TimeGrid
from samplers.kernels import Steps, heun_correct, heun_predict
from samplers.loop import EAGER, Loop
from samplers.steps import check_choice, heun_table
from scorekit.processes import EDMSDE, VPSDE, Process, Score, SubVPSDE
from scorekit.processes.predictions import eps_from_score, x0_from_eps

__all__ = ["heun", "heun_loop"]


def heun(score: Score, sde, x: Tensor, *, steps: int | None = None, grid=None, rho: float = 7.0,
         denoise: str = "tweedie", t_start: float | None = None,
         generator: torch.Generator | None = None, use_triton: bool | None = None,
         loop: Loop = EAGER) -> tuple[Tensor, dict]:
    """EDM's Heun sampler from x at t_start (default T) to eps; x: (B, *D).

    `steps` grid points (default 18, or those of an explicit `grid` of times) from t_start to
    eps, Heun steps between them, then EDM's final Euler step to noise level 0 — which is
    exactly the Tweedie denoiser — so NFE = 2 steps - 1. denoise="none" stops at eps instead
    (NFE = 2 steps - 2). `grid` defaults to the grid that measured best per process on the
    exact-score targets of `benchmarks/sampler_frontier.py`: "edm" (rho schedule in the noise
    level) for EDMSDE, "quadratic" in t for VP and sub-VP (16-D Gaussian at 19 NFE: error
    0.19 against 0.41 logSNR, 0.66 edm, 0.80 uniform), "uniform" otherwise (VE, where
    uniform t is uniform log-noise). use_triton: each Heun stage
    is one Triton kernel on CUDA (see `samplers.kernels`). Deterministic: `generator` is unused.
    """
    check_choice(denoise, ("tweedie", "none"), "denoise")
    if grid is None:
        grid = ("edm" if isinstance(sde, EDMSDE) else
                "quadratic" if isinstance(sde, (VPSDE, SubVPSDE)) else "uniform")
    grid = TimeGrid.of(grid, rho)
    steps = grid.steps(None if steps is None else steps - 1, 17) + 1  # grid points
    if steps < 2:
        raise ValueError(f"heun needs steps >= 2 (grid points from T to eps), got {steps}")
    process = Process(sde)
    ts = grid.build(process, steps - 1, t_start)
    _, _, level, alpha, sigma = heun_table(process, ts)
    xs, x_in, st = heun_loop(score, process, x, ts, use_triton, loop)
    if denoise == "tweedie":
        return x0_from_eps(xs, eps_from_score(score(x_in, st.times[-1]), sigma[-1]),
                           level[-1]), {"grid": grid.name}
    return xs * alpha[-1], {"grid": grid.name}


def heun_loop(score: Score, process: Process, x: Tensor, ts: Tensor,
              use_triton: bool | None = None, loop: Loop = EAGER,
              project: Callable[[Tensor], Tensor] | None = None
              ) -> tuple[Tensor, Tensor, Steps]:
    """Heun steps along the float64 grid ts (rows of `heun_table`). `project` (the fold of a
    reflected process, whose alpha is 1) maps each stage's result back into the domain.
    Returns (x~ at ts[-1], the score input alpha_N x~, the solve's Steps)."""
    table, rows, level, alpha, sigma = heun_table(process, ts)
    st = Steps(table, ts, x, None, use_triton, host_rows=rows, noise=False)
    xs = (x / alpha[0]).contiguous()  # the kernels index flat memory
    x_in = xs * alpha[0]
    for i in loop.steps(st):
        t = st.time(i)
        s1 = score(x_in, t)
        loop.report(i, t, x_in, s1, process)
        d1, x_next = heun_predict(xs, s1, st, i)
        if project is not None:
            x_next = project(x_next)
        x_in = heun_correct(xs, d1, score(x_next, st.time(i, ahead=1)), st, i)
        if project is not None:
            xs.copy_(project(xs))
            x_in = xs
    return xs, x_in, st
