"""Samplers for processes confined to a box by reflection (`scorekit.reflected.ReflectedSDE`).

Every Euler–Maruyama, ancestral or Langevin update is followed by the fold into the box (Lou &
Ermon 2023, Alg. 1): the discretisation of the reflected reverse SDE, not a clip. Samples stay in
the box by construction; nothing is clamped except by `denoise="tweedie"`, whose posterior mean
formula ignores the faces and is clamped (and counted in `info["clamped_fraction"]`).
`samplers.sample` maps `method="em"` / `"pc"` to these for a reflected process.

The probability-flow ODE needs no reflection term when the score obeys the Neumann condition
(zero normal component at the faces, as the exact one does: p_t has no flux through them), since
its velocity is then tangent there; `reflected_ode` still folds each stage, because a learned
score only approximately vanishes at the faces.
"""

from __future__ import annotations

import torch
from torch import Tensor

from samplers.base import Score, time_grid, tweedie
from samplers.sde_solvers import DENOISE, _check_choice, check_pc_options, em_loop, pc_loop
from scorekit.sde import SDE

# samplers.sample(method=...) on a reflected process: the unconstrained name -> the reflected one
# ("reflected_ode" is only reachable by name: its options differ from "ode"'s).
REFLECTED_METHODS = {"em": "reflected_em", "pc": "reflected_pc"}
REFLECTED_ONLY = ("reflected_em", "reflected_pc", "reflected_ode")


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
    x, x_mean = em_loop(score, sde, x, ts, generator, project=sde.fold)
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
    check_pc_options(predictor, corrector, snr, n_corrector, snr_norm, denoise)
    _check_start(sde, x, "reflected_pc")
    ts = time_grid(sde, steps, grid, t_start=t_start)
    n_corr = n_corrector if corrector == "langevin" else 0
    # The score of a reflected process vanishes at high noise (~exp(-pi^2 tau)), where the
    # snr rule's step 2 (snr |z| / |s|)^2 overflows; a step of L^2 already re-spreads a sample
    # over the box, so steps are capped there. No drift: the Langevin scale a_i is 1.
    x, x_mean = pc_loop(score, sde, x, ts, predictor, n_corr, snr, snr_norm, generator,
                        project=sde.fold, max_step=sde.width**2)
    x, info = _finish(score, sde, x, x_mean, denoise)
    return x, {"grid": grid, "predictor": predictor, "corrector": corrector, "snr": snr, **info}


def reflected_ode(score: Score, sde: SDE, x: Tensor, *, steps: int = 50, grid: str = "uniform",
                  denoise: str = "none", t_start: float | None = None,
                  generator: torch.Generator | None = None) -> tuple[Tensor, dict]:
    """Reflected PF-ODE by Heun's method in the noise level (EDM, Karras et al. 2022, Alg. 1 with
    alpha = 1: dx/dsigma = -sigma s(x, t)), each stage folded; `steps` Heun steps from t_start
    (default T) to eps, NFE = 2 steps (+1 with denoise="tweedie", clamped as above).
    """
    _check_choice(denoise, ("none", "tweedie"), "denoise")
    _check_start(sde, x, "reflected_ode")
    ts = time_grid(sde, steps, grid, t_start=t_start)
    sigma = sde._marginal(ts)[1].tolist()
    t_vec = ts.to(device=x.device, dtype=x.dtype)
    b = x.shape[0]
    for i in range(steps):
        dsigma = sigma[i + 1] - sigma[i]
        d = -sigma[i] * score(x, t_vec[i].expand(b))
        x_euler = sde.fold(x + dsigma * d)
        d_next = -sigma[i + 1] * score(x_euler, t_vec[i + 1].expand(b))
        x = sde.fold(x + 0.5 * dsigma * (d + d_next))
    x, info = _finish(score, sde, x, x, denoise)
    return x, {"grid": grid, **info}
