"""Closed-form ground truth for reflected-diffusion tests: truncated Gaussians on a box.

Data x0 ~ N(mu, s^2) truncated to [lower, upper], independently per coordinate. On the unit
interval the reflected kernel is the Gaussian kernel applied to the even, 2-periodic extension of
the density, which is a sum of Gaussian pieces N(u; 2k + mu, s^2) on [2k, 2k + 1] and
N(u; 2k - mu, s^2) on [2k - 1, 2k]. Each piece convolved with N(0, sigma^2) is
  N(x; m, v) [Phi((b - m') / s') - Phi((a - m') / s')],
  v = s^2 + sigma^2,  m' = (m sigma^2 + x s^2) / v,  s' = s sigma / sqrt(v),
so p_t and its derivative are closed forms (float64), the ground truth of the sampler tests.
At large noise the cosine series with the data's cosine moments is used instead (same values,
far fewer terms).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor

from scorekit.reflected import ReflectedSDE


def _normal_pdf(z: Tensor) -> Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _pieces(y: Tensor, mu: float, s: float, sigma: float) -> tuple[Tensor, Tensor]:
    """(p_t, dp_t/dy) from the Gaussian pieces (module docstring); y: any shape."""
    v = s * s + sigma * sigma
    # Pieces on [a, a + 1] with a within 1 + 9 sqrt(v) of the box (the rest weigh < 1e-17):
    # a even holds N(u; a + mu, s^2), a odd holds the mirrored N(u; a + 1 - mu, s^2).
    reach = math.ceil(1 + 9 * math.sqrt(v))
    a = torch.arange(-reach - 1, reach + 1, dtype=torch.float64)
    even = torch.remainder(a, 2) == 0
    m = torch.where(even, a + mu, a + 1 - mu)
    yy = y[..., None]
    r = s * s / v
    m_post = m * (sigma * sigma / v) + yy * r
    s_post = s * sigma / math.sqrt(v)
    alpha, beta = (a - m_post) / s_post, (a + 1 - m_post) / s_post
    gauss = _normal_pdf((yy - m) / math.sqrt(v)) / math.sqrt(v)
    mass = torch.special.ndtr(beta) - torch.special.ndtr(alpha)
    dmass = -(r / s_post) * (_normal_pdf(beta) - _normal_pdf(alpha))
    return (gauss * mass).sum(-1), (gauss * (-(yy - m) / v * mass + dmass)).sum(-1)


@functools.cache
def _cosine_moments(mu: float, s: float, n_terms: int) -> Tensor:
    """E[cos(n pi x0)], n = 1..n_terms, of the unnormalised N(mu, s^2) on [0, 1] (Gauss–Legendre,
    400 nodes: the integrand is smooth, so this is exact to rounding)."""
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(400)
    x = torch.tensor(0.5 * (nodes + 1), dtype=torch.float64)
    w = torch.tensor(0.5 * weights, dtype=torch.float64) * _normal_pdf((x - mu) / s) / s
    n = torch.arange(1, n_terms + 1, dtype=torch.float64)
    return (w * torch.cos(n[:, None] * math.pi * x)).sum(1)


def unit_marginal(y: Tensor, mu: float, s: float, sigma: float) -> tuple[Tensor, Tensor]:
    """(p_t(y), d/dy p_t(y)) on [0, 1] for data N(mu, s^2) truncated to [0, 1], reflected kernel
    std `sigma` (unit box); y: any shape. Float64. Above heat time 0.01 the cosine series of
    `scorekit.reflected` with the data's cosine moments, below it the Gaussian pieces."""
    y = y.double()
    z = 0.5 * (math.erf((1 - mu) / (s * math.sqrt(2))) - math.erf(-mu / (s * math.sqrt(2))))
    tau = 0.5 * sigma * sigma
    if tau <= 0.01:
        p, dp = _pieces(y, mu, s, sigma)
        return p / z, dp / z
    n = torch.arange(1, 23, dtype=torch.float64)  # exp(-23^2 pi^2 0.01) ~ 1e-23
    c = torch.exp(-n * n * math.pi**2 * tau) * _cosine_moments(mu, s, 22) / z
    arg = n * math.pi * y[..., None]
    return 1 + 2 * (c * torch.cos(arg)).sum(-1), -2 * math.pi * (n * c * torch.sin(arg)).sum(-1)


class TruncatedGaussianScore:
    """Exact score of independent truncated Gaussians N(mu_i, s_i^2) on the box of `sde`,
    noised by the reflected process; mu, s in data units, one per coordinate of x: (B, d)."""

    def __init__(self, mu: list[float], s: list[float], sde: ReflectedSDE):
        self.sde = sde
        self.mu = [(m - sde.lower) / sde.width for m in mu]
        self.s = [v / sde.width for v in s]

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if not bool((t == t[0]).all()):
            raise ValueError("TruncatedGaussianScore takes one time per call")
        y = (x.double() - self.sde.lower) / self.sde.width
        sigma = float(self.sde.sigma(t[:1].double())) / self.sde.width
        cols = []
        for i, (mu, s) in enumerate(zip(self.mu, self.s, strict=True)):
            p, dp = unit_marginal(y[:, i], mu, s, sigma)
            cols.append(dp / p)
        return (torch.stack(cols, 1) / self.sde.width).to(x.dtype)

    def cdf(self, i: int, t: float, n_grid: int = 200001):
        """CDF of coordinate i of p_t in data units (trapezoid on a fine grid), a callable."""
        y = torch.linspace(0, 1, n_grid, dtype=torch.float64)
        sigma = float(self.sde.sigma(torch.tensor([t], dtype=torch.float64))) / self.sde.width
        p, _ = unit_marginal(y, self.mu[i], self.s[i], sigma)
        c = torch.cat([torch.zeros(1, dtype=torch.float64),
                       torch.cumsum(0.5 * (p[1:] + p[:-1]) * (y[1] - y[0]), 0)])
        c = (c / c[-1]).numpy()
        grid = (self.sde.lower + self.sde.width * y).numpy()

        def cdf(x):
            import numpy as np

            return np.interp(x, grid, c)

        return cdf

    def sample_data(self, n: int, generator: torch.Generator) -> Tensor:
        """Exact draws of x0 (n, d) by inverting the truncated normal CDF."""
        cols = []
        for mu, s in zip(self.mu, self.s, strict=True):
            lo, hi = (torch.special.ndtr(torch.tensor((v - mu) / s, dtype=torch.float64))
                      for v in (0.0, 1.0))
            u = lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)
            cols.append(mu + s * torch.special.ndtri(u))
        return self.sde.lower + self.sde.width * torch.stack(cols, 1)
