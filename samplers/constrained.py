"""Samplers for processes confined to a box by reflection (`scorekit.reflected.ReflectedSDE`).

Every Euler–Maruyama, ancestral or Langevin update is followed by the fold into the box (Lou &
Ermon 2023, Alg. 1): the discretisation of the reflected reverse SDE, not a clip. Samples stay in
the box by construction; nothing is clamped except by `denoise="tweedie"`, whose posterior mean
formula ignores the faces and is clamped (and counted in `info["clamped_fraction"]`).
`samplers.sample` maps `method="em"` / `"pc"` to these for a reflected process.
"""

from __future__ import annotations

import torch
from torch import Tensor

from samplers.base import Score, time_grid, tweedie
from samplers.sde_solvers import (
    CORRECTORS,
    DENOISE,
    _ancestral_coefficients,
    _check_choice,
    _em_coefficients,
    _langevin,
    _step,
)
from scorekit.sde import SDE

# samplers.sample(method=...) on a reflected process: the unconstrained name -> the reflected one.
REFLECTED_METHODS = {"em": "reflected_em", "pc": "reflected_pc"}


def _check_start(sde: SDE, x: Tensor, method: str) -> None:
    if not sde.is_reflected:
        raise ValueError(f"method {method!r} needs a scorekit.reflected.ReflectedSDE, got "
                         f"{type(sde).__name__}")
    outside = ~sde.contains(x)
    if bool(outside.any()):
        raise ValueError(f"{int(outside.sum())} starting samples lie outside the box "
                         f"[{sde.lower:g}, {sde.upper:g}] of {sde!r}")


def _finish(score: Score, sde: SDE, x: Tensor, x_mean: Tensor, denoise: str
            ) -> tuple[Tensor, dict]:
    if denoise == "tweedie":
        x = tweedie(score, sde, x, sde.eps)
        outside = (x < sde.lower) | (x > sde.upper)
        return x.clamp(sde.lower, sde.upper), {"clamped_fraction": float(outside.double().mean())}
    return (sde.fold(x_mean) if denoise == "mean" else x), {}


def reflected_em(score: Score, sde: SDE, x: Tensor, *, steps: int = 1000, grid: str = "uniform",
                 denoise: str = "mean", t_start: float | None = None,
                 generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Reflected Euler–Maruyama from x (in the box) at t_start (default T) to eps; x: (B, *D).

    x <- fold(x + h (g^2 s - f) + g sqrt(h) z). denoise: "mean" (fold of the last step without
    its noise; default), "none", or "tweedie" (x + sigma^2 s, clamped to the box, +1 NFE).
    """
    _check_choice(denoise, DENOISE, "denoise")
    _check_start(sde, x, "reflected_em")
    ts = time_grid(sde, steps, grid, t_start=t_start)
    coef = _em_coefficients(sde, ts).to(x.dtype).tolist()
    t_vec = ts.to(device=x.device, dtype=x.dtype)
    x_mean = x
    for i in range(steps):
        t = t_vec[i].expand(x.shape[0])
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x, x_mean = _step(x, score(x, t), coef[i], z)
        x = sde.fold(x)
    x, info = _finish(score, sde, x, x_mean, denoise)
    return x, {"grid": grid, **info}


def reflected_pc(score: Score, sde: SDE, x: Tensor, *, steps: int = 1000, grid: str = "uniform",
                 predictor: str = "ancestral", corrector: str = "langevin", snr: float = 0.16,
                 n_corrector: int = 1, snr_norm: str = "batch_mean", denoise: str = "mean",
                 t_start: float | None = None, generator: torch.Generator | None = None
                 ) -> tuple[Tensor, dict]:
    """Reflected predictor–corrector: at each t_i, `n_corrector` folded Langevin steps, then one
    folded predictor step ("ancestral": x + D s + sqrt(D) z with D = sigma_i^2 - sigma_{i+1}^2,
    or "em"). Langevin steps are capped at L^2 (L = box width). NFE = steps (n_corrector + 1)
    (+1 with Tweedie). Options as for "pc".
    """
    _check_choice(denoise, DENOISE, "denoise")
    _check_choice(predictor, ("ancestral", "em"), "predictor")
    _check_choice(corrector, CORRECTORS, "corrector")
    _check_choice(snr_norm, ("per_sample", "batch_mean"), "snr_norm")
    if n_corrector < 0 or (corrector != "none" and n_corrector < 1):
        raise ValueError(f"n_corrector must be >= 1 with a corrector, got {n_corrector}")
    if snr <= 0:
        raise ValueError(f"snr must be > 0, got {snr}")
    _check_start(sde, x, "reflected_pc")
    ts = time_grid(sde, steps, grid, t_start=t_start)
    coef_fn = _ancestral_coefficients if predictor == "ancestral" else _em_coefficients
    coef = coef_fn(sde, ts).to(x.dtype).tolist()
    t_vec = ts.to(device=x.device, dtype=x.dtype)
    n_corr = n_corrector if corrector == "langevin" else 0
    x_mean = x
    # The score of a reflected process vanishes at high noise (~exp(-pi^2 tau)), where the
    # snr rule's step 2 (snr |z| / |s|)^2 overflows; a step of L^2 already re-spreads a sample
    # over the box, so steps are capped there.
    max_step = sde.width**2
    for i in range(steps):
        t = t_vec[i].expand(x.shape[0])
        for _ in range(n_corr):
            # a = 1: no drift, so the DDPM step-size scale alpha_i^2 / alpha_{i+1}^2 is 1.
            x = sde.fold(_langevin(score, x, t, 1.0, snr, snr_norm, generator, max_step))
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        x, x_mean = _step(x, score(x, t), coef[i], z)
        x = sde.fold(x)
    x, info = _finish(score, sde, x, x_mean, denoise)
    return x, {"grid": grid, "predictor": predictor, "corrector": corrector, "snr": snr, **info}
