"""Euler–Maruyama on the reverse-time SDE (Song et al. 2021, eq. 6; `samplers.steps`).

    x ~ prior;  for i in 0..N-1:  x <- x + h_i (g^2 s(x, t_i) - f) + g sqrt(h_i) z
    then Tweedie's posterior mean at eps (+1 NFE), or the last step's mean, or x itself.

Every step coefficient comes from the float64 grid, so the loop does no host synchronisation;
on CUDA each update is one fused kernel (`samplers.kernels`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from samplers.grids import TimeGrid
from samplers.kernels import Steps, em_update
from samplers.loop import EAGER, Loop
from samplers.steps import DENOISE, check_choice, em_coefficients, finish, reverse_drift
from scorekit import rng
from scorekit.processes import Process, Score, compute_dtype

__all__ = ["euler_maruyama", "em_loop", "em_step"]

Project = Callable[[Tensor], Tensor] | None  # maps samples back onto the domain after a step


def euler_maruyama(score: Score, sde, x: Tensor, *, steps: int | None = None, grid="uniform",
                   denoise: str = "tweedie", t_start: float | None = None,
                   generator: torch.Generator | None = None, use_triton: bool | None = None,
                   loop: Loop = EAGER) -> tuple[Tensor, dict]:
    """Euler–Maruyama on the reverse SDE from x at t_start (default T) to eps; x: (B, *D).

    grid: a kind of `samplers.grids.GRIDS` or decreasing times. denoise: "tweedie" (posterior
    mean at eps, +1 NFE), "mean" (drop the last step's noise, score_sde's choice), "none". A
    non-linear-drift process (`sde.is_linear` False) takes the drift f(x, t) at each step and
    has no Tweedie step. use_triton: None fuses each step into one Triton kernel on CUDA
    (PyTorch ops on CPU), False never, True always (see `samplers.kernels`).
    """
    check_choice(denoise, DENOISE, "denoise")
    if not sde.is_linear and denoise == "tweedie":
        raise ValueError(f"denoise='tweedie' needs Gaussian transitions; {type(sde).__name__} "
                         "has a non-linear drift: use denoise='mean' or 'none'")
    process, grid = Process(sde), TimeGrid.of(grid)
    ts = grid.build(process, grid.steps(steps, 1000), t_start)
    if not sde.is_linear:
        return _nonlinear(score, process, x, ts, denoise, generator, loop), {"grid": grid.name}
    x, mean = em_loop(score, process, x, ts, em_coefficients(process, ts), generator,
                      use_triton, loop, keep_mean=denoise == "mean")
    return finish(score, process, x, mean, denoise), {"grid": grid.name}


def em_loop(score: Score, process: Process, x: Tensor, ts: Tensor, table: Tensor,
            generator: torch.Generator | None = None, use_triton: bool | None = None,
            loop: Loop = EAGER, project: Project = None, keep_mean: bool = False
            ) -> tuple[Tensor, Tensor]:
    """Steps x <- k1 x + k2 s(x, t_i) + k3 z along the float64 grid ts (rows of `table`: EM's
    or the ancestral step's); `project` (e.g. the fold into a box) maps x after every step.
    Returns x and, with keep_mean, the last step's noise-free update k1 x + k2 s (else x)."""
    st = Steps(table, ts, x, generator, use_triton)
    x = st.own(x)
    mean = st.buffer("mean", x) if keep_mean else x
    for i in loop.steps(st):
        em_step(score, process, x, st, i, loop, mean if keep_mean else None, project)
    return x, mean


def em_step(score: Score, process: Process, x: Tensor, st: Steps, i: int, loop: Loop,
            mean: Tensor | None = None, project: Project = None) -> None:
    """One step of `em_loop` on x in place (also the predictor of predictor–corrector)."""
    t = st.time(i)
    # The PyTorch path draws z before calling the score, as the samplers always have.
    z = None if st.fused else st.draw(x)
    s = score(x, t)
    loop.report(i, t, x, s, process)
    # The kernel path writes the mean every step, so every step is the same graph.
    write_mean = mean is not None and (st.fused or i == st.count - 1)
    em_update(x, s, st, i, noise=z, mean=mean if write_mean else None)
    if project is not None:
        x.copy_(project(x))


def _nonlinear(score: Score, process: Process, x: Tensor, ts: Tensor, denoise: str,
               generator: torch.Generator | None, loop: Loop) -> Tensor:
    """x <- x + h (g^2 s - f(x, t)) + g sqrt(h) z with the drift evaluated at x."""
    h = (ts[:-1] - ts[1:]).tolist()
    g = process.diffusion(ts[:-1]).tolist()
    t_vec = ts.to(device=x.device, dtype=compute_dtype(x.dtype))
    x_mean = x
    for i in loop.range(len(h)):
        t = t_vec[i].expand(x.shape[0])
        z = rng.randn(x.shape, generator, x.dtype, x.device)
        s = score(x, t)
        loop.report(i, t, x)
        x_mean = x + h[i] * reverse_drift(process, x, t, s)
        x = x_mean + g[i] * h[i] ** 0.5 * z
    return x_mean if denoise == "mean" else x
