"""Time grids tuned to a model and an NFE budget (in the spirit of "Align Your Steps",
Sabour et al. 2024, and LD3, Tong et al. 2024).

A deterministic solver with N evaluations maps each prior draw x_T to a sample; its error is
the distance to what a fine solve (the same solver at `ref_steps` evaluations, converged for
smooth flows) makes of the same x_T. `optimize_grid` moves the N - 2 interior grid points in
lambda = log(alpha / sigma), keeping both ends, to minimise the mean squared distance over a
fixed batch of prior draws (common random numbers make the objective a smooth deterministic
function of the grid), by Powell's derivative-free search from the best of the fixed grids
(logSNR-uniform, EDM's rho schedule, time-quadratic, time-uniform) under that objective and
from the logSNR grid, so the result is never worse than any of them on the tuning draws. The
grid is parameterised by softmax weights of the lambda increments, so it stays ordered. The
result is written as JSON and used with `samplers.sample(..., grid=<file>)` (Hydra:
`sampler.grid=<file>`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from samplers.api import sample
from samplers.grids import GRID_FORMAT, time_grid
from scorekit import io
from scorekit.processes import SDE, Process, Score

__all__ = ["optimize_grid", "DETERMINISTIC"]

# method -> grid points for an NFE budget (the counted NFE equals the budget).
DETERMINISTIC = {"dpm_solver": lambda nfe: nfe, "unipc": lambda nfe: nfe,
                 "heun": lambda nfe: (nfe + 1) // 2, "closed_form": lambda nfe: nfe}
# The fixed grids the search starts from (the best of them under the objective).
FIXED = ("logsnr", "edm", "quadratic", "uniform")


def _theta(process: Process, ts: Tensor) -> Tensor:
    """The softmax weights (log lambda increments) of the grid `ts`."""
    lam = process.lambda_(ts)
    return torch.log(torch.diff(lam).clamp_min(1e-300))


def _grid(process: Process, theta: Tensor, lam0: float, lam1: float, t0: float,
          t1: float) -> Tensor:
    """Times from t0 to t1 whose lambda increments are softmax(theta) of lam1 - lam0."""
    inc = torch.softmax(theta, 0)
    lam = lam0 + (lam1 - lam0) * torch.cat([inc.new_zeros(1), inc.cumsum(0)])
    ts = process.t_of_lambda(lam)
    ts[0], ts[-1] = t0, t1
    return ts


def optimize_grid(score: Score, sde: SDE, nfe: int, method: str = "dpm_solver", *,
                  x_data: Tensor | None = None, teleport=None, t_start: float | str | None = None,
                  n: int = 512, sample_shape: tuple[int, ...] | None = None,
                  ref_steps: int = 200, max_evals: int = 400, seed: int = 0,
                  path: str | Path | None = None, device=None,
                  dtype: torch.dtype = torch.float32, progress: bool = True, **options) -> dict:
    """Tune the grid of deterministic `method` ("dpm_solver", "unipc", "heun", "closed_form")
    at `nfe` evaluations for `score`; returns {"times", "error", "error_uniform", "gain",
    "errors_fixed", "start", "gain_best_fixed", ...} and writes it to `path` (JSON) if given.

    The error is the mean squared distance per element to the fine solve (`ref_steps`
    evaluations) of the same `n` prior draws, divided by the variance of `x_data` when given
    (scale-free; else by 1); "error_uniform" is that of the logSNR-uniform grid ("gain" = it /
    "error"), "errors_fixed" those of every fixed grid, "start" the best of them, where one
    search starts, the other from logSNR ("gain_best_fixed" = its error / "error").
    `teleport` (a GaussianTeleport) tunes the grid of a teleported start, from `t_start` (a
    time, or "auto"/None: the teleport's suggestion, as `samplers.sample` picks it).
    `sample_shape` (default: x_data's, else the teleport's) is one sample's shape; `options`
    go to the method (e.g. order=3). Cost: about `max_evals` x nfe x n score evaluations.
    """
    if method not in DETERMINISTIC:
        raise ValueError(f"optimize_grid tunes the deterministic methods {sorted(DETERMINISTIC)}"
                         f", got {method!r}")
    if "grid" in options or "steps" in options:
        raise ValueError("optimize_grid chooses the grid and the steps itself (from nfe)")
    points = DETERMINISTIC[method](nfe)
    if points < 3:
        raise ValueError(f"{method} at nfe={nfe} has {points} grid points; at least 3 are "
                         "needed for an interior point to move")
    if ref_steps <= nfe:
        raise ValueError(f"ref_steps={ref_steps} must exceed nfe={nfe} (the reference is a "
                         "fine solve)")
    if sample_shape is None:
        if x_data is not None:
            sample_shape = tuple(x_data.shape[1:])
        elif teleport is not None:
            sample_shape = tuple(teleport.sample_shape)
        else:
            raise ValueError("optimize_grid needs sample_shape, x_data or teleport")
    if teleport is not None and t_start in (None, "auto"):
        t_start, _ = teleport.suggest_t_start(score, generator=torch.Generator().manual_seed(0))
    t0 = float(sde.T if t_start is None else t_start)
    scale = float(x_data.double().var(0).mean()) if x_data is not None else 1.0
    process = Process(sde)
    g = torch.Generator(device=device or "cpu").manual_seed(seed)
    x_t = sde.prior_sample((n, *sample_shape), generator=g, device=device, dtype=dtype)
    common = {"x_init": x_t, "dtype": dtype, "device": device, **options}
    if teleport is not None:
        common.update(teleport=teleport, t_start=t0)
    ref = sample(score, sde, x_t.shape, method=method, steps=ref_steps, **common).x
    lam0, lam1 = process.lambda_(torch.tensor([t0, sde.eps], dtype=torch.float64)).tolist()
    bar = tqdm(total=max_evals + len(FIXED), desc=f"grid {method} nfe={nfe}", disable=not progress,
               leave=False)

    def error(theta: Tensor) -> float:
        ts = _grid(process, theta, lam0, lam1, t0, sde.eps)
        if not bool((ts[1:] < ts[:-1]).all()):
            return math.inf
        out = sample(score, sde, x_t.shape, method=method, grid=ts, **common).x
        return float((out - ref).double().pow(2).mean()) / scale

    history: list[float] = []

    def objective(v) -> float:
        e = error(torch.as_tensor(v, dtype=torch.float64))
        history.append(e)
        bar.update(1)
        bar.set_postfix(best=f"{min(history):.3g}", refresh=False)
        return e

    from scipy.optimize import minimize  # here: half a second of import for `import samplers`

    starts = {kind: _theta(process, time_grid(process, points - 1, kind, t_start=t0))
              for kind in FIXED}
    fixed = {kind: objective(theta.numpy()) for kind, theta in starts.items()}
    start = min(fixed, key=fixed.get)
    base = fixed["logsnr"]
    # Powell from the best fixed grid and from the logSNR grid (the landscape has several
    # basins: on a digits UNet at 5 NFE the logSNR start ends 1.5x lower than the EDM one,
    # which starts lower), the evaluations split between them; the best end point wins.
    theta, err = starts[start], fixed[start]
    inits = dict.fromkeys((start, "logsnr"))
    for kind in inits:
        found = minimize(objective, starts[kind].numpy(), method="Powell",
                         options={"maxfev": max(1, max_evals // len(inits)), "xtol": 1e-3,
                                  "ftol": 1e-4})
        if found.fun < err:  # Powell does not end above its start; keep it if it stalled
            theta, err = torch.as_tensor(found.x, dtype=torch.float64), float(found.fun)
    bar.close()
    ts = _grid(process, theta, lam0, lam1, t0, sde.eps)
    result = {"format": GRID_FORMAT, "method": method, "nfe": nfe, "options": options,
              "sde": repr(sde), "t_start": t0, "teleport": teleport is not None,
              "times": ts.tolist(), "error": err, "error_uniform": base,
              "gain": base / err if err > 0 else math.inf, "errors_fixed": fixed,
              "start": start,
              "gain_best_fixed": fixed[start] / err if err > 0 else math.inf,
              "evaluations": len(history),
              "ref_steps": ref_steps, "n": n, "seed": seed, "dtype": str(dtype)}
    if path is not None:
        io.write_text_atomic(path, json.dumps(result, indent=2))
    return result
