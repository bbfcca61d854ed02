"""The probability-flow ODE dx/dt = f(x, t) - g(t)^2 s(x, t) / 2 (Song et al. 2021, eq. 13),
integrated by any torchdiffeq solver from t_start (default T) down to eps."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from samplers.grids import time_grid
from samplers.loop import EAGER, Loop
from samplers.steps import DENOISE, check_choice, finish, velocity
from scorekit.processes import SDE, Process, Score

__all__ = ["probability_flow", "ProbabilityFlow", "check_solver", "FIXED_SOLVERS"]

FIXED_SOLVERS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams", "heun2",
                 "heun3", "fehlberg2")


def _torchdiffeq_solvers() -> list[str]:
    from torchdiffeq._impl.odeint import SOLVERS

    return sorted(SOLVERS)


def check_solver(solver: str, rtol: float, atol: float) -> None:
    """Validate ODE solver options with messages naming the bad value."""
    if solver not in _torchdiffeq_solvers():
        raise ValueError(f"unknown ODE solver {solver!r}; torchdiffeq methods: "
                         f"{_torchdiffeq_solvers()}")
    if not rtol > 0:
        raise ValueError(f"rtol must be > 0, got {rtol}")
    if not atol > 0:
        raise ValueError(f"atol must be > 0, got {atol}")


class ProbabilityFlow(nn.Module):
    """PF-ODE right-hand side for torchdiffeq, t: 0-dim tensor, y: (B, *D).

    t is clamped to [eps, T]: adaptive solvers probe past the end point, where VP's sigma_t^2
    turns negative (observed: evaluations at t = -0.018 with dopri5 to eps = 1e-3).
    Counts accepted and rejected steps through torchdiffeq's callbacks, and reports each step to
    `loop` (the state at the step's start and the score there, which the solver evaluated).
    """

    def __init__(self, score: Score, sde: SDE, loop: Loop = EAGER, fixed: bool = False,
                 t_start: float | None = None):
        super().__init__()
        self.score, self.process, self.loop, self.fixed = score, Process(sde), loop, fixed
        self.t_start = float(sde.T if t_start is None else t_start)
        self.accepted = 0
        self.rejected = 0
        # (y, t, s) of the latest evaluation, and of the one at the current step's start (for
        # FSAL solvers such as dopri5, the last stage of the previous accepted step).
        self._last: tuple[Tensor, Tensor, Tensor] | None = None
        self._start: tuple[Tensor, Tensor, Tensor] | None = None
        self._pending: Tensor | None = None  # fixed-step solvers: the next step's start

    def velocity(self, t: Tensor, y: Tensor) -> Tensor:
        tt = t.clamp(self.process.eps, self.process.T).to(y.dtype).expand(y.shape[0])
        s = self.score(y, tt)
        if self.loop.active:
            self._last = (y, tt, s)
            self._start = self._start or self._last
            if self._pending is y:
                self._pending = None
                self.loop.report(self.accepted - 1, tt, y, s, self.process)
        return velocity(self.process, y, tt, s)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.velocity(t, y)

    def _progress(self, t: Tensor) -> None:
        span = self.t_start - self.process.eps
        self.loop.advance((self.t_start - float(t)) / span)

    def callback_step(self, t0, y0, dt) -> None:  # noqa: D102 (torchdiffeq hook)
        if self.fixed:  # called before each step; its first evaluation is at (t0, y0)
            self._pending = y0
            self.accepted += 1
            self._progress(t0 + dt)

    def callback_accept_step(self, t0, y0, dt) -> None:  # noqa: D102
        if self.loop.active:
            y, tt, s = self._start
            if y is y0:  # the step's first stage (initial or FSAL) evaluated the score at y0
                self.loop.report(self.accepted, tt, y0, s, self.process)
            else:  # a solver without first-same-as-last: no score at y0 to report
                self.loop.report(self.accepted, t0.to(y0.dtype).expand(y0.shape[0]), y0)
            self._start = self._last
        self.accepted += 1
        self._progress(t0 + dt)

    def callback_reject_step(self, t0, y0, dt) -> None:  # noqa: D102
        self.rejected += 1


def _per_sample_rms_norm(shape: tuple[int, ...]):
    """torchdiffeq norm: the max over samples of each sample's RMS, so every sample meets tol."""
    def norm(v: Tensor) -> Tensor:
        return v.reshape(shape[0], -1).pow(2).mean(1).sqrt().max()
    return norm


def probability_flow(score: Score, sde: SDE, x: Tensor, *, solver: str = "dopri5",
                     rtol: float = 1e-5, atol: float = 1e-5, steps: int | None = None,
                     per_sample_norm: bool = False, denoise: str = "none",
                     t_start: float | None = None, generator: torch.Generator | None = None,
                     loop: Loop = EAGER) -> tuple[Tensor, dict]:
    """Integrate the PF-ODE from t_start (default T) to eps with torchdiffeq; x: (B, *D).

    Adaptive solvers (dopri5, ...) use rtol/atol (default 1e-5 as score_sde, not torchdiffeq's
    1e-7/1e-9 that a float32 network cannot meet); fixed-step ones (euler, rk4, ...) take
    `steps` uniform steps. torchdiffeq's error norm is an RMS over the whole batch;
    `per_sample_norm=True` makes every sample meet the tolerance instead.
    """
    from torchdiffeq import odeint

    check_solver(solver, rtol, atol)
    check_choice(denoise, DENOISE, "denoise")
    fixed = solver in FIXED_SOLVERS
    func = ProbabilityFlow(score, sde, loop, fixed, t_start)
    options: dict = {}
    if per_sample_norm:
        options["norm"] = _per_sample_rms_norm(tuple(x.shape))
    if steps is not None and not fixed:
        raise ValueError(f"steps={steps} applies to fixed-step solvers only; {solver!r} is "
                         f"adaptive (set rtol/atol instead)")
    if fixed:
        # Fixed-step solvers step between the output times, so the grid is the step grid.
        ts = time_grid(sde, steps if steps is not None else 100, "uniform", t_start=t_start)
    else:
        ts = torch.tensor([sde.T if t_start is None else t_start, sde.eps], dtype=torch.float64)
    ts = ts.to(device=x.device, dtype=x.dtype)
    out = odeint(func, x, ts, method=solver, rtol=rtol, atol=atol, options=options)[-1]
    loop.close()
    info = {"solver": solver, "rtol": rtol, "atol": atol, "accepted_steps": func.accepted,
            "rejected_steps": func.rejected}
    return finish(score, func.process, out, out, denoise), info
