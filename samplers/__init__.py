"""scorekit samplers: every method sees only `score(x, t)` and a process object.

    res = samplers.sample(score, sde, shape=(n, d), method="em", steps=500)
    res.x, res.nfe, res.nfe_per_sample, res.info
    res = samplers.fkc_sample([s1, s2], sde, (n, d), mode="product")   # weighted SMC

The core, one concept per module: `grids` (where steps go), `steps` (the step mathematics:
reverse-SDE and probability-flow drifts, coefficient tables, Langevin, the final denoise),
`loop` (per-step callback, progress, early stop), `result` (NFE counting), and one module per
solver (`em`, `pc`, `heun`, `ode`, `ggf`, `fkc`, `closed_form`, `reflected`, `jacobi`,
`diffusers_adapter`, and the multistep `dpm_solver` and `unipc` on `multistep`), with
`teleport`, `likelihood`, `stream` and `grid_opt` (grids tuned to a model) beside them.
`kernels` holds what makes the fixed-step loops fast (fused Triton updates, CUDA graphs,
torch.compile) behind the update functions the solvers call; `api` is `sample` and the method
registry.

A reflected process (`scorekit.reflected.ReflectedSDE`) is sampled by the folded steps of
`samplers.reflected`: "em" and "pc" become "reflected_em" and "reflected_pc" for it,
"reflected_ode" is its probability-flow ODE, and the other methods, which would leave the box,
are refused.
"""

from __future__ import annotations

from samplers.api import available, register, sample
from samplers.fkc import FKCResult, fkc_sample
from samplers.grid_opt import optimize_grid
from samplers.grids import GRIDS, TimeGrid, load_grid, time_grid
from samplers.kernels.graph import clear_graphs
from samplers.likelihood import bits_per_dim, log_likelihood
from samplers.loop import Loop, StopSampling
from samplers.result import CountingScore, FiniteGuard, NonFiniteError, SampleResult
from samplers.stream import load_samples, sample_to_disk
from samplers.teleport import GaussianTeleport
from scorekit.processes.predictions import tweedie

__all__ = ["sample", "available", "register", "SampleResult", "CountingScore", "time_grid",
           "TimeGrid", "GRIDS", "optimize_grid", "load_grid", "tweedie", "log_likelihood",
           "bits_per_dim", "GaussianTeleport", "fkc_sample", "FKCResult", "NonFiniteError",
           "FiniteGuard", "sample_to_disk", "load_samples", "clear_graphs", "Loop", "StopSampling"]
