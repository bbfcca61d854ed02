"""The process interface: `SDE` (what a forward process implements and validates) and
`Process` (the unchecked view that samplers, objectives and networks read it through).

A process implements `_marginal(t) -> (alpha_t, sigma_t)`, `_drift_rate(t)` (or `_drift(x, t)`
for a non-linear drift), `_diffusion(t)` and `prior_std`; `SDE` adds the public, validated API
of the contract (`marginal`, `drift`, `diffusion`, `prior_sample`, `prior_logp`), whose checks of
`t in [eps, T]` cost a host sync per call. Inner code that already holds valid times uses
`Process(sde)` instead: the same coefficients, public names, no checks.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor

from scorekit import rng
from scorekit._validate import T_SLACK

__all__ = ["SDE", "Process", "Score", "per_sample", "as_t", "check_range", "compute_dtype"]

Score = Callable[[Tensor, Tensor], Tensor]
"""A score `score(x, t) -> grad log p_t(x)`; x: (B, *D), t: (B,), output shaped like x."""


def as_t(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    """t as a tensor: a float becomes (B,) like `like`'s batch (or (1,) without it)."""
    if isinstance(t, Tensor):
        return t
    if like is not None:
        return torch.full((like.shape[0],), float(t), dtype=like.dtype, device=like.device)
    return torch.tensor([float(t)], dtype=torch.get_default_dtype())


def check_range(lo_name: str, lo: float, hi_name: str, hi: float, equal_ok: bool = False
                ) -> None:
    """ValueError naming both values unless 0 < lo < hi (lo <= hi with equal_ok)."""
    if not (0 < lo <= hi if equal_ok else 0 < lo < hi):
        raise ValueError(f"need 0 < {lo_name} {'<=' if equal_ok else '<'} {hi_name}, got "
                         f"{lo_name}={lo}, {hi_name}={hi}")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision that times and coefficients of samples in `dtype` are computed in: float64
    for float64, float32 otherwise (in bf16 a 1000-point grid on [0, 1] would collapse to ~500
    distinct times)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def per_sample(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a (B,) coefficient so it broadcasts against x: (B, *D)."""
    return coef.reshape(coef.shape + (1,) * (x.dim() - coef.dim()))


class SDE(ABC):
    """A linear Itô SDE `dx = f_t x dt + g(t) dW` on `t in [eps, T]` with a Gaussian prior."""

    T: float
    eps: float
    is_linear: bool = True  # Gaussian transitions with closed-form (alpha_t, sigma_t)
    is_reflected: bool = False  # confined to a box by reflection (`scorekit.reflected`)

    # --- process-specific pieces (unchecked, t: (B,)) --------------------------------------
    @abstractmethod
    def _marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t), each shaped like t."""

    @abstractmethod
    def _drift_rate(self, t: Tensor) -> Tensor:
        """f_t with f(x, t) = f_t * x, shaped like t."""

    @abstractmethod
    def _diffusion(self, t: Tensor) -> Tensor:
        """g(t), shaped like t."""

    @property
    @abstractmethod
    def prior_std(self) -> float:
        """Standard deviation of the isotropic Gaussian prior at T."""

    def _scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) that score networks use for preconditioning; t: (B,)."""
        return self._marginal(t)

    def _reference_score(self, x: Tensor, t: Tensor) -> Tensor | None:
        """A score that score networks add to their output (None: none)."""
        return None

    def _lw_cum(self, t: Tensor) -> Tensor:
        """Antiderivative of g(t)^2 / sigma_t^2 (float64), for likelihood importance sampling."""
        raise NotImplementedError(f"{type(self).__name__} has no likelihood importance sampler")

    def _lw_cum_inv(self, c: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no likelihood importance sampler")

    # --- public, validated ---------------------------------------------------------------
    def check_t(self, t: Tensor | float, name: str = "t") -> Tensor:
        """Return t as a tensor, raising ValueError if any entry lies outside [eps, T]."""
        t = as_t(t)
        if not torch.is_floating_point(t):
            raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must have shape (B,), got {tuple(t.shape)}")
        lo, hi = self.eps * (1 - T_SLACK), self.T * (1 + T_SLACK)
        if t.numel() == 0:
            return t
        t_min, t_max = torch.aminmax(t)  # one pass; NaN propagates and fails both comparisons
        if not (lo <= float(t_min) and float(t_max) <= hi):
            bad = (t < lo) | (t > hi) | torch.isnan(t)
            val = t[bad][0].item()
            raise ValueError(
                f"{name}={val:.6g} is outside [eps, T] = [{self.eps:g}, {self.T:g}] for "
                f"{type(self).__name__}"
            )
        return t

    def marginal(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) of `x_t = alpha_t x0 + sigma_t noise`; t: (B,) -> two (B,)."""
        return self._marginal(self.check_t(t))

    def drift_rate(self, t: Tensor | float) -> Tensor:
        """f_t in f(x, t) = f_t x; t: (B,) -> (B,)."""
        return self._drift_rate(self.check_t(t))

    def _drift(self, x: Tensor, t: Tensor) -> Tensor:
        return per_sample(self._drift_rate(t), x) * x

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Forward drift f(x, t); x: (B, *D), t: (B,) -> (B, *D)."""
        return self._drift(x, self.check_t(as_t(t, x)))

    def diffusion(self, t: Tensor | float) -> Tensor:
        """g(t); t: (B,) -> (B,)."""
        return self._diffusion(self.check_t(t))

    def prior_sample(
        self,
        shape: tuple[int, ...],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> Tensor:
        """Draw from the prior N(0, prior_std^2 I); shape (B, *D)."""
        z = rng.randn(tuple(shape), generator, dtype, device)
        return z if self.prior_std == 1.0 else z.mul_(self.prior_std)

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log density of the prior per sample; z: (B, *D) -> (B,)."""
        s2 = self.prior_std**2
        d = z[0].numel()
        sq = z.flatten(1).pow(2).sum(1)
        return -0.5 * d * math.log(2 * math.pi * s2) - sq / (2 * s2)

    def noise_level(self, t: Tensor) -> Tensor:
        """Scale-free noise level sigma_t / alpha_t (the EDM sigma of the rescaled process)."""
        alpha, sigma = self._marginal(t)
        return sigma / alpha

    def t_of_noise_level(self, level: Tensor) -> Tensor:
        """Inverse of `noise_level` by bisection in float64 (monotone on [eps, T])."""
        level = level.to(torch.float64)
        lo = torch.full_like(level, self.eps)
        hi = torch.full_like(level, self.T)
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            above = self.noise_level(mid) > level
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return 0.5 * (lo + hi)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"



class Process:
    """The coefficients of a process at trusted times, for inner code: no validation, no syncs.

    t: a tensor of any shape (usually (B,) or a float64 grid) with entries in [eps, T]; every
    method returns tensors shaped like t. lambda_t = log(alpha_t / sigma_t) is the half
    log-SNR of DPM-Solver (`lambda_`, since `lambda` is a Python keyword); `noise_level` is
    sigma_t / alpha_t = exp(-lambda_t), EDM's sigma of the rescaled process x / alpha_t.
    """

    __slots__ = ("sde",)

    def __init__(self, sde: SDE):
        self.sde = sde

    @property
    def T(self) -> float:  # noqa: N802 - the paper's symbol
        return self.sde.T

    @property
    def eps(self) -> float:
        return self.sde.eps

    def marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) of x_t = alpha_t x0 + sigma_t noise."""
        return self.sde._marginal(t)

    def alpha(self, t: Tensor) -> Tensor:
        return self.sde._marginal(t)[0]

    def sigma(self, t: Tensor) -> Tensor:
        return self.sde._marginal(t)[1]

    def noise_level(self, t: Tensor) -> Tensor:
        """sigma_t / alpha_t."""
        return self.sde.noise_level(t)

    def t_of_noise_level(self, level: Tensor) -> Tensor:
        """Inverse of `noise_level` (float64)."""
        return self.sde.t_of_noise_level(level)

    def lambda_(self, t: Tensor) -> Tensor:
        """lambda_t = log(alpha_t / sigma_t), decreasing in t."""
        return -torch.log(self.sde.noise_level(t))

    def t_of_lambda(self, lam: Tensor) -> Tensor:
        """Inverse of `lambda_` (float64)."""
        return self.sde.t_of_noise_level(torch.exp(-lam.to(torch.float64)))

    def drift_rate(self, t: Tensor) -> Tensor:
        """f_t of a linear drift f(x, t) = f_t x."""
        return self.sde._drift_rate(t)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forward drift f(x, t); x: (B, *D), t: (B,)."""
        return self.sde._drift(x, t)

    def diffusion(self, t: Tensor) -> Tensor:
        """g(t)."""
        return self.sde._diffusion(t)

    def scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) that score networks precondition with (the marginal's, or a
        short-time transition scale for processes without one)."""
        return self.sde._scales(t)

    def lw_cum(self, t: Tensor) -> Tensor:
        """An antiderivative of g(t)^2 / sigma_t^2 (float64): the cumulative weight of the
        likelihood weighting, for importance sampling of t."""
        return self.sde._lw_cum(t)

    def lw_cum_inv(self, c: Tensor) -> Tensor:
        """Inverse of `lw_cum` (float64)."""
        return self.sde._lw_cum_inv(c)

    def reference_score(self, x: Tensor, t: Tensor) -> Tensor | None:
        """A score that networks add to their output (None: none)."""
        return self.sde._reference_score(x, t)

    def __repr__(self) -> str:
        return f"Process({self.sde!r})"
