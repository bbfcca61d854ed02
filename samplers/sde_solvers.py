"""Reverse-time SDE samplers: Euler–Maruyama and predictor–corrector (Song et al. 2021).

Every step coefficient is computed once from the float64 grid, so the loops below do no host
synchronisation; each update is one fused kernel on CUDA (`samplers.kernels`), and the loops are
`Loop`s that `samplers.kernels.graph` can capture.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

import torch
from torch import Tensor

from samplers.base import Score, time_grid, tweedie
from samplers.kernels import Steps, em_update, langevin_update
from samplers.kernels.loop import Loop
from samplers.kernels.plans import memo, plan_key
from samplers.kernels.updates import langevin_move, langevin_step_size
from scorekit.sde import EDMSDE, SDE, VESDE, VPSDE

__all__ = ["euler_maruyama", "predictor_corrector", "em_program", "pc_program", "em_loop",
           "pc_loop", "langevin_step_size", "EMLoop", "PCLoop"]

DENOISE = ("tweedie", "mean", "none")
PREDICTORS = ("ancestral", "em")
CORRECTORS = ("langevin", "none")
Project = Callable[[Tensor], Tensor] | None  # maps samples back onto the domain after a step


def _check_choice(value: str, valid: tuple[str, ...], name: str) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")


def _em_coefficients(sde: SDE, grid: Tensor) -> Tensor:
    """Rows (k1, k2, k3) with x <- k1 x + k2 s + k3 z for the EM step t_i -> t_{i+1}: (N, 3).

    Reverse SDE step of length h: x + h (g^2 s - f_t x) + g sqrt(h) z.
    """
    t, h = grid[:-1], grid[:-1] - grid[1:]
    g = sde._diffusion(t)
    return torch.stack([1 - h * sde._drift_rate(t), h * g**2, g * h.sqrt()], dim=1)


def _ancestral_coefficients(sde: SDE, grid: Tensor) -> Tensor:
    """Discrete-consistent reverse-diffusion step on the actual grid: (N, 3) as above.

    VP: b = 1 - alpha_i^2/alpha_{i+1}^2, x <- (x + b s)/sqrt(1 - b) + sqrt(b) z (DDPM ancestral).
    VE/EDM and reflected VE: D = sigma_i^2 - sigma_{i+1}^2, x <- x + D s + sqrt(D) z. Other
    processes: EM.
    """
    a, s = sde._marginal(grid)
    if isinstance(sde, VPSDE):
        b = -torch.expm1(2 * (torch.log(a[:-1]) - torch.log(a[1:])))
        k1 = torch.rsqrt(1 - b)
        return torch.stack([k1, b * k1, b.sqrt()], dim=1)
    if isinstance(sde, (VESDE, EDMSDE)) or sde.is_reflected:
        dvar = s[:-1] ** 2 - s[1:] ** 2
        return torch.stack([torch.ones_like(dvar), dvar, dvar.sqrt()], dim=1)
    return _em_coefficients(sde, grid)


def _finish(score: Score, sde: SDE, x: Tensor, x_mean: Tensor, denoise: str) -> Tensor:
    if denoise == "tweedie":
        return tweedie(score, sde, x, sde.eps)
    return x_mean if denoise == "mean" else x


def euler_maruyama(score: Score, sde: SDE, x: Tensor, *, steps: int = 1000,
                   grid: str = "uniform", denoise: str = "tweedie", t_start: float | None = None,
                   generator: torch.Generator | None = None,
                   use_triton: bool | None = None) -> tuple[Tensor, dict]:
    """Euler–Maruyama on the reverse SDE from x at t_start (default T) to eps; x: (B, *D).

    denoise: "tweedie" (posterior mean at eps, +1 NFE), "mean" (drop the last step's noise,
    score_sde's choice), "none". A non-linear-drift process (`sde.is_linear` False) takes the
    drift f(x, t) at each step and has no Tweedie step. use_triton: None fuses each step into
    one Triton kernel on CUDA (PyTorch ops on CPU), False never, True always (see
    `samplers.kernels`).
    """
    _check_choice(denoise, DENOISE, "denoise")
    if not sde.is_linear and denoise == "tweedie":
        raise ValueError(f"denoise='tweedie' needs Gaussian transitions; {type(sde).__name__} "
                         "has a non-linear drift: use denoise='mean' or 'none'")
    if not sde.is_linear:
        ts = time_grid(sde, steps, grid, t_start=t_start)
        return _euler_maruyama_nonlinear(score, sde, x, ts, denoise, generator), {"grid": grid}
    return em_program(score, sde, x, steps=steps, grid=grid, denoise=denoise, t_start=t_start,
                      generator=generator, use_triton=use_triton).run()


def em_program(score: Score, sde: SDE, x: Tensor, *, steps: int = 1000, grid: str = "uniform",
               denoise: str = "tweedie", t_start: float | None = None,
               generator: torch.Generator | None = None,
               use_triton: bool | None = None) -> EMLoop:
    """The "em" solve of a linear process as a `Loop` (run it, or capture it as a graph)."""
    _check_choice(denoise, DENOISE, "denoise")
    if not sde.is_linear:
        raise ValueError(f"{type(sde).__name__} has a non-linear drift: its EM steps are not "
                         "a fixed affine update (no fused or captured loop)")
    key = plan_key("em", sde, steps, grid, t_start)
    ts, table = memo(key, lambda: _em_plan(sde, steps, grid, t_start))
    return EMLoop(score, sde, x, ts, generator, table=table, denoise=denoise,
                  use_triton=use_triton, info={"grid": grid}, key=key)


def _em_plan(sde: SDE, steps: int, grid: str, t_start: float | None) -> tuple[Tensor, Tensor]:
    ts = time_grid(sde, steps, grid, t_start=t_start)
    return ts, _em_coefficients(sde, ts)


class EMLoop(Loop):
    """Steps x <- k1 x + k2 s(x, t_i) + k3 z along the float64 grid ts (rows of `table`, EM's
    by default), updating `x` in place; `project` (e.g. the fold into a box) maps x after every
    step. `mean` is the last step's noise-free update k1 x + k2 s."""

    def __init__(self, score: Score, sde: SDE, x: Tensor, ts: Tensor,
                 generator: torch.Generator | None, *, table: Tensor | None = None,
                 project: Project = None, denoise: str = "none", use_triton: bool | None = None,
                 host_rows: list[list[float]] | None = None, info: dict | None = None,
                 key: Hashable | None = None):
        table = _em_coefficients(sde, ts) if table is None else table
        self.steps = Steps(table, ts, x, generator, use_triton, host_rows, key=key)
        self.score, self.sde, self.project, self.denoise = score, sde, project, denoise
        self.x = self.steps.own(x)
        self.mean = self.x
        self.info = info or {}

    def _keep(self) -> None:
        if self.project is not None:
            self.x.copy_(self.project(self.x))

    def _predict(self, i: int, t: Tensor) -> None:
        st = self.steps
        # The PyTorch path draws z before calling the score, as the samplers always have.
        z = None if st.fused else st.draw(self.x)
        s = self.score(self.x, t)
        # The kernel path writes the mean every step, so every step is the same graph.
        keep_mean = self.denoise == "mean" and (st.fused or i == st.count - 1)
        if keep_mean:
            self.mean = st.buffer("mean", self.x)
        em_update(self.x, s, st, i, noise=z, mean=self.mean if keep_mean else None)
        self._keep()

    def step(self, i: int) -> None:
        self._predict(i, self.steps.time(i))

    def finish(self) -> Tensor:
        return _finish(self.score, self.sde, self.x, self.mean, self.denoise)


def em_loop(score: Score, sde: SDE, x: Tensor, ts: Tensor, generator: torch.Generator | None,
            project: Project = None) -> tuple[Tensor, Tensor]:
    """EM steps along the float64 grid ts (linear drift); `project` (e.g. the fold into a box)
    maps x after every step. Returns x and the last step's noise-free mean."""
    loop = EMLoop(score, sde, x, ts, generator, project=project, denoise="mean")
    loop.run()
    return loop.x, loop.mean


def _euler_maruyama_nonlinear(score: Score, sde: SDE, x: Tensor, ts: Tensor, denoise: str,
                              generator: torch.Generator | None) -> Tensor:
    """Reverse EM step x + h (g^2 s - f(x, t)) + g sqrt(h) z with the drift evaluated at x."""
    h = (ts[:-1] - ts[1:]).tolist()
    g = sde._diffusion(ts[:-1]).tolist()
    t_vec = ts.to(device=x.device, dtype=x.dtype)
    x_mean = x
    for i in range(len(h)):
        t = t_vec[i].expand(x.shape[0])
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x_mean = x + h[i] * (g[i] ** 2 * score(x, t) - sde._drift(x, t))
        x = x_mean + g[i] * h[i] ** 0.5 * z
    return x_mean if denoise == "mean" else x


def _langevin(score: Score, x: Tensor, t: Tensor, a: float, snr: float, snr_norm: str,
              generator: torch.Generator | None, max_step: float | None = None) -> Tensor:
    """One Langevin corrector step from x (left unchanged), step size a * langevin_step_size,
    capped at `max_step` when given."""
    s = score(x, t)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return langevin_move(x.clone(), s, z, a, snr, snr_norm, max_step)


def predictor_corrector(score: Score, sde: SDE, x: Tensor, *, steps: int = 1000,
                        grid: str = "uniform", predictor: str = "ancestral",
                        corrector: str = "langevin", snr: float = 0.16, n_corrector: int = 1,
                        snr_norm: str = "batch_mean", denoise: str = "tweedie",
                        t_start: float | None = None, generator: torch.Generator | None = None,
                        use_triton: bool | None = None) -> tuple[Tensor, dict]:
    """Predictor–corrector sampling from t_start (default T) to eps: at each t_i, `n_corrector`
    Langevin steps then one predictor step t_i -> t_{i+1}. NFE = steps (n_corrector + 1) (+1 with
    Tweedie).

    snr_norm "batch_mean" (default, as score_sde) uses the batch-mean norms, so results depend
    slightly on the batch; "per_sample" makes each sample independent of the batch but is only
    safe in high dimension: in low d a sample near a mode has |s| ~ 0 and gets a huge step.
    VP + Langevin needs a much smaller snr (~0.01). use_triton as for "em".
    """
    return pc_program(score, sde, x, steps=steps, grid=grid, predictor=predictor,
                      corrector=corrector, snr=snr, n_corrector=n_corrector, snr_norm=snr_norm,
                      denoise=denoise, t_start=t_start, generator=generator,
                      use_triton=use_triton).run()


def pc_program(score: Score, sde: SDE, x: Tensor, *, steps: int = 1000, grid: str = "uniform",
               predictor: str = "ancestral", corrector: str = "langevin", snr: float = 0.16,
               n_corrector: int = 1, snr_norm: str = "batch_mean", denoise: str = "tweedie",
               t_start: float | None = None, generator: torch.Generator | None = None,
               use_triton: bool | None = None) -> PCLoop:
    """The "pc" solve as a `Loop` (run it, or capture it as a graph)."""
    check_pc_options(predictor, corrector, snr, n_corrector, snr_norm, denoise)
    key = plan_key("pc", sde, steps, grid, t_start, predictor)
    ts = memo(None if key is None else ("grid", key),
              lambda: time_grid(sde, steps, grid, t_start=t_start))
    n_corr = n_corrector if corrector == "langevin" else 0
    info = {"grid": grid, "predictor": predictor, "corrector": corrector, "snr": snr}
    return PCLoop(score, sde, x, ts, predictor, n_corr, snr, snr_norm, generator,
                  denoise=denoise, use_triton=use_triton, info=info, key=key)


def check_pc_options(predictor: str, corrector: str, snr: float, n_corrector: int,
                     snr_norm: str, denoise: str) -> None:
    """Validate predictor–corrector options with messages naming the bad value."""
    _check_choice(denoise, DENOISE, "denoise")
    _check_choice(predictor, PREDICTORS, "predictor")
    _check_choice(corrector, CORRECTORS, "corrector")
    _check_choice(snr_norm, ("per_sample", "batch_mean"), "snr_norm")
    if n_corrector < 0 or (corrector != "none" and n_corrector < 1):
        raise ValueError(f"n_corrector must be >= 1 with a corrector, got {n_corrector}")
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")


def _pc_table(sde: SDE, ts: Tensor, predictor: str, dtype: torch.dtype
              ) -> tuple[Tensor, list[list[float]]]:
    coef_fn = _ancestral_coefficients if predictor == "ancestral" else _em_coefficients
    coef = coef_fn(sde, ts)
    alpha = sde._marginal(ts)[0]
    a_corr = alpha[:-1] ** 2 / alpha[1:] ** 2
    # Host rows as the samplers always rounded them: coefficients in x's dtype, a_i not.
    rows = [c + [a] for c, a in zip(coef.to(dtype).tolist(), a_corr.tolist(), strict=True)]
    return torch.cat([coef, a_corr[:, None]], 1), rows


class PCLoop(EMLoop):
    """At each t_i of the grid ts: `n_corr` Langevin steps (capped at `max_step`), then one
    predictor step; `project` maps x after every update. Row i of the table: the predictor's
    (k1, k2, k3) and the Langevin scale a_i = alpha_i^2 / alpha_{i+1}^2 (the DDPM 1 - beta_i
    of this step)."""

    def __init__(self, score: Score, sde: SDE, x: Tensor, ts: Tensor, predictor: str,
                 n_corr: int, snr: float, snr_norm: str, generator: torch.Generator | None,
                 project: Project = None, max_step: float | None = None, denoise: str = "none",
                 use_triton: bool | None = None, info: dict | None = None,
                 key: Hashable | None = None):
        """`key`: a `plan_key` naming (sde, ts, predictor), to reuse the table; None builds it."""
        table, rows = memo(None if key is None else ("pc_table", key, x.dtype),
                           lambda: _pc_table(sde, ts, predictor, x.dtype))
        super().__init__(score, sde, x, ts, generator, table=table, project=project,
                         denoise=denoise, use_triton=use_triton, host_rows=rows, info=info,
                         key=key)
        self.n_corr, self.snr, self.snr_norm, self.max_step = n_corr, snr, snr_norm, max_step

    def step(self, i: int) -> None:
        t = self.steps.time(i)
        for _ in range(self.n_corr):
            s = self.score(self.x, t)
            langevin_update(self.x, s, self.steps, i, 3, self.snr, self.snr_norm, self.max_step)
            self._keep()
        self._predict(i, t)


def pc_loop(score: Score, sde: SDE, x: Tensor, ts: Tensor, predictor: str, n_corr: int,
            snr: float, snr_norm: str, generator: torch.Generator | None,
            project: Project = None, max_step: float | None = None) -> tuple[Tensor, Tensor]:
    """At each t_i of the grid ts: `n_corr` Langevin steps (capped at `max_step`), then one
    predictor step; `project` maps x after every update. Returns x and the last mean."""
    loop = PCLoop(score, sde, x, ts, predictor, n_corr, snr, snr_norm, generator,
                  project=project, max_step=max_step, denoise="mean")
    loop.run()
    return loop.x, loop.mean
