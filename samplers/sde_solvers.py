"""Reverse-time SDE samplers: Euler–Maruyama and predictor–corrector (Song et al. 2021).

Every step coefficient is computed once from the float64 grid, so the loops below do no host
synchronisation and each step is a handful of fused-able elementwise ops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from samplers.base import Score, time_grid, tweedie
from scorekit.sde import EDMSDE, SDE, VESDE, VPSDE, _per_sample

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


def _step(x: Tensor, s: Tensor, c: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
    mean = c[0] * x + c[1] * s
    return mean + c[2] * z, mean


def euler_maruyama(score: Score, sde: SDE, x: Tensor, *, steps: int = 1000,
                   grid: str = "uniform", denoise: str = "tweedie", t_start: float | None = None,
                   generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Euler–Maruyama on the reverse SDE from x at t_start (default T) to eps; x: (B, *D).

    denoise: "tweedie" (posterior mean at eps, +1 NFE), "mean" (drop the last step's noise,
    score_sde's choice), "none". A non-linear-drift process (`sde.is_linear` False) takes the
    drift f(x, t) at each step and has no Tweedie step.
    """
    _check_choice(denoise, DENOISE, "denoise")
    if not sde.is_linear and denoise == "tweedie":
        raise ValueError(f"denoise='tweedie' needs Gaussian transitions; {type(sde).__name__} "
                         "has a non-linear drift: use denoise='mean' or 'none'")
    ts = time_grid(sde, steps, grid, t_start=t_start)
    if not sde.is_linear:
        return _euler_maruyama_nonlinear(score, sde, x, ts, denoise, generator), {"grid": grid}
    x, x_mean = em_loop(score, sde, x, ts, generator)
    return _finish(score, sde, x, x_mean, denoise), {"grid": grid}


def em_loop(score: Score, sde: SDE, x: Tensor, ts: Tensor, generator: torch.Generator | None,
            project: Project = None) -> tuple[Tensor, Tensor]:
    """EM steps along the float64 grid ts (linear drift); `project` (e.g. the fold into a box)
    maps x after every step. Returns x and the last step's noise-free mean."""
    coef = _em_coefficients(sde, ts).to(x.dtype).tolist()
    t_vec = ts.to(device=x.device, dtype=x.dtype)
    x_mean = x
    for i in range(len(coef)):
        t = t_vec[i].expand(x.shape[0])
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x, x_mean = _step(x, score(x, t), coef[i], z)
        if project is not None:
            x = project(x)
    return x, x_mean


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


def langevin_step_size(s: Tensor, z: Tensor, snr: float, snr_norm: str = "batch_mean",
                       groups: int = 1) -> Tensor:
    """Step sizes (B,) 2 (snr |z| / |s|)^2 (Song et al. 2021, Alg. 4) for scores and noise
    (B, *D); "batch_mean" uses the mean norms of each of `groups` contiguous blocks."""
    s_norm = s.flatten(1).norm(dim=1)
    z_norm = z.flatten(1).norm(dim=1)
    if snr_norm == "batch_mean":  # score_sde: one step size for the batch (here: per block)
        s_norm = s_norm.view(groups, -1).mean(1).repeat_interleave(s.shape[0] // groups)
        z_norm = z_norm.view(groups, -1).mean(1).repeat_interleave(s.shape[0] // groups)
    return 2 * (snr * z_norm / s_norm.clamp_min(torch.finfo(s.dtype).tiny)) ** 2


def _langevin(score: Score, x: Tensor, t: Tensor, a: float, snr: float, snr_norm: str,
              generator: torch.Generator | None, max_step: float | None = None) -> Tensor:
    """One Langevin corrector step, step size a * langevin_step_size, capped at `max_step`
    when given."""
    s = score(x, t)
    z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    step = a * langevin_step_size(s, z, snr, snr_norm)
    if max_step is not None:
        step = step.clamp(max=max_step)
    return x + _per_sample(step, x) * s + _per_sample(torch.sqrt(2 * step), x) * z


def predictor_corrector(score: Score, sde: SDE, x: Tensor, *, steps: int = 1000,
                        grid: str = "uniform", predictor: str = "ancestral",
                        corrector: str = "langevin", snr: float = 0.16, n_corrector: int = 1,
                        snr_norm: str = "batch_mean", denoise: str = "tweedie",
                        t_start: float | None = None,
                        generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Predictor–corrector sampling from t_start (default T) to eps: at each t_i, `n_corrector`
    Langevin steps then one predictor step t_i -> t_{i+1}. NFE = steps (n_corrector + 1) (+1 with
    Tweedie).

    snr_norm "batch_mean" (default, as score_sde) uses the batch-mean norms, so results depend
    slightly on the batch; "per_sample" makes each sample independent of the batch but is only
    safe in high dimension: in low d a sample near a mode has |s| ~ 0 and gets a huge step.
    VP + Langevin needs a much smaller snr (~0.01).
    """
    check_pc_options(predictor, corrector, snr, n_corrector, snr_norm, denoise)
    ts = time_grid(sde, steps, grid, t_start=t_start)
    n_corr = n_corrector if corrector == "langevin" else 0
    x, x_mean = pc_loop(score, sde, x, ts, predictor, n_corr, snr, snr_norm, generator)
    info = {"grid": grid, "predictor": predictor, "corrector": corrector, "snr": snr}
    return _finish(score, sde, x, x_mean, denoise), info


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


def pc_loop(score: Score, sde: SDE, x: Tensor, ts: Tensor, predictor: str, n_corr: int,
            snr: float, snr_norm: str, generator: torch.Generator | None,
            project: Project = None, max_step: float | None = None) -> tuple[Tensor, Tensor]:
    """At each t_i of the grid ts: `n_corr` Langevin steps (capped at `max_step`), then one
    predictor step; `project` maps x after every update. Returns x and the last mean."""
    coef_fn = _ancestral_coefficients if predictor == "ancestral" else _em_coefficients
    coef = coef_fn(sde, ts).to(x.dtype).tolist()
    # Langevin step scale a_i = alpha_i^2 / alpha_{i+1}^2 (the DDPM 1 - beta_i of this step).
    alpha = sde._marginal(ts)[0]
    a_corr = (alpha[:-1] ** 2 / alpha[1:] ** 2).tolist()
    t_vec = ts.to(device=x.device, dtype=x.dtype)
    keep = (lambda v: v) if project is None else project
    x_mean = x
    for i in range(len(coef)):
        t = t_vec[i].expand(x.shape[0])
        for _ in range(n_corr):
            x = keep(_langevin(score, x, t, a_corr[i], snr, snr_norm, generator, max_step))
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x, x_mean = _step(x, score(x, t), coef[i], z)
        x = keep(x)
    return x, x_mean
