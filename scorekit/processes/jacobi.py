"""The 1-D Jacobi (Wright–Fisher) diffusion on [0, 1] and its exact transition density.

    dv = (s/2) [a (1 - v) - b v] dt + sqrt(s v (1 - v)) dW,     stationary law Beta(a, b).

Spectral series (float64 only: P_n^(b-1, a-1)(1) grows like n^(b-1)):
p(v_t | v0) = Beta(v_t; a, b) sum_n exp(-lambda_n t) P_n(2 v0 - 1) P_n(2 v_t - 1) / d_n with
lambda_n = (s/2) n (n - 1 + a + b), P_n = P_n^(b-1, a-1) and d_n = E_Beta[P_n^2].
`JacobiTable` tabulates log density, score and CDF on a logit grid for fast lookups.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

F64 = torch.float64
# Relative size (to the sum of |terms|) below which a series value is rounding noise.
_RELIABLE = 1e-9


def speed_balanced(a: float, b: float) -> float:
    """Speed s = 2 / (a + b): the first eigenvalue is 1 for every (a, b)."""
    return 2.0 / (a + b)


def series_order(a: float, b: float, t_min: float, speed: float | None = None) -> int:
    """Truncation order with exp(-lambda_N t_min) <= e^-40: N = sqrt(80 / (s t_min)) + 20."""
    s = speed_balanced(a, b) if speed is None else speed
    return int(math.ceil(math.sqrt(80.0 / (s * t_min)) + 20))


def jacobi_polynomials(order: int, alpha: float, beta: float, y: Tensor
                       ) -> tuple[Tensor, Tensor]:
    """P_n^(alpha, beta)(y) and d/dy for n = 0..order; y: (*S) -> two (order + 1, *S).

    Three-term recurrence (DLMF 18.9.2), differentiated term by term; autograd-friendly.
    """
    p = [torch.ones_like(y), (alpha + 1) + (alpha + beta + 2) * (y - 1) / 2]
    dp = [torch.zeros_like(y), torch.full_like(y, (alpha + beta + 2) / 2)]
    ab = alpha + beta
    for n in range(1, order):
        c = 2 * n + ab
        a1 = 2 * (n + 1) * (n + ab + 1) * c
        a2 = (c + 1) * (alpha**2 - beta**2)
        a3 = c * (c + 1) * (c + 2)
        a4 = 2 * (n + alpha) * (n + beta) * (c + 2)
        p.append(((a2 + a3 * y) * p[n] - a4 * p[n - 1]) / a1)
        dp.append((a3 * p[n] + (a2 + a3 * y) * dp[n] - a4 * dp[n - 1]) / a1)
    return torch.stack(p[: order + 1]), torch.stack(dp[: order + 1])


def log_norms(order: int, a: float, b: float) -> Tensor:
    """log d_n = log E_Beta(a,b)[P_n^(b-1,a-1)(2v-1)^2], n = 0..order (d_0 = 1); float64."""
    n = torch.arange(order + 1, dtype=F64)
    lg = torch.lgamma
    a_, b_, ab = (torch.tensor(z, dtype=F64) for z in (a, b, a + b))
    rising = lambda x, m: lg(x + m) - lg(x)  # noqa: E731 - log Pochhammer (x)_m
    return (rising(a_, n) + rising(b_, n) - rising(ab, n - 1) - torch.log(2 * n + ab - 1)
            - lg(n + 1))


def eigenvalues(order: int, a: float, b: float, speed: float) -> Tensor:
    n = torch.arange(order + 1, dtype=F64)
    return 0.5 * speed * n * (n - 1 + a + b)


def beta_logpdf(v: Tensor, a: float, b: float) -> Tensor:
    log_b = math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)
    return (a - 1) * torch.log(v) + (b - 1) * torch.log1p(-v) - log_b


def beta_score(v: Tensor, a: float, b: float) -> Tensor:
    """d/dv log Beta(v; a, b)."""
    return (a - 1) / v - (b - 1) / (1 - v)


def transition_series(v: Tensor, v0: float, t: Tensor, a: float, b: float,
                      speed: float | None = None, order: int | None = None
                      ) -> tuple[Tensor, Tensor, Tensor]:
    """Density p(v|v0, t), its v-derivative and the sum of |series terms| (a rounding scale).

    v: (V,), t: (T,) float64 -> three (T, V). `order` defaults to `series_order(min t)`.
    """
    s = speed_balanced(a, b) if speed is None else speed
    order = order if order is not None else series_order(a, b, float(t.min()), s)
    alpha, beta = b - 1.0, a - 1.0
    p, dp = jacobi_polynomials(order, alpha, beta, 2 * v.to(F64) - 1)
    p0, _ = jacobi_polynomials(order, alpha, beta, torch.tensor(2 * v0 - 1, dtype=F64))
    coef = torch.exp(-eigenvalues(order, a, b, s)[None] * t.to(F64)[:, None]
                     - log_norms(order, a, b)[None]) * p0[None]             # (T, N + 1)
    w = torch.exp(beta_logpdf(v.to(F64), a, b))
    series = coef @ p
    dens = w * series
    dens_dv = w * (beta_score(v.to(F64), a, b) * series + 2 * (coef @ dp))
    return dens, dens_dv, w * (coef.abs() @ p.abs())


def transition_logpdf(v: Tensor, v0: float, t: float, a: float, b: float,
                      speed: float | None = None, order: int | None = None) -> Tensor:
    """log p(v | v0, t) by the series, differentiable in v; v: (V,) float64 -> (V,)."""
    dens, _, _ = transition_series(v, v0, torch.tensor([t], dtype=F64), a, b, speed, order)
    return torch.log(dens[0])


@dataclass
class JacobiTable:
    """log p, d/dv log p and CDF of p(v | v0, t) on `times` x `grid` (float64).

    `grid` is uniform in logit(v). Where the series is rounding noise (far from v0 at small t)
    the log density continues the small-time asymptote log p ~ log Beta(v; a, b)
    - (phi - phi0)^2 / (2 s t), phi = arccos(1 - 2v) (the diffusion is constant in phi; the
    Beta weight is the series' exact boundary factor), matched in value at the last reliable
    node. `reliable` marks the nodes that came from the series.
    """

    times: Tensor      # (T,)
    grid: Tensor       # (V,) v values, uniform in logit
    logp: Tensor       # (T, V)
    score: Tensor      # (T, V)
    cdf: Tensor        # (T, V) P(v_t <= grid[j])
    reliable: Tensor   # (T, V) bool

    @classmethod
    def build(cls, v0: float, times: Tensor, a: float, b: float, speed: float,
              n_grid: int = 1024, logit_max: float = 16.0, order: int | None = None
              ) -> JacobiTable:
        z = torch.linspace(-logit_max, logit_max, n_grid, dtype=F64)
        v = torch.sigmoid(z)
        times = times.to(F64)
        dens, dens_dv, scale = transition_series(v, v0, times, a, b, speed, order)
        ok = dens > _RELIABLE * scale
        # The unreliable nodes form one block on the side away from v0: keep the series only
        # beyond the last unreliable node seen from that side.
        idx = torch.arange(n_grid)
        if v0 >= 0.5:
            bad = torch.where(~ok, idx, -1).amax(1, keepdim=True)
            ok = idx[None] > bad
            anchor = (bad + 1).clamp(max=n_grid - 1)
        else:
            bad = torch.where(~ok, idx, n_grid).amin(1, keepdim=True)
            ok = idx[None] < bad
            anchor = (bad - 1).clamp(min=0)
        phi = torch.arccos(1 - 2 * v)
        phi0 = math.acos(1 - 2 * v0)
        st = speed * times[:, None]
        tail = beta_logpdf(v, a, b) - (phi - phi0) ** 2 / (2 * st)
        tail_dv = beta_score(v, a, b) - (phi - phi0) / (st * torch.sqrt(v * (1 - v)))
        logp_series = torch.log(dens.clamp_min(1e-300))
        offset = logp_series.gather(1, anchor) - tail.gather(1, anchor)
        logp = torch.where(ok, logp_series, tail + offset)
        score = torch.where(ok, dens_dv / dens.clamp_min(1e-300), tail_dv)
        # CDF by the trapezoid rule in v; the mass below the first node as a flat density.
        pdf = torch.exp(logp)
        cdf = torch.cumsum(0.5 * (pdf[:, 1:] + pdf[:, :-1]) * (v[1:] - v[:-1]), dim=1)
        cdf = torch.cat([pdf[:, :1] * v[0], pdf[:, :1] * v[0] + cdf], dim=1)
        cdf = cdf / (cdf[:, -1:] + pdf[:, -1:] * (1 - v[-1]))
        return cls(times, v, logp, score, cdf, ok)
