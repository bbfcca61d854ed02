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

from samplers.em import em_loop
from samplers.grids import TimeGrid
from samplers.heun import heun_loop
from samplers.loop import EAGER, Loop
from samplers.pc import check_pc_options, pc_loop
from samplers.steps import DENOISE, check_choice, em_coefficients, finish
from scorekit.processes import SDE, Process, Score

__all__ = ["reflected_em", "reflected_pc", "reflected_ode", "REFLECTED_METHODS",
           "REFLECTED_ONLY"]

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


def _finish_in_box(score: Score, process: Process, x: Tensor, x_mean: Tensor, denoise: str
                   ) -> tuple[Tensor, dict]:
    """`samplers.steps.finish` kept in the box: the last mean folded, Tweedie's mean (whose
    formula ignores the faces) clamped, with the clamped fraction reported."""
    sde = process.sde
    if denoise == "tweedie":
        x = finish(score, process, x, x_mean, denoise)
        outside = (x < sde.lower) | (x > sde.upper)
        return x.clamp(sde.lower, sde.upper), {"clamped_fraction": float(outside.double().mean())}
    return (sde.fold(x_mean) if denoise == "mean" else x), {}


def reflected_em(score: Score, sde: SDE, x: Tensor, *, steps: int | None = None, grid="uniform",
                 denoise: str = "mean", t_start: float | None = None,
                 generator: torch.Generator | None = None, loop: Loop = EAGER
                 ) -> tuple[Tensor, dict]:
    """Reflected Euler–Maruyama from x (in the box) at t_start (default T) to eps; x: (B, *D).

    x <- fold(x + h (g^2 s - f) + g sqrt(h) z). denoise: "mean" (fold of the last step without
    its noise; default), "none", or "tweedie" (x + sigma^2 s, clamped to the box, +1 NFE).
    """
    check_choice(denoise, DENOISE, "denoise")
    _check_start(sde, x, "reflected_em")
    process, grid = Process(sde), TimeGrid.of(grid)
    ts = grid.build(process, grid.steps(steps, 1000), t_start)
    x, x_mean = em_loop(score, process, x, ts, em_coefficients(process, ts), generator,
                        loop=loop, project=sde.fold, keep_mean=True)
    x, info = _finish_in_box(score, process, x, x_mean, denoise)
    return x, {"grid": grid.name, **info}


def reflected_pc(score: Score, sde: SDE, x: Tensor, *, steps: int | None = None, grid="uniform",
                 predictor: str = "ancestral", corrector: str = "langevin", snr: float = 0.16,
                 n_corrector: int = 1, snr_norm: str = "batch_mean", denoise: str = "mean",
                 t_start: float | None = None, generator: torch.Generator | None = None,
                 loop: Loop = EAGER) -> tuple[Tensor, dict]:
    """Reflected predictor–corrector: at each t_i, `n_corrector` folded Langevin steps, then one
    folded predictor step ("ancestral": x + D s + sqrt(D) z with D = sigma_i^2 - sigma_{i+1}^2,
    or "em"). Langevin steps are capped at L^2 (L = box width). NFE = steps (n_corrector + 1)
    (+1 with Tweedie). Options as for "pc".
    """
    check_pc_options(predictor, corrector, snr, n_corrector, snr_norm, denoise)
    _check_start(sde, x, "reflected_pc")
    process, grid = Process(sde), TimeGrid.of(grid)
    ts = grid.build(process, grid.steps(steps, 1000), t_start)
    n_corr = n_corrector if corrector == "langevin" else 0
    # The score of a reflected process vanishes at high noise (~exp(-pi^2 tau)), where the
    # snr rule's step 2 (snr |z| / |s|)^2 overflows; a step of L^2 already re-spreads a sample
    # over the box, so steps are capped there. No drift: the Langevin scale a_i is 1.
    x, x_mean = pc_loop(score, process, x, ts, predictor, n_corr, snr, snr_norm, generator,
                        loop=loop, project=sde.fold, max_step=sde.width**2,
                        keep_mean=True)
    x, info = _finish_in_box(score, process, x, x_mean, denoise)
    return x, {"grid": grid.name, "predictor": predictor, "corrector": corrector, "snr": snr,
               **info}


def reflected_ode(score: Score, sde: SDE, x: Tensor, *, steps: int | None = None, grid="uniform",
                  denoise: str = "none", t_start: float | None = None,
                  generator: torch.Generator | None = None, loop: Loop = EAGER
                  ) -> tuple[Tensor, dict]:
    """Reflected PF-ODE by EDM's Heun steps in the noise level (`samplers.heun.heun_loop`; alpha
    = 1: dx/dsigma = -sigma s(x, t)), each stage folded; `steps` Heun steps from t_start
    (default T) to eps, NFE = 2 steps (+1 with denoise="tweedie", clamped as above).
    """
    check_choice(denoise, ("none", "tweedie"), "denoise")
    _check_start(sde, x, "reflected_ode")
    process, grid = Process(sde), TimeGrid.of(grid)
    ts = grid.build(process, grid.steps(steps, 50), t_start)
    x, _, _ = heun_loop(score, process, x, ts, use_triton=False, loop=loop, project=sde.fold)
    x, info = _finish_in_box(score, process, x, x, denoise)
    return x, {"grid": grid.name, **info}
