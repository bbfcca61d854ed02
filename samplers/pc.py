"""Predictor–corrector sampling (Song et al. 2021, Alg. 2/3): at each t_i, Langevin corrector
steps at fixed t, then one predictor step t_i -> t_{i+1} (ancestral or Euler–Maruyama).

    x ~ prior;  for i in 0..N-1:
        repeat n_corrector:  x <- x + e s(x, t_i) + sqrt(2 e) z,  e = a_i 2 (snr |z| / |s|)^2
        x <- k1 x + k2 s(x, t_i) + k3 z        (the predictor's row of the step table)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from samplers.em import em_step
from samplers.grids import TimeGrid
from samplers.kernels import Steps, langevin_update
from samplers.loop import EAGER, Loop
from samplers.steps import DENOISE, check_choice, finish, pc_table
from scorekit.processes import Process, Score, compute_dtype

__all__ = ["predictor_corrector", "pc_loop", "check_pc_options", "PREDICTORS", "CORRECTORS"]

PREDICTORS = ("ancestral", "em")
CORRECTORS = ("langevin", "none")


def predictor_corrector(score: Score, sde, x: Tensor, *, steps: int | None = None, grid="uniform",
                        predictor: str = "ancestral", corrector: str = "langevin",
                        snr: float = 0.16, n_corrector: int = 1, snr_norm: str = "batch_mean",
                        denoise: str = "tweedie", t_start: float | None = None,
                        generator: torch.Generator | None = None,
                        use_triton: bool | None = None, loop: Loop = EAGER
                        ) -> tuple[Tensor, dict]:
    """Predictor–corrector sampling from t_start (default T) to eps: at each t_i, `n_corrector`
    Langevin steps then one predictor step t_i -> t_{i+1}. NFE = steps (n_corrector + 1) (+1 with
    Tweedie).

    snr_norm "batch_mean" (default, as score_sde) uses the batch-mean norms, so results depend
    slightly on the batch; "per_sample" makes each sample independent of the batch but is only
    safe in high dimension: in low d a sample near a mode has |s| ~ 0 and gets a huge step.
    VP + Langevin needs a much smaller snr (~0.01). use_triton as for "em".
    """
    check_pc_options(predictor, corrector, snr, n_corrector, snr_norm, denoise)
    process, grid = Process(sde), TimeGrid.of(grid)
    ts = grid.build(process, grid.steps(steps, 1000), t_start)
    n_corr = n_corrector if corrector == "langevin" else 0
    x, mean = pc_loop(score, process, x, ts, predictor, n_corr, snr, snr_norm, generator,
                      use_triton, loop, keep_mean=denoise == "mean")
    info = {"grid": grid.name, "predictor": predictor, "corrector": corrector, "snr": snr}
    return finish(score, process, x, mean, denoise), info


def check_pc_options(predictor: str, corrector: str, snr: float, n_corrector: int,
                     snr_norm: str, denoise: str) -> None:
    """Validate predictor–corrector options with messages naming the bad value."""
    check_choice(denoise, DENOISE, "denoise")
    check_choice(predictor, PREDICTORS, "predictor")
    check_choice(corrector, CORRECTORS, "corrector")
    check_choice(snr_norm, ("per_sample", "batch_mean"), "snr_norm")
    if n_corrector < 0 or (corrector != "none" and n_corrector < 1):
        raise ValueError(f"n_corrector must be >= 1 with a corrector, got {n_corrector}")
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")


def pc_loop(score: Score, process: Process, x: Tensor, ts: Tensor, predictor: str, n_corr: int,
            snr: float, snr_norm: str, generator: torch.Generator | None,
            use_triton: bool | None = None, loop: Loop = EAGER,
            project: Callable[[Tensor], Tensor] | None = None, max_step: float | None = None,
            keep_mean: bool = False) -> tuple[Tensor, Tensor]:
    """The predictor–corrector loop along the float64 grid ts; Langevin steps capped at
    `max_step`, `project` applied after every update. Returns x and (with keep_mean) the last
    predictor step's noise-free update (else x)."""
    table, rows = pc_table(process, ts, predictor, compute_dtype(x.dtype))
    st = Steps(table, ts, x, generator, use_triton, host_rows=rows)
    x = st.own(x)
    mean = st.buffer("mean", x) if keep_mean else x
    for i in loop.steps(st):
        t = st.time(i)
        for _ in range(n_corr):
            langevin_update(x, score(x, t), st, i, 3, snr, snr_norm, max_step)
            if project is not None:
                x.copy_(project(x))
        em_step(score, process, x, st, i, loop, mean if keep_mean else None, project)
    return x, mean
