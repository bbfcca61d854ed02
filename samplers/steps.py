"""The mathematics of one solver step, written once for every sampler.

Reverse SDE (integrate t downward, step h > 0; Song et al. 2021, eq. 6) and probability-flow
ODE (eq. 13) of a process with drift f and diffusion g:

    reverse_drift(w) = w g(t)^2 s(x, t) - f(x, t)        w = 1: reverse SDE,  w = 1/2: -dx/dt
    Euler–Maruyama:    x <- x + h reverse_drift(1) + g(t) sqrt(h) z

For a linear drift f = f_t x one EM step is affine in (x, s, z), x <- k1 x + k2 s + k3 z with
(k1, k2, k3) = (1 - h f_t, h g^2, g sqrt(h)) precomputed per grid step (`em_coefficients`); the
ancestral (DDPM-consistent) step, EDM's Heun step and the DDIM step of the closed-form sampler
have such tables too. Solvers with per-sample times (GGF) or non-linear drifts call
`reverse_drift` instead. Tables are built in float64 from the grid and cached per process and
grid (`samplers.kernels.plans`). The Langevin corrector and the final denoising step live here
as well.
"""

from __future__ import annotations

import torch
from torch import Tensor

from samplers.plans import cached
from scorekit.processes import EDMSDE, VESDE, VPSDE, Process, Score, per_sample
from scorekit.processes.predictions import tweedie

__all__ = ["DENOISE", "check_choice", "reverse_drift", "velocity", "em_coefficients",
           "ancestral_coefficients", "pc_table", "heun_table", "ddim_coefficients", "lambda_table",
           "langevin_step_size", "langevin_move", "finish"]

DENOISE = ("tweedie", "mean", "none")


def check_choice(value: str, valid: tuple[str, ...], name: str) -> None:
    """ValueError naming `value` unless it is one of `valid`."""
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")


# --- drift form: any time per sample, any drift ------------------------------------------------
def reverse_drift(process: Process, x: Tensor, t: Tensor, s: Tensor, w: float = 1.0) -> Tensor:
    """w g(t)^2 s - f(x, t); x, s: (B, *D), t: (B,). Coefficients are computed in t's dtype
    (float64 for per-sample adaptive times) and applied in x's."""
    g2 = (w * process.diffusion(t) ** 2).to(x.dtype)
    if process.sde.is_linear:
        f = per_sample(process.drift_rate(t).to(x.dtype), x) * x
    else:
        f = process.drift(x, t.to(x.dtype))
    return per_sample(g2, x) * s - f


def velocity(process: Process, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """Probability-flow ODE velocity dx/dt = f(x, t) - g(t)^2 s / 2."""
    return -reverse_drift(process, x, t, s, 0.5)


# --- affine form: coefficient tables of fixed-step solvers, (N, k) float64 ----------------------
@cached
def em_coefficients(process: Process, grid: Tensor) -> Tensor:
    """Rows (k1, k2, k3) of the EM step t_i -> t_{i+1}: (1 - h f_t, h g^2, g sqrt(h)), (N, 3)."""
    t, h = grid[:-1], grid[:-1] - grid[1:]
    g = process.diffusion(t)
    return torch.stack([1 - h * process.drift_rate(t), h * g**2, g * h.sqrt()], dim=1)


@cached
def ancestral_coefficients(process: Process, grid: Tensor) -> Tensor:
    """Discrete-consistent reverse-diffusion step on the actual grid: (N, 3) as above.

    VP: b = 1 - alpha_i^2/alpha_{i+1}^2, x <- (x + b s)/sqrt(1 - b) + sqrt(b) z (DDPM ancestral).
    VE/EDM and reflected VE: D = sigma_i^2 - sigma_{i+1}^2, x <- x + D s + sqrt(D) z. Other
    processes: EM.
    """
    a, s = process.marginal(grid)
    sde = process.sde
    if isinstance(sde, VPSDE):
        b = -torch.expm1(2 * (torch.log(a[:-1]) - torch.log(a[1:])))
        k1 = torch.rsqrt(1 - b)
        return torch.stack([k1, b * k1, b.sqrt()], dim=1)
    if isinstance(sde, (VESDE, EDMSDE)) or sde.is_reflected:
        dvar = s[:-1] ** 2 - s[1:] ** 2
        return torch.stack([torch.ones_like(dvar), dvar, dvar.sqrt()], dim=1)
    return em_coefficients(process, grid)


@cached
def pc_table(process: Process, grid: Tensor, predictor: str, dtype: torch.dtype
             ) -> tuple[Tensor, list[list[float]]]:
    """Predictor rows (k1, k2, k3) plus the Langevin scale a_i = alpha_i^2 / alpha_{i+1}^2
    (the DDPM 1 - beta_i of the step), (N, 4), and the rows as host floats: coefficients
    rounded to `dtype`, a_i in float64."""
    coef = (ancestral_coefficients if predictor == "ancestral" else em_coefficients)(process,
                                                                                   grid)
    alpha = process.alpha(grid)
    a_corr = alpha[:-1] ** 2 / alpha[1:] ** 2
    rows = [c + [a] for c, a in zip(coef.to(dtype).tolist(), a_corr.tolist(), strict=True)]
    return torch.cat([coef, a_corr[:, None]], 1), rows


@cached
def heun_table(process: Process, grid: Tensor) -> tuple:
    """EDM's Heun step in x~ = x / alpha along the noise levels s_i = sigma_i / alpha_i:
    rows (-sigma_i, ds_i, alpha_{i+1}, -sigma_{i+1}, ds_i / 2), ds_i = s_{i+1} - s_i, (N, 5);
    plus the rows, levels, alphas and sigmas as float64 host lists."""
    alpha, sigma = process.marginal(grid)
    level = sigma / alpha
    ds = level[1:] - level[:-1]
    table = torch.stack([-sigma[:-1], ds, alpha[1:], -sigma[1:], 0.5 * ds], dim=1)
    return table, table.tolist(), level.tolist(), alpha.tolist(), sigma.tolist()


@cached
def ddim_coefficients(process: Process, grid: Tensor) -> tuple[list[float], list[float]]:
    """The DDIM step x' = alpha' x0 + sigma' eps_hat (x0 by Tweedie) as x' = k1 x + k2 s:
    k1 = alpha'/alpha, k2 = alpha' sigma^2/alpha - sigma' sigma (host floats, float64)."""
    alpha, sigma = process.marginal(grid)
    k1 = (alpha[1:] / alpha[:-1]).tolist()
    k2 = (alpha[1:] * sigma[:-1] ** 2 / alpha[:-1] - sigma[1:] * sigma[:-1]).tolist()
    return k1, k2


@cached
def lambda_table(process: Process, grid: Tensor) -> tuple[list[float], ...]:
    """Host float64 lists along the grid for the multistep solvers, which work in EDM's
    rescaled variables x~ = x / alpha: (alpha_i, sigma_i, s_i = sigma_i / alpha_i,
    lambda_i = -log s_i)."""
    alpha, sigma = process.marginal(grid)
    level = process.noise_level(grid)
    return alpha.tolist(), sigma.tolist(), level.tolist(), (-torch.log(level)).tolist()


# --- Langevin corrector (Song et al. 2021, Alg. 4) --------------------------------------------
def langevin_step_size(s: Tensor, z: Tensor, snr: float, snr_norm: str = "batch_mean",
                       groups: int = 1) -> Tensor:
    """Step sizes (B,) 2 (snr |z| / |s|)^2 for scores and noise (B, *D); "batch_mean" uses the
    mean norms of each of `groups` contiguous blocks."""
    s_norm = s.flatten(1).norm(dim=1)
    z_norm = z.flatten(1).norm(dim=1)
    return step_from_norms(s_norm, z_norm, snr, snr_norm, groups, s.dtype)


def step_from_norms(s_norm: Tensor, z_norm: Tensor, snr: float, snr_norm: str, groups: int,
                    dtype: torch.dtype) -> Tensor:
    """`langevin_step_size` from the per-sample norms (B,)."""
    if snr_norm == "batch_mean":  # score_sde: one step size for the batch (here: per block)
        b = s_norm.shape[0]
        s_norm = s_norm.view(groups, -1).mean(1).repeat_interleave(b // groups)
        z_norm = z_norm.view(groups, -1).mean(1).repeat_interleave(b // groups)
    return 2 * (snr * z_norm / s_norm.clamp_min(torch.finfo(dtype).tiny)) ** 2


def langevin_move(x: Tensor, s: Tensor, z: Tensor, a: float, snr: float, snr_norm: str,
                  max_step: float | None = None) -> Tensor:
    """x <- x + e s + sqrt(2 e) z in place, e = a * langevin_step_size (capped at max_step)."""
    e = a * langevin_step_size(s, z, snr, snr_norm)
    if max_step is not None:
        e = e.clamp(max=max_step)
    return x.add_(per_sample(e, x) * s).add_(per_sample(torch.sqrt(2 * e), x) * z)


# --- the end of a solve -----------------------------------------------------------------------
def finish(score: Score, process: Process, x: Tensor, x_mean: Tensor, denoise: str) -> Tensor:
    """The result at eps: "tweedie" E[x0 | x_eps] (one more score evaluation), "mean" the last
    step without its noise (score_sde's "denoise"), "none" x itself."""
    if denoise == "tweedie":
        return tweedie(score, process, x, process.eps)
    return x_mean if denoise == "mean" else x
