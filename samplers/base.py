"""Shared pieces of every sampler: the result type, the NFE-counting score wrapper, time grids
and the Tweedie denoising step."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from scorekit.sde import SDE, _per_sample

Score = Callable[[Tensor, Tensor], Tensor]
GRIDS = ("uniform", "quadratic", "edm", "logsnr")


@dataclass
class SampleResult:
    """Samples `x` (n, *D) at t = eps (denoised if asked) and honest evaluation counts."""

    x: Tensor
    nfe_per_sample: Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def nfe(self) -> float:
        """Mean number of score evaluations per sample."""
        return float(self.nfe_per_sample.double().mean())


class CountingScore:
    """Wrap a score so that every call adds one evaluation to each sample it was given.

    `rows` (an index tensor into the full batch) lets solvers that evaluate a subset of samples
    charge only those. Counts live on the sample device; reading them is the caller's choice.
    """

    def __init__(self, score: Score, n: int, device: torch.device | str | None = None):
        self.score = score
        self.counts = torch.zeros(n, dtype=torch.int64, device=device)
        self.calls = 0

    def __call__(self, x: Tensor, t: Tensor, rows: Tensor | None = None) -> Tensor:
        if rows is None:
            if x.shape[0] != self.counts.shape[0]:
                raise ValueError(f"score called on a batch of {x.shape[0]} without `rows`; "
                                 f"the sampler has {self.counts.shape[0]} samples")
            self.counts += 1
        else:
            self.counts.index_add_(0, rows, torch.ones_like(rows, dtype=torch.int64))
        self.calls += 1
        return self.score(x, t)


def time_grid(sde: SDE, steps: int, kind: str = "uniform", t_start: float | None = None,
              t_end: float | None = None, rho: float = 7.0) -> Tensor:
    """Decreasing float64 grid t_0 = t_start > ... > t_steps = t_end (steps + 1 points).

    "uniform" in t; "quadratic" in sqrt(t - t_end) (denser near data); "edm" uniform in
    s^(1/rho) with s = sigma/alpha (Karras et al. 2022, eq. 5); "logsnr" uniform in log(s).
    """
    if kind not in GRIDS:
        raise ValueError(f"unknown grid {kind!r}; valid: {list(GRIDS)}")
    t0 = float(sde.T if t_start is None else t_start)
    t1 = float(sde.eps if t_end is None else t_end)
    if not t1 < t0:
        raise ValueError(f"grid needs t_end < t_start, got t_start={t0}, t_end={t1}")
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)
    if kind == "uniform":
        grid = t0 + u * (t1 - t0)
    elif kind == "quadratic":
        grid = t1 + (t0 - t1) * (1 - u) ** 2
    else:
        s0, s1 = sde.noise_level(torch.tensor([t0, t1], dtype=torch.float64))
        if kind == "edm":
            level = (s0 ** (1 / rho) + u * (s1 ** (1 / rho) - s0 ** (1 / rho))) ** rho
        else:
            level = torch.exp(torch.log(s0) + u * (torch.log(s1) - torch.log(s0)))
        grid = sde.t_of_noise_level(level)
    grid[0], grid[-1] = t0, t1  # exact end points whatever the round trip did
    return grid


def tweedie(score: Score, sde: SDE, x: Tensor, t: float) -> Tensor:
    """Posterior mean E[x0 | x_t] = (x + sigma_t^2 s(x, t)) / alpha_t; x: (B, *D)."""
    tt = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
    alpha, sigma = sde._marginal(tt)
    return (x + _per_sample(sigma**2, x) * score(x, tt)) / _per_sample(alpha, x)
