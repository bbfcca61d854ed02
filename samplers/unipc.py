"""UniPC (Zhao et al. 2023): a unified predictor (UniP-p) and corrector (UniC-p) for the
probability-flow ODE in data prediction, for every linear process.

In x~ = x / alpha along lambda (`samplers.multistep`), from point i (prediction m0 = D_i and up
to p - 1 earlier ones D_{i-k} at r_k = (lambda_{i-k} - lambda_i) / h, h = lambda_{i+1} -
lambda_i), with differences D1_k = (D_{i-k} - m0) / r_k:

    base       x~_ = (s_{i+1}/s_i) x~ + (1 - e^-h) m0
    predictor  x~_{i+1} = x~_ - B(h) sum_k a_k D1_k
    corrector  x~_{i+1} = x~_ - B(h) (sum_k c_k D1_k + c_p (D_{i+1} - m0))

B(h) = -h ("bh1") or e^-h - 1 ("bh2"); the weights solve R a = g, R_jk = r_k^j, g_j = j!
phi_{j+1}(-h) / B(h) (the paper's Alg. 2; a_1 = 1/2 at p = 2). The corrector reuses the
evaluation at the predicted point, which the next predictor takes as its m0, so it costs no
extra evaluation; the final point is the Tweedie denoise at eps, uncorrected.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from samplers.loop import EAGER, Loop
from samplers.multistep import auto_order, finish_path, setup
from samplers.steps import check_choice
from scorekit.processes import Score

__all__ = ["unipc", "VARIANTS"]

VARIANTS = ("bh1", "bh2")
# 16-D Gaussian (VP / VE / EDM), error at 10 -> 12 evaluations: order 2 without the corrector
# 0.052 / 0.057 / 0.082 -> 0.054 / 0.053 / 0.077; order 3 with it 0.156 / 0.069 / 0.098 ->
# 0.040 / 0.022 / 0.029 (order 2 with it: 0.100 / 0.090 / 0.121 at 10).
CORRECTOR_FROM = 12


def _weights(rks: list[float], h: float, variant: str) -> tuple[float, list[float], list[float]]:
    """(B(h), predictor weights (p - 1), corrector weights (p)) for nodes rks = [r_1, ...,
    r_{p-1}, 1], in float64."""
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi = math.expm1(hh) / hh - 1  # phi_2 scaled as in the paper's recursion
    g, factorial = [], 1
    for j in range(1, len(rks) + 1):
        g.append(h_phi * factorial / b_h)
        factorial *= j + 1
        h_phi = h_phi / hh - 1 / factorial
    p = len(rks)
    mat = torch.tensor([[r ** j for r in rks] for j in range(p)], dtype=torch.float64)
    rhs = torch.tensor(g, dtype=torch.float64)
    if p == 1:
        pred, corr = [], [0.5]
    else:
        pred = [0.5] if p == 2 else torch.linalg.solve(mat[:-1, :-1], rhs[:-1]).tolist()
        corr = torch.linalg.solve(mat, rhs).tolist()
    return b_h, pred, corr


def unipc(score: Score, sde, x: Tensor, *, steps: int | None = None, order: int | None = None,
          variant: str = "bh2", corrector: bool | None = None, grid="logsnr",
          lower_order_final: bool = False, denoise: str = "tweedie",
          t_start: float | None = None, generator: torch.Generator | None = None,
          loop: Loop = EAGER) -> tuple[Tensor, dict]:
    """UniPC-`order` (`variant` "bh1" / "bh2") from x at t_start (default T) to eps; x: (B, *D).
    `steps` (default 20) score evaluations, the last the Tweedie denoise at eps. order None and
    corrector None pick what measures best (`CORRECTOR_FROM`): order 3 with the corrector from
    12 evaluations, below that order 2 without it, where the corrector's extrapolation over
    long steps costs more than it gains. Deterministic: `generator` is unused."""
    if order is not None and order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2, 3 or None, got {order!r}")
    check_choice(variant, VARIANTS, "variant")
    path = setup(sde, x, steps, grid, t_start, 20, denoise, "unipc")
    order = auto_order(order, path.n + 1, CORRECTOR_FROM)
    corrector = path.n + 1 >= CORRECTOR_FROM if corrector is None else corrector
    xt, hist, pending = x / path.alpha[0], [], None
    for i in loop.range(path.n):
        m0 = path.denoised(score, xt, i, loop)
        if pending is not None:  # UniC on the point just predicted, with its new evaluation
            base, d1s, b_h, corr = pending
            xt = base - b_h * (_mix(d1s, corr[:-1]) + corr[-1] * (m0 - hist[0][0]))
        hist = [(m0, path.lam[i]), *hist[:2]]
        p = min(order, i + 1, (path.n - i) if lower_order_final else order)
        h = path.h(i)
        rks = [(lam - path.lam[i]) / h for _, lam in hist[1:p]] + [1.0]
        d1s = [(d - m0) / r for (d, _), r in zip(hist[1:p], rks, strict=False)]
        b_h, pred, corr = _weights(rks, h, variant)
        base = (path.level[i + 1] / path.level[i]) * xt - math.expm1(-h) * m0
        xt = base - b_h * _mix(d1s, pred) if d1s else base
        pending = (base, d1s, b_h, corr) if corrector else None
    return finish_path(score, path, xt, denoise, loop), {"grid": path.grid, "order": order,
                                                        "variant": variant,
                                                        "corrector": corrector}


def _mix(d1s: list[Tensor], weights: list[float]) -> Tensor | float:
    out: Tensor | float = 0.0
    for w, d in zip(weights, d1s, strict=False):
        out = out + w * d
    return out
