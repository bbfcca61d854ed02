"""Reflected diffusion on a box (Lou & Ermon 2023, "Reflected Diffusion Models").

Forward process `dx = g(t) dW + dL` on `[lower, upper]^d`: VE noise (`sigma(t) = sigma_min
(sigma_max / sigma_min)^t`) plus the boundary local time `L` that reflects the path at the faces.
Coordinates decouple, and after the affine map `y = (x - lower) / L` (L = upper - lower) each
follows the Neumann heat kernel on [0, 1] at heat time `tau = s^2 / 2`, `s = sigma_t / L`:
- images (small tau):  p(y | y0) = sum_k N(y; 2k + y0, s^2) + N(y; 2k - y0, s^2)
- cosine (large tau):  p(y | y0) = 1 + 2 sum_{n>=1} exp(-n^2 pi^2 tau) cos(n pi y) cos(n pi y0)
Both are evaluated in float64. Below `tau_switch` (0.05) the image sum with |k| <= 3 is exact to
float64 rounding; above it 10 cosine terms are, and the density there is >= 0.017 everywhere on
the box, so the series does not cancel (at the official switch tau = 0.01 it loses up to 2.7e-3
of the sigma-scaled score in float32). Sampling the forward process is exact: fold x0 + sigma z.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

from scorekit import rng
from scorekit.processes.base import SDE, as_t, per_sample
from scorekit.processes.linear import VESDE

__all__ = ["ReflectedSDE", "fold", "heat_kernel_logp", "heat_kernel_score", "n_images",
           "n_cosine_terms", "KERNEL_METHODS", "REFLECTED_SDES"]

KERNEL_METHODS = ("auto", "images", "cosine")
TAU_SWITCH = 0.05


def n_images(tau: float) -> int:
    """Image pairs K (k in [-K, K]) that make the image sum exact in float64 up to heat time tau:
    every omitted image lies more than ~13 standard deviations from the box."""
    return math.ceil(1 + 3 * math.sqrt(tau)) + 1


def n_cosine_terms(tau: float) -> int:
    """Cosine terms N with exp(-(N + 1)^2 pi^2 tau) < 1e-20 for every heat time >= tau."""
    return max(1, math.ceil(math.sqrt(46.1 / (math.pi**2 * tau))))


def fold(x: Tensor, lower: float = 0.0, upper: float = 1.0) -> Tensor:
    """Reflect x into [lower, upper] elementwise (the identity inside, idempotent); x: any shape.

    y = (x - lower) mod 2L, y -> 2L - y where y > L: the path of a point reflected at both faces.
    """
    width = upper - lower
    y = torch.remainder(x - lower, 2 * width)
    y = torch.where(y > width, 2 * width - y, y)
    # lower + y can round one ulp past a face; the clamp only undoes that rounding.
    folded = (lower + y).clamp(lower, upper)
    return torch.where((x >= lower) & (x <= upper), x, folded)


def _images(y: Tensor, y0: Tensor, s: Tensor, k_max: int) -> tuple[Tensor, Tensor]:
    """(log p, d/dy log p) of the image sum on [0, 1]; y, y0, s broadcast to one shape."""
    k = torch.arange(-k_max, k_max + 1, dtype=y.dtype, device=y.device)
    centres = torch.cat([2 * k + y0[..., None], 2 * k - y0[..., None]], dim=-1)
    diff = y[..., None] - centres
    s2 = (s * s)[..., None]
    logw = -0.5 * diff * diff / s2
    logp = torch.logsumexp(logw, dim=-1) - 0.5 * torch.log(2 * math.pi * s * s)
    score = (torch.softmax(logw, dim=-1) * (-diff / s2)).sum(-1)
    return logp, score


def _cosine(y: Tensor, y0: Tensor, s: Tensor, n_terms: int) -> tuple[Tensor, Tensor]:
    """(log p, d/dy log p) of the Neumann eigenfunction series on [0, 1]."""
    n = torch.arange(1, n_terms + 1, dtype=y.dtype, device=y.device)
    tau = (0.5 * s * s)[..., None]
    a = torch.exp(-n * n * math.pi**2 * tau) * torch.cos(n * math.pi * y0[..., None])
    p = 1 + 2 * (a * torch.cos(n * math.pi * y[..., None])).sum(-1)
    dp = -2 * math.pi * (n * a * torch.sin(n * math.pi * y[..., None])).sum(-1)
    # Only an exact zero is guarded (no +1e-12: it would bias the tails).
    p = torch.where(p == 0, torch.finfo(p.dtype).tiny, p)
    return torch.log(p), dp / p


def _heat_kernel(y: Tensor, y0: Tensor, s: Tensor | float, method: str, tau_switch: float,
                 n_terms: int | None, k_max: int | None) -> tuple[Tensor, Tensor]:
    if method not in KERNEL_METHODS:
        raise ValueError(f"unknown kernel method {method!r}; valid: {list(KERNEL_METHODS)}")
    y, y0 = y.to(torch.float64), y0.to(torch.float64)
    s = torch.as_tensor(s, dtype=torch.float64, device=y.device)
    y, y0, s = torch.broadcast_tensors(y, y0, s)
    if method == "images":
        tau_max = float(0.5 * s.max() ** 2) if s.numel() else 0.0
        return _images(y, y0, s, k_max or n_images(tau_max))
    if method == "cosine":
        tau_min = float(0.5 * s.min() ** 2) if s.numel() else 1.0
        return _cosine(y, y0, s, n_terms or n_cosine_terms(tau_min))
    small = 0.5 * s * s <= tau_switch
    logp, score = torch.empty_like(y), torch.empty_like(y)
    # Index assignment (not torch.where) keeps the unused series' values out of autograd.
    logp[small], score[small] = _images(y[small], y0[small], s[small],
                                        k_max or n_images(tau_switch))
    big = ~small
    logp[big], score[big] = _cosine(y[big], y0[big], s[big], n_terms or n_cosine_terms(tau_switch))
    return logp, score


def heat_kernel_logp(y: Tensor, y0: Tensor, s: Tensor | float, method: str = "auto",
                     tau_switch: float = TAU_SWITCH, n_terms: int | None = None,
                     k_max: int | None = None) -> Tensor:
    """Elementwise log of the Neumann heat kernel on [0, 1] with Gaussian std s (float64).

    y, y0, s broadcast together. method "auto" (images for s^2/2 <= tau_switch, else cosine),
    "images" (|k| <= k_max) or "cosine" (n_terms terms); the sizes default to float64-exact ones.
    """
    return _heat_kernel(y, y0, s, method, tau_switch, n_terms, k_max)[0]


def heat_kernel_score(y: Tensor, y0: Tensor, s: Tensor | float, method: str = "auto",
                      tau_switch: float = TAU_SWITCH, n_terms: int | None = None,
                      k_max: int | None = None) -> Tensor:
    """Elementwise d/dy log p(y | y0) of the Neumann heat kernel on [0, 1] (float64); as
    `heat_kernel_logp`. Zero at y in {0, 1} (no flux through the faces)."""
    return _heat_kernel(y, y0, s, method, tau_switch, n_terms, k_max)[1]


class ReflectedSDE(SDE):
    """VE noise reflected at the faces of the box [lower, upper]^d: x_t = fold(x0 + sigma_t z).

    sigma_min / sigma_max are in data units and default to 0.01 L and 5 L (L = upper - lower;
    the official [0, 1] configuration). `marginal(t)` returns (1, sigma_t), the scale of the
    Gaussian before folding, which score networks use for preconditioning. The prior is uniform
    on the box, exact up to exp(-pi^2 tau_T) (tau_T = (sigma_max / L)^2 / 2). base="vp" has no
    closed-form reflected kernel (a drift on a box) and raises NotImplementedError.
    """

    is_linear = False
    is_reflected = True

    def __init__(self, base: str = "ve", lower: float = 0.0, upper: float = 1.0,
                 sigma_min: float | None = None, sigma_max: float | None = None,
                 T: float = 1.0, eps: float = 1e-5, tau_switch: float = TAU_SWITCH):
        if base == "vp":
            raise NotImplementedError(
                "ReflectedSDE(base='vp'): a VP drift confined to a box has no closed-form "
                "transition kernel, so it cannot be trained with ReflectedDSM; use base='ve'")
        if base != "ve":
            raise ValueError(f"unknown base {base!r}; valid: ['ve'] ('vp' is not implemented)")
        for name, val in (("lower", lower), ("upper", upper)):
            if isinstance(val, bool) or not isinstance(val, (int, float)) \
                    or not math.isfinite(val):
                raise ValueError(f"{name} must be a finite number, got {val!r}")
        if not lower < upper:
            raise ValueError(f"need lower < upper, got lower={lower}, upper={upper}")
        if not 0 < tau_switch:
            raise ValueError(f"tau_switch must be > 0, got {tau_switch}")
        self.base, self.lower, self.upper = base, float(lower), float(upper)
        width = self.upper - self.lower
        sigma_min = 0.01 * width if sigma_min is None else sigma_min
        sigma_max = 5.0 * width if sigma_max is None else sigma_max
        self._ve = VESDE(sigma_min, sigma_max, T, eps)  # validates the schedule
        self.sigma_min, self.sigma_max = self._ve.sigma_min, self._ve.sigma_max
        self.T, self.eps, self.tau_switch = self._ve.T, self._ve.eps, float(tau_switch)
        if self.prior_error > 1e-4:
            warnings.warn(f"sigma_max={sigma_max:g} on a box of width {width:g}: the marginal at "
                          f"T differs from the uniform prior by up to {self.prior_error:.2g}; "
                          f"raise sigma_max to >= {1.5 * width:.3g}", stacklevel=2)

    @property
    def width(self) -> float:
        return self.upper - self.lower

    @property
    def prior_error(self) -> float:
        """Max relative deviation of the kernel at T from uniform, ~2 exp(-pi^2 tau_T)."""
        tau = 0.5 * (self.sigma_max / self.width) ** 2
        return 2 * sum(math.exp(-(n * n) * math.pi**2 * tau) for n in range(1, 40))

    def sigma(self, t: Tensor) -> Tensor:
        return self._ve.sigma(t)

    def _marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self._ve.sigma(t)

    def _drift_rate(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _diffusion(self, t: Tensor) -> Tensor:
        return self._ve._diffusion(t)

    @property
    def prior_std(self) -> float:
        """Per-coordinate std of the uniform prior, L / sqrt(12)."""
        return self.width / math.sqrt(12)

    def t_of_noise_level(self, level: Tensor) -> Tensor:
        return self._ve.t_of_noise_level(level)

    def _lw_cum(self, t: Tensor) -> Tensor:
        return self._ve._lw_cum(t)

    def _lw_cum_inv(self, c: Tensor) -> Tensor:
        return self._ve._lw_cum_inv(c)

    # --- the box -------------------------------------------------------------------------
    def fold(self, x: Tensor) -> Tensor:
        """Reflect x into the box elementwise (identity inside); any shape."""
        return fold(x, self.lower, self.upper)

    def contains(self, x: Tensor) -> Tensor:
        """Per sample: all elements inside the box; x: (B, *D) -> (B,) bool."""
        return ((x >= self.lower) & (x <= self.upper)).flatten(1).all(1)

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None
                     ) -> Tensor:
        """Uniform on the box; shape (B, *D)."""
        u = rng.rand(tuple(shape), generator, dtype, device)
        return self.lower + self.width * u

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log density of the uniform prior, -D log L per sample; z: (B, *D) -> (B,)."""
        d = z[0].numel()
        return torch.full((z.shape[0],), -d * math.log(self.width), dtype=z.dtype,
                          device=z.device)

    # --- transition kernel -----------------------------------------------------------------
    def _check_pair(self, x_t: Tensor, x0: Tensor, t: Tensor | float,
                    names: tuple[str, str] = ("x_t", "x0")) -> Tensor:
        if x_t.shape != x0.shape or x_t.dim() < 2:
            raise ValueError(f"x_t and x0 must share a shape (B, *D), got {tuple(x_t.shape)} "
                             f"and {tuple(x0.shape)}")
        t = self.check_t(as_t(t, x_t))
        if t.shape[0] != x_t.shape[0]:
            raise ValueError(f"t has {t.shape[0]} entries for a batch of {x_t.shape[0]}")
        for name, v in zip(names, (x_t, x0), strict=True):
            outside = ~self.contains(v)
            if bool(outside.any()):
                i = int(outside.nonzero()[0, 0])
                raise ValueError(f"{name}[{i}] has elements outside the box [{self.lower:g}, "
                                 f"{self.upper:g}] (min {float(v[i].min()):.6g}, max "
                                 f"{float(v[i].max()):.6g})")
        return t

    def _unit(self, x_t: Tensor, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Unit-box coordinates and per-element unit std, float64, shaped like x_t."""
        y = (x_t.to(torch.float64) - self.lower) / self.width
        y0 = (x0.to(torch.float64) - self.lower) / self.width
        s = per_sample(self.sigma(t.to(torch.float64)) / self.width, y).expand_as(y)
        return y, y0, s

    def _transition(self, x_t: Tensor, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(log p per element in unit coordinates, score in data units), float64; unchecked."""
        y, y0, s = self._unit(x_t, x0, t)
        logp, score = _heat_kernel(y, y0, s, "auto", self.tau_switch, None, None)
        return logp, score / self.width

    def transition_logp(self, x_t: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
        """log p(x_t | x0) of the reflected process (float64); x_t, x0: (B, *D), t: (B,) -> (B,)."""
        t = self._check_pair(x_t, x0, t)
        logp, _ = self._transition(x_t, x0, t)
        return logp.flatten(1).sum(1) - x_t[0].numel() * math.log(self.width)

    def transition_score(self, x_t: Tensor, x0: Tensor, t: Tensor | float) -> Tensor:
        """grad_{x_t} log p(x_t | x0), computed in float64, returned in x_t's dtype;
        x_t, x0: (B, *D), t: (B,) -> (B, *D)."""
        t = self._check_pair(x_t, x0, t)
        return self._transition(x_t, x0, t)[1].to(x_t.dtype)

    def _noise(self, x0: Tensor, t: Tensor, generator: torch.Generator | None = None) -> Tensor:
        z = rng.randn(x0.shape, generator, x0.dtype, x0.device)
        sigma = per_sample(self.sigma(t.to(torch.float64)), x0)
        # Folded in float64: at sigma ~ 5 L the unfolded point lies tens of widths out.
        return self.fold(x0.to(torch.float64) + sigma * z.to(torch.float64)).to(x0.dtype)

    def noise(self, x0: Tensor, t: Tensor | float, generator: torch.Generator | None = None
              ) -> Tensor:
        """An exact draw of x_t ~ p(. | x0): fold(x0 + sigma_t z); x0: (B, *D), t: (B,)."""
        t = self._check_pair(x0, x0, t, names=("x0", "x0"))
        return self._noise(x0, t, generator)

    def __repr__(self) -> str:
        return (f"ReflectedSDE(base={self.base!r}, lower={self.lower}, upper={self.upper}, "
                f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T}, "
                f"eps={self.eps}, tau_switch={self.tau_switch})")


REFLECTED_SDES: dict[str, type[SDE]] = {"reflected": ReflectedSDE}
