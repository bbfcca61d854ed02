"""Time grids: the one place that decides where a fixed-step solver evaluates the score.

A grid is a decreasing float64 tensor t_0 = t_start > t_1 > ... > t_N = t_end (N steps,
N + 1 points; by default from T to eps). Each kind is uniform in its own coordinate u in [0, 1]:

    "uniform"      t                              (score_sde's default)
    "quadratic"    sqrt(t - t_end)                (denser near the data)
    "edm"          s^(1/rho), s = sigma / alpha   (Karras et al. 2022, eq. 5; rho = 7)
    "logsnr"       log s = -lambda                (uniform in DPM-Solver's lambda_t)
    "interpolant"  tau = 1 / (1 + s)              (the closed-form sampler's interpolant time)

or the user's own points (any decreasing sequence from t_start to t_end), or the path of a JSON
file holding them (a grid written by `samplers.optimize_grid`, or a plain list). Noise levels
map back to t through the process (`Process.t_of_noise_level`), exactly for VP, VE and EDM and
by float64 bisection otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from samplers.plans import cached
from scorekit.processes import SDE, Process

__all__ = ["GRIDS", "TimeGrid", "time_grid", "load_grid", "GRID_FORMAT"]

GRIDS = ("uniform", "quadratic", "edm", "logsnr", "interpolant")
GRID_FORMAT = "scorekit-grid-1"  # the "format" field of a grid file
_END_TOL = 1e-9  # relative slack for a user grid's end points


@dataclass(frozen=True)
class TimeGrid:
    """A rule for placing N steps: a `kind` of `GRIDS` (with EDM's `rho`), or explicit `points`.

    `TimeGrid.of(grid)` accepts a kind name, a TimeGrid, a decreasing sequence / 1-D tensor
    of times, or the path of a grid file (`load_grid`); `build(process, steps, t_start,
    t_end)` returns the float64 grid.
    """

    kind: str = "uniform"
    rho: float = 7.0
    points: tuple[float, ...] | None = None

    @classmethod
    def of(cls, grid: str | TimeGrid | Sequence[float] | Tensor, rho: float = 7.0) -> TimeGrid:
        if isinstance(grid, TimeGrid):
            return grid
        if isinstance(grid, Path) or (isinstance(grid, str) and grid not in GRIDS
                                      and (grid.endswith(".json") or Path(grid).is_file())):
            grid = load_grid(grid)
        elif isinstance(grid, str):
            if grid not in GRIDS:
                raise ValueError(f"unknown grid {grid!r}; valid: {list(GRIDS)}, a decreasing "
                                 f"sequence of times, or a grid file (.json)")
            return cls(grid, float(rho))
        points = torch.as_tensor(grid, dtype=torch.float64)
        if points.dim() != 1 or points.numel() < 2:
            raise ValueError(f"a grid of times must be 1-D with at least 2 points, got shape "
                             f"{tuple(points.shape)}")
        if not bool(torch.isfinite(points).all()) or not bool((points[1:] < points[:-1]).all()):
            raise ValueError(f"a grid of times must be finite and strictly decreasing, got "
                             f"{points.tolist()}")
        return cls("user", float(rho), tuple(points.tolist()))

    @property
    def name(self) -> str:
        """The kind, or "user" for explicit points (what samplers report in `info["grid"]`)."""
        return self.kind

    def steps(self, steps: int | None, default: int) -> int:
        """Number of steps: `steps` if given, else the explicit points', else `default`."""
        if steps is not None:
            return steps
        return default if self.points is None else len(self.points) - 1

    def build(self, process: Process, steps: int, t_start: float | None = None,
              t_end: float | None = None) -> Tensor:
        """Decreasing float64 grid of steps + 1 points from t_start (default T) to t_end
        (default eps)."""
        return _build(process, self, steps, t_start, t_end)


@cached
def _build(process: Process, grid: TimeGrid, steps: int, t_start: float | None,
           t_end: float | None) -> Tensor:
    t0 = float(process.T if t_start is None else t_start)
    t1 = float(process.eps if t_end is None else t_end)
    if not t1 < t0:
        raise ValueError(f"grid needs t_end < t_start, got t_start={t0}, t_end={t1}")
    if grid.points is not None:
        return _user_grid(grid.points, steps, t0, t1)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if grid.kind == "uniform":
        ts = t0 + u * (t1 - t0)
    elif grid.kind == "quadratic":
        ts = t1 + (t0 - t1) * (1 - u) ** 2
    else:
        s0, s1 = process.noise_level(torch.tensor([t0, t1], dtype=torch.float64))
        if grid.kind == "edm":
            r = 1 / grid.rho
            level = (s0 ** r + u * (s1 ** r - s0 ** r)) ** grid.rho
        elif grid.kind == "logsnr":
            level = torch.exp(torch.log(s0) + u * (torch.log(s1) - torch.log(s0)))
        else:  # interpolant: tau = 1 / (1 + s) uniform
            tau0, tau1 = 1 / (1 + s0), 1 / (1 + s1)
            tau = tau0 + u * (tau1 - tau0)
            level = (1 - tau) / tau
        ts = process.t_of_noise_level(level)
    ts[0], ts[-1] = t0, t1  # exact end points whatever the round trip did
    return ts


def _user_grid(points: tuple[float, ...], steps: int, t0: float, t1: float) -> Tensor:
    if len(points) != steps + 1:
        raise ValueError(f"the grid has {len(points) - 1} steps ({len(points)} points) but "
                         f"steps={steps}; omit steps or make them agree")
    ts = torch.tensor(points, dtype=torch.float64)
    for name, have, want in (("first", points[0], t0), ("last", points[-1], t1)):
        if abs(have - want) > _END_TOL * max(abs(want), abs(t0)):
            raise ValueError(f"the grid's {name} point {have:g} must be t = {want:g} (the "
                             f"{'start' if name == 'first' else 'end'} of the solve)")
    ts[0], ts[-1] = t0, t1
    return ts


def time_grid(sde: SDE | Process, steps: int, kind: str | TimeGrid | Sequence[float] = "uniform",
              t_start: float | None = None, t_end: float | None = None,
              rho: float = 7.0) -> Tensor:
    """Decreasing float64 grid t_0 = t_start > ... > t_steps = t_end (steps + 1 points) of the
    kind (or user points) `kind`; see the module docstring."""
    process = sde if isinstance(sde, Process) else Process(sde)
    return TimeGrid.of(kind, rho).build(process, steps, t_start, t_end)


def load_grid(path: str | Path) -> list[float]:
    """The times of a grid file: one written by `samplers.optimize_grid` ({"format":
    "scorekit-grid-1", "times": [...], ...}) or a JSON list of decreasing times."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"grid file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"grid file {path} is not JSON: {err}") from None
    if isinstance(data, dict):
        if data.get("format") != GRID_FORMAT or "times" not in data:
            raise ValueError(f"{path} is not a grid file (expected format {GRID_FORMAT!r} with "
                             f"'times')")
        data = data["times"]
    if not isinstance(data, list) or not all(isinstance(v, (int, float)) for v in data):
        raise ValueError(f"{path} must hold a list of times")
    return [float(v) for v in data]
