"""Adaptive reverse-SDE solver "Gotta Go Fast" (Jolicoeur-Martineau et al. 2021).

Each attempted step of length h builds an Euler–Maruyama proposal x' and a stochastic
improved-Euler (Heun) proposal x'' from the same Brownian increment. Their difference, divided
by the mixed tolerance delta = max(abs_tol, rel_tol * max(|x'|, |x'_prev|)) and reduced to an
RMS per sample, is the error E: the step is accepted if E <= 1, and either way the next step is
h <- min(t - eps, safety * h * E^(-exponent)). Every sample carries its own t and h; only
unfinished samples are given to the score, so `nfe_per_sample` counts each sample's own
attempts (2 per attempt, rejected ones included, +1 for the final Tweedie step).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from samplers.brownian import BrownianStack
from samplers.kernels import ggf_error
from samplers.loop import EAGER, Loop
from samplers.result import CountingScore
from samplers.steps import check_choice, finish, reverse_drift
from scorekit import rng
from scorekit.processes import SDE, VESDE, Process, Score, compute_dtype, per_sample
from scorekit.processes.predictions import x0_from_score

NORMS = ("rms", "l2", "linf")
BROWNIAN = ("fresh", "bridge")


def default_tolerances(sde: SDE) -> tuple[float, float]:
    """(abs_tol, h_init) of the official configs: one quantisation level of the data range
    (VE data in [0, 1]: 1/256, h_init 0.5; VP/sub-VP/EDM data in [-1, 1]: 2/256, h_init 0.01)."""
    return (1 / 256, 0.5) if isinstance(sde, VESDE) else (2 / 256, 0.01)


def _evaluate(score: Score, x: Tensor, t: Tensor, rows: Tensor) -> Tensor:
    # CountingScore charges only the rows it is given; a plain callable is just called.
    if isinstance(score, CountingScore):
        return score(x, t, rows=rows)
    return score(x, t)


def _drift(score: Score, process: Process, x: Tensor, t: Tensor, rows: Tensor, w: float,
           scores: list | None = None) -> Tensor:
    """Reverse-time drift w g(t)^2 s(x, t) - f_t x (w = 1: SDE, w = 1/2: PF-ODE); t: (b,) f64.
    The score is appended to `scores` when given."""
    s = _evaluate(score, x, t.to(compute_dtype(x.dtype)), rows)
    if scores is not None:
        scores.append(s)
    return reverse_drift(process, x, t, s, w)


def error_norm(e: Tensor, norm: str) -> Tensor:
    """Per-sample size of a scaled error e: (b, *D) -> (b,)."""
    e = e.flatten(1)
    if norm == "rms":
        return e.pow(2).mean(1).sqrt()
    if norm == "l2":
        return e.pow(2).sum(1).sqrt()
    return e.abs().amax(1)


def attempt(score: Score, sde: SDE, x: Tensor, x_prev: Tensor, t: Tensor, h: Tensor,
            z: Tensor | None, rows: Tensor, *, abs_tol: float, rel_tol: float,
            norm: str = "rms", use_prev: bool = True, stochastic_heun: bool = True,
            ode: bool = False, scores: list | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One attempted step t -> t - h for a batch of samples: returns (x'', x', E).

    x, x_prev, z: (b, *D); t, h: (b,) float64; z is None for the PF-ODE (ode=True).
    stochastic_heun=False takes the second stage's noise at g(t) too ("Lamba": E from the
    drift only). The first stage's score is appended to `scores` when given.
    """
    process = Process(sde)
    hx = per_sample(h.to(x.dtype), x)
    w = 0.5 if ode else 1.0
    k1 = hx * _drift(score, process, x, t, rows, w, scores)
    k2_noise = 0.0
    if not ode:
        sqrt_h = h.sqrt()
        k1 = k1 + per_sample((process.diffusion(t) * sqrt_h).to(x.dtype), x) * z
        g2 = process.diffusion(t - h if stochastic_heun else t)
        k2_noise = per_sample((g2 * sqrt_h).to(x.dtype), x) * z
    x_em = x + k1
    k2 = hx * _drift(score, process, x_em, t - h, rows, w) + k2_noise
    x_heun = x + 0.5 * (k1 + k2)
    if norm == "rms":  # one fused pass on CUDA (samplers.kernels), the same ops on CPU
        return x_heun, x_em, ggf_error(x_heun, x_em, x_prev, abs_tol, rel_tol, use_prev)
    scale = torch.maximum(x_em.abs(), x_prev.abs()) if use_prev else x_em.abs()
    delta = (rel_tol * scale).clamp_min(abs_tol)
    return x_heun, x_em, error_norm((x_heun - x_em) / delta, norm)


def next_step(err: Tensor, h: Tensor, t_left: Tensor, safety: float, exponent: float,
              max_factor: float) -> Tensor:
    """h <- min(t - eps, h * min(max_factor, safety * E^(-exponent))); E = 0 gives max_factor."""
    factor = (safety * err.double().pow(-exponent)).clamp(max=max_factor)
    return torch.minimum(t_left, h * factor)


def _validate(abs_tol: float, rel_tol: float, safety: float, exponent: float, h_init: float,
              h_min: float, max_factor: float, max_iters: int, norm: str, denoise: str,
              steps: int | None, brownian: str, bridge_depth: int, ode: bool) -> None:
    if steps is not None:
        raise ValueError(f"steps={steps} does not apply to the adaptive sampler 'ggf'; "
                         f"set abs_tol / rel_tol instead")
    check_choice(norm, NORMS, "norm")
    check_choice(denoise, ("tweedie", "none"), "denoise")
    check_choice(brownian, BROWNIAN, "brownian")
    if ode and brownian == "bridge":
        raise ValueError("brownian='bridge' needs noise; the PF-ODE (ode=True) has none")

    def need(ok: bool, name: str, value: object, what: str) -> None:
        if not ok:
            raise ValueError(f"{name} must be {what}, got {value!r}")

    finite = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    need(finite(abs_tol) and abs_tol > 0, "abs_tol", abs_tol, "a finite number > 0")
    need(finite(rel_tol) and rel_tol >= 0, "rel_tol", rel_tol, "a finite number >= 0")
    need(finite(safety) and 0 < safety <= 1, "safety", safety, "in (0, 1]")
    need(finite(exponent) and exponent > 0, "exponent", exponent, "> 0")
    need(finite(h_init) and h_init > 0, "h_init", h_init, "a finite number > 0")
    need(finite(h_min) and 0 <= h_min < h_init, "h_min", h_min, f"in [0, h_init={h_init})")
    need(isinstance(max_factor, (int, float)) and max_factor > 1, "max_factor", max_factor,
         "> 1")
    need(isinstance(max_iters, int) and not isinstance(max_iters, bool) and max_iters >= 1,
         "max_iters", max_iters, "an integer >= 1")
    need(isinstance(bridge_depth, int) and bridge_depth >= 2, "bridge_depth", bridge_depth,
         "an integer >= 2")


def gotta_go_fast(score: Score, sde: SDE, x: Tensor, *, abs_tol: float | None = None,
                  rel_tol: float = 0.1, safety: float = 0.9, exponent: float = 0.9,
                  h_init: float | None = None, h_min: float = 1e-10, max_factor: float = 10.0,
                  norm: str = "rms", use_prev: bool = True, extrapolation: bool = True,
                  stochastic_heun: bool = True, ode: bool = False, brownian: str | None = None,
                  bridge_depth: int = 8, max_iters: int = 10_000, denoise: str = "tweedie",
                  steps: int | None = None, t_start: float | None = None,
                  generator: torch.Generator | None = None, loop: Loop = EAGER
                  ) -> tuple[Tensor, dict]:
    """Adaptive reverse-SDE sampling from x at t_start (default T) to eps with per-sample step
    sizes; x: (B, *D).

    abs_tol / h_init default to the official values for the process (`default_tolerances`;
    set abs_tol to data range / 256 for other data). rel_tol defaults to 0.1, not the paper's
    0.01: on a 256-D anisotropic Gaussian (VP) 0.01 spends 303 NFE for the error 0.1 reaches at
    92 (within 7% of the sampling floor, where EM needs about 205). ode=True applies the same
    embedded Euler/Heun pair to the PF-ODE. brownian: "bridge" (the default with noise) reuses
    rejected noise through the Brownian bridge, which removes the selection bias of redrawing
    it ("fresh", the paper's scheme: biased in low dimension) at a memory cost of bridge_depth
    x the batch; None picks "bridge", or nothing for ode=True.
    Raises RuntimeError if a sample needs more than max_iters attempted steps.
    """
    if brownian is None:
        brownian = "fresh" if ode else "bridge"  # "fresh" with ode: no noise to keep
    abs_default, h_default = default_tolerances(sde)
    abs_tol = abs_default if abs_tol is None else abs_tol
    h_init = h_default if h_init is None else h_init
    _validate(abs_tol, rel_tol, safety, exponent, h_init, h_min, max_factor, max_iters, norm,
              denoise, steps, brownian, bridge_depth, ode)
    b, dev = x.shape[0], x.device
    process = Process(sde)
    x = x.clone()
    x_prev = x.clone()
    x0 = torch.zeros_like(x) if loop.active else None  # every sample's latest E[x0 | x_t]
    t0 = float(sde.T if t_start is None else t_start)
    t = torch.full((b,), t0, dtype=torch.float64, device=dev)
    h = torch.full((b,), min(h_init, t0 - sde.eps), dtype=torch.float64, device=dev)
    t_done = sde.eps + 1e-6 * sde.T
    accepted = torch.zeros(b, dtype=torch.int64, device=dev)
    rejected = torch.zeros_like(accepted)
    forced = torch.zeros_like(accepted)
    bad = torch.zeros(b, dtype=torch.bool, device=dev)
    stack = BrownianStack(tuple(x.shape), bridge_depth, x.dtype, dev) if brownian == "bridge" \
        else None
    opts = {"abs_tol": abs_tol, "rel_tol": rel_tol, "norm": norm, "use_prev": use_prev,
            "stochastic_heun": stochastic_heun, "ode": ode}
    for it in range(max_iters + 1):
        # nonzero() is the loop's one host sync: it sizes the score call and ends the loop.
        rows = ((t > t_done) & ~bad).nonzero().squeeze(1)
        if rows.numel() == 0:
            break
        if it == max_iters:
            left = t[rows]
            raise RuntimeError(
                f"ggf: {rows.numel()} of {b} samples did not reach eps={sde.eps} within "
                f"max_iters={max_iters} attempted steps (t in [{left.min():.3g}, "
                f"{left.max():.3g}]); loosen abs_tol={abs_tol} / rel_tol={rel_tol} or raise "
                f"max_iters")
        # Noise for the whole batch, so sample i's k-th draw does not depend on the others.
        z = None if ode else rng.randn(x.shape, generator, x.dtype, dev)[rows]
        xa, ta, ha = x[rows], t[rows], h[rows]
        if stack is not None:
            drawn = stack.draw(rows, ha, z)
            z = drawn.dw / per_sample(ha.sqrt().to(x.dtype), z)
        first: list | None = [] if loop.active else None
        x_heun, x_em, err = attempt(score, sde, xa, x_prev[rows], ta, ha, z, rows, **opts,
                                    scores=first)
        if first:
            alpha, sigma = process.marginal(ta.to(compute_dtype(x.dtype)))
            x0.index_copy_(0, rows, x0_from_score(xa, first[0], alpha, sigma))
            loop.report(it, t.to(compute_dtype(x.dtype)), x, x0=x0)
        tiny = ha < h_min
        acc = (err <= 1) | tiny
        acc_x = per_sample(acc, xa)
        x.index_copy_(0, rows, torch.where(acc_x, x_heun if extrapolation else x_em, xa))
        x_prev.index_copy_(0, rows, torch.where(acc_x, x_em, x_prev[rows]))
        t_new = torch.where(acc, ta - ha, ta)
        t.index_copy_(0, rows, t_new)
        h.index_copy_(0, rows, next_step(err, ha, t_new - sde.eps, safety, exponent, max_factor))
        accepted.index_add_(0, rows, acc.long())
        rejected.index_add_(0, rows, (~acc).long())
        forced.index_add_(0, rows, (tiny & ~(err <= 1)).long())
        if stack is not None:
            stack.commit(rows, acc, ha, drawn)
        # An index_copy, not bad[rows[mask]]: boolean-mask indexing is a host sync.
        bad.index_copy_(0, rows, bad[rows] | ~torch.isfinite(err))
        if loop.progress:  # the slowest sample's share of [eps, t0] done
            loop.advance(1 - float(t.max() - sde.eps) / (t0 - sde.eps))
    loop.close()
    if bad.any():
        raise FloatingPointError(f"ggf: non-finite step error for {int(bad.sum())} of {b} "
                                 f"samples (score returned NaN/inf?)")
    info = {"abs_tol": abs_tol, "rel_tol": rel_tol, "h_init": h_init, "ode": ode,
            "accepted_steps": float(accepted.double().mean()),
            "rejected_steps": float(rejected.double().mean()),
            "accepted_per_sample": accepted, "rejected_per_sample": rejected,
            "batch_iters": it, "forced_accepts": int(forced.sum()), "brownian": brownian}
    if stack is not None:
        info["bridge_merges"] = int(stack.merges)
    return finish(score, process, x, x, denoise), info

