"""Reverse-time Euler–Maruyama for Dirichlet diffusion, integrated in stick coordinates.

Per stick (a, b, speed s), with diffusion coefficient G(v) = s v (1 - v):
    v <- v + h [G score_v + G'(v) - (s/2)(a (1 - v) - b v)] + sqrt(h G) z,   G' = s (1 - 2v)
(G' is the Itô correction of the state-dependent noise). v is clipped to [delta, 1 - delta]
after every step and x is its stick-breaking, so samples lie on the simplex by construction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from samplers.grids import time_grid
from samplers.loop import EAGER, Loop
from scorekit import rng
from scorekit.processes import Score, compute_dtype
from scorekit.processes.dirichlet import (
    JacobiDiffusion,
    gx_to_gv,
    stick_breaking,
    stick_breaking_inverse,
)

CLIP = {torch.float32: 1e-6, torch.float64: 1e-12}


def jacobi_time_grid(process: JacobiDiffusion, steps: int, time_dilation: float = 1.0,
                     time_dilation_start: float | None = None) -> tuple[Tensor, Tensor]:
    """Score times tau_i (decreasing, T -> eps) and process step sizes h_i, float64.

    `steps` uniform steps in tau (`samplers.grids`); below `time_dilation_start` (default T) each
    is split into `time_dilation` = c sub-steps of tau-size h / c that each advance the process
    by h, so the sampler integrates c times longer at every noise level there (DDSM's time
    dilation).
    """
    if time_dilation < 1:
        raise ValueError(f"time_dilation must be >= 1, got {time_dilation!r}")
    start = process.T if time_dilation_start is None else float(time_dilation_start)
    edges = time_grid(process, steps).tolist()
    taus, hs = [], []
    c = int(round(time_dilation))
    for hi, lo in zip(edges[:-1], edges[1:], strict=True):
        sub = c if hi <= start + 1e-12 else 1
        for i in range(sub):
            taus.append(hi - i * (hi - lo) / sub)
            hs.append(hi - lo)
    return torch.tensor(taus, dtype=torch.float64), torch.tensor(hs, dtype=torch.float64)


def _clip_known(v: Tensor, known: Tensor | None, v_known: Tensor | None, delta: float) -> Tensor:
    v = v.clamp(delta, 1 - delta)
    if known is not None:
        v = torch.where(known[..., None], v_known, v)
    return v


def jacobi(score: Score, sde: JacobiDiffusion, x: Tensor, *, steps: int = 200,
           time_dilation: float = 1.0, time_dilation_start: float | None = None,
           known: Tensor | None = None, x_known: Tensor | None = None,
           clip: float | None = None, generator: torch.Generator | None = None,
           loop: Loop = EAGER) -> tuple[Tensor, dict]:
    """Sample the reverse Dirichlet diffusion from x at T; x: (B, *D, K) on the simplex.

    `score(x, t)` returns the tangent x-space score. Inpainting: where `known` (B, *D) is True
    the sticks are reset to those of `x_known` (one-hot (B, *D, K)) after every step. Returns
    the stick-breaking of the last step's mean. NFE = steps x time_dilation below the start.
    """
    if not isinstance(sde, JacobiDiffusion):
        raise TypeError(f"method 'jacobi' needs a JacobiDiffusion, got {type(sde).__name__}")
    if x.shape[-1] != sde.K:
        raise ValueError(f"x must end in K={sde.K} categories, got shape {tuple(x.shape)}")
    delta = clip if clip is not None else CLIP.get(x.dtype, 1e-6)
    v_known = None
    if known is not None:
        if x_known is None or tuple(x_known.shape) != tuple(x.shape):
            raise ValueError("known needs x_known, one-hot and shaped like the samples "
                             f"{tuple(x.shape)}")
        if tuple(known.shape) != tuple(x.shape[:-1]):
            raise ValueError(f"known must have shape {tuple(x.shape[:-1])}, got "
                             f"{tuple(known.shape)}")
        v_known = sde.vertex_sticks(x_known, x.dtype, delta)
    taus, hs = jacobi_time_grid(sde, steps, time_dilation, time_dilation_start)
    a = torch.tensor(sde.a, dtype=x.dtype, device=x.device)
    b = torch.tensor(sde.b, dtype=x.dtype, device=x.device)
    s = torch.tensor(sde.speeds, dtype=x.dtype, device=x.device)
    v = _clip_known(stick_breaking_inverse(x), known, v_known, delta)
    t_vec = taus.to(device=x.device, dtype=compute_dtype(x.dtype))
    mean = v
    h_list = hs.tolist()
    for i in loop.range(len(h_list)):
        h = h_list[i]
        xs = stick_breaking(v)
        t = t_vec[i].expand(x.shape[0])
        gx = score(xs, t)
        loop.report(i, t, xs)  # no posterior mean on the simplex: x0_hat is None
        gv = gx_to_gv(gx, xs)
        g = s * v * (1 - v)
        drift = g * gv + s * (1 - 2 * v) - 0.5 * s * (a * (1 - v) - b * v)
        mean = _clip_known(v + h * drift, known, v_known, delta)
        z = rng.randn(v.shape, generator, v.dtype, v.device)
        v = _clip_known(mean + (h * g).sqrt() * z, known, v_known, delta)
    return stick_breaking(mean), {"steps": len(hs), "time_dilation": time_dilation,
                                  "clip": delta}
