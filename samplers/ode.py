"""Deterministic samplers: the probability-flow ODE through torchdiffeq, and EDM's Heun method.

PF-ODE: dx/dt = f_t x - 1/2 g(t)^2 s(x, t) (Song et al. 2021, eq. 13).
Heun works in EDM's rescaled variables (Karras et al. 2022, Alg. 1/2 with s(t) = alpha_t):
x~ = x / alpha_t and s = sigma_t / alpha_t, where every linear process obeys
dx~/ds = -sigma_t * score(x, t) = eps_hat(x, t) — nearly straight trajectories for any process.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch
from torch import Tensor, nn

from samplers.base import Score, time_grid
from samplers.kernels import Steps, heun_correct, heun_predict
from samplers.kernels.loop import Loop
from samplers.kernels.plans import memo, plan_key
from samplers.sde_solvers import DENOISE, _check_choice, _finish
from scorekit.sde import EDMSDE, SDE, _per_sample


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
    Counts accepted and rejected steps through torchdiffeq's callbacks.
    """

    def __init__(self, score: Score, sde: SDE):
        super().__init__()
        self.score, self.sde = score, sde
        self.accepted = 0
        self.rejected = 0

    def velocity(self, t: Tensor, y: Tensor) -> Tensor:
        tt = t.clamp(self.sde.eps, self.sde.T).to(y.dtype).expand(y.shape[0])
        g2 = self.sde._diffusion(tt) ** 2
        drift = _per_sample(self.sde._drift_rate(tt), y) * y
        return drift - 0.5 * _per_sample(g2, y) * self.score(y, tt)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        return self.velocity(t, y)

    def callback_accept_step(self, t0, y0, dt) -> None:  # noqa: D102 (torchdiffeq hook)
        self.accepted += 1

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
                     t_start: float | None = None,
                     generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Integrate the PF-ODE from t_start (default T) to eps with torchdiffeq; x: (B, *D).

    Adaptive solvers (dopri5, ...) use rtol/atol (default 1e-5 as score_sde, not torchdiffeq's
    1e-7/1e-9 that a float32 network cannot meet); fixed-step ones (euler, rk4, ...) take
    `steps` uniform steps. torchdiffeq's error norm is an RMS over the whole batch;
    `per_sample_norm=True` makes every sample meet the tolerance instead.
    """
    from torchdiffeq import odeint

    check_solver(solver, rtol, atol)
    _check_choice(denoise, DENOISE, "denoise")
    func = ProbabilityFlow(score, sde)
    options: dict = {}
    if per_sample_norm:
        options["norm"] = _per_sample_rms_norm(tuple(x.shape))
    fixed = solver in ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams",
                       "heun2", "heun3", "fehlberg2")
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
    info = {"solver": solver, "rtol": rtol, "atol": atol, "accepted_steps": func.accepted,
            "rejected_steps": func.rejected}
    return _finish(score, sde, out, out, denoise), info


def heun(score: Score, sde: SDE, x: Tensor, *, steps: int = 18, grid: str | None = None,
         rho: float = 7.0, denoise: str = "tweedie", t_start: float | None = None,
         generator: torch.Generator | None = None,
         use_triton: bool | None = None) -> tuple[Tensor, dict]:
    """EDM's deterministic Heun sampler (Karras et al. 2022, Alg. 1); x: (B, *D).

    `steps` grid points from t_start (default T) to eps, Heun steps between them in the rescaled
    variables, then EDM's final Euler step to noise level 0 — which is exactly the Tweedie denoiser
    — so NFE = 2 steps - 1. denoise="none" stops at eps instead (NFE = 2 steps - 2). `grid` defaults
    to "edm" (rho schedule in the noise level) for EDMSDE and "uniform" otherwise. use_triton: each
    Heun stage is one Triton kernel on CUDA (see `samplers.kernels`).
    """
    return heun_program(score, sde, x, steps=steps, grid=grid, rho=rho, denoise=denoise,
                        t_start=t_start, generator=generator, use_triton=use_triton).run()


def heun_program(score: Score, sde: SDE, x: Tensor, *, steps: int = 18, grid: str | None = None,
                 rho: float = 7.0, denoise: str = "tweedie", t_start: float | None = None,
                 generator: torch.Generator | None = None,
                 use_triton: bool | None = None) -> HeunLoop:
    """The "heun" solve as a `Loop` (run it, or capture it as a graph)."""
    _check_choice(denoise, ("tweedie", "none"), "denoise")
    if steps < 2:
        raise ValueError(f"heun needs steps >= 2 (grid points from T to eps), got {steps}")
    grid = grid or ("edm" if isinstance(sde, EDMSDE) else "uniform")
    key = plan_key("heun", sde, steps, grid, t_start, rho)
    ts = memo(None if key is None else ("grid", key),
              lambda: time_grid(sde, steps - 1, grid, t_start=t_start, rho=rho))
    return HeunLoop(score, sde, x, ts, denoise, use_triton, {"grid": grid}, key=key)


def _heun_table(sde: SDE, ts: Tensor) -> tuple:
    alpha, sigma = sde._marginal(ts)
    level = sigma / alpha
    ds = level[1:] - level[:-1]
    table = torch.stack([-sigma[:-1], ds, alpha[1:], -sigma[1:], 0.5 * ds], dim=1)
    # Host rows stay float64: the sampler always multiplied by these Python floats.
    return table, table.tolist(), level.tolist(), alpha.tolist(), sigma.tolist()


class HeunLoop(Loop):
    """Heun steps in x~ = x / alpha along the noise levels s_i = sigma_i / alpha_i of the grid ts,
    with slopes d = dx~/ds = -sigma_i score(alpha_i x~, t_i). Row i of the table:
    (-sigma_i, ds_i, alpha_{i+1}, -sigma_{i+1}, ds_i / 2), ds_i = s_{i+1} - s_i."""

    def __init__(self, score: Score, sde: SDE, x: Tensor, ts: Tensor, denoise: str,
                 use_triton: bool | None, info: dict, key: Hashable | None = None):
        """`key`: a `plan_key` naming (sde, ts), to reuse the table; None builds it."""
        table, rows, self.level, self.alpha, self.sigma = memo(
            None if key is None else ("heun_table", key), lambda: _heun_table(sde, ts))
        self.steps = Steps(table, ts, x, None, use_triton, host_rows=rows, key=key)
        self.score, self.denoise, self.info = score, denoise, info
        self.x = x

    def prologue(self) -> None:
        self.xs = self.x / self.alpha[0]
        self.x_in = self.xs * self.alpha[0]

    def step(self, i: int) -> None:
        st = self.steps
        d1, x_in = heun_predict(self.xs, self.score(self.x_in, st.time(i)), st, i)
        self.x_in = heun_correct(self.xs, d1, self.score(x_in, st.time(i, ahead=1)), st, i)

    def finish(self) -> Tensor:
        if self.denoise == "tweedie":  # Euler step from s(eps) to 0: x~ - s * eps_hat = E[x0 | x]
            d = -self.sigma[-1] * self.score(self.x_in, self.steps.times[-1])
            return self.xs - self.level[-1] * d
        return self.xs * self.alpha[-1]
