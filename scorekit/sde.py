"""Forward processes: linear VP, sub-VP, VE and EDM (non-linear ones: `scorekit.nonlinear_sde`,
also importable from here).

The linear processes have Gaussian transitions `x_t = alpha_t * x0 + sigma_t * noise` and a drift
`f(x, t) = f_t * x` (`drift_rate`). `NonlinearSDE` has a general drift `f(x, t)`, no closed-form
marginal (`is_linear = False`) and is trained with `LocalDSM`. Public methods validate `t` in
`[eps, T]`; the underscored twins (`_marginal`, `_drift_rate`, `_diffusion`) skip the check.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor

__all__ = ["SDE", "VPSDE", "SubVPSDE", "VESDE", "EDMSDE", "SDES", "make_sde"]

# Relative slack on the [eps, T] check: grids built in float64 and cast to float32 land a few
# ulps outside the interval.
_T_SLACK = 1e-5


def _as_t(t: Tensor | float, like: Tensor | None = None) -> Tensor:
    if isinstance(t, Tensor):
        return t
    if like is not None:
        return torch.full((like.shape[0],), float(t), dtype=like.dtype, device=like.device)
    return torch.tensor([float(t)], dtype=torch.get_default_dtype())


def _per_sample(coef: Tensor, x: Tensor) -> Tensor:
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
        t = _as_t(t)
        if not torch.is_floating_point(t):
            raise ValueError(f"{name} must be a floating tensor, got dtype {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must have shape (B,), got {tuple(t.shape)}")
        lo, hi = self.eps * (1 - _T_SLACK), self.T * (1 + _T_SLACK)
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
        return _per_sample(self._drift_rate(t), x) * x

    def drift(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Forward drift f(x, t); x: (B, *D), t: (B,) -> (B, *D)."""
        return self._drift(x, self.check_t(_as_t(t, x)))

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
        z = torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)
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


class _BetaSchedule(SDE):
    """Shared linear-beta schedule of VP and sub-VP: beta(t) = b0 + t (b1 - b0)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0,
                 eps: float = 1e-3):
        if not 0 < beta_min <= beta_max:
            raise ValueError(f"need 0 < beta_min <= beta_max, got beta_min={beta_min}, "
                             f"beta_max={beta_max}")
        if not 0 < eps < T:
            raise ValueError(f"need 0 < eps < T, got eps={eps}, T={T}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)
        self.T, self.eps = float(T), float(eps)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def int_beta(self, t: Tensor) -> Tensor:
        """B(t) = int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def t_of_int_beta(self, b: Tensor) -> Tensor:
        """Invert B(t) = b (positive root of the quadratic)."""
        db = self.beta_max - self.beta_min
        if db == 0:
            return b / self.beta_min
        # Rationalised root avoids cancellation when b is tiny.
        return 2 * b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * db * b))

    def _drift_rate(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    @property
    def prior_std(self) -> float:
        return 1.0


class VPSDE(_BetaSchedule):
    """Variance-preserving SDE (DDPM limit): alpha = exp(-B/2), sigma = sqrt(1 - exp(-B))."""

    def _marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.int_beta(t)
        # -expm1(-B) keeps sigma accurate at t ~ 1e-5 where 1 - exp(-B) loses all digits in fp32.
        return torch.exp(-0.5 * b), torch.sqrt(-torch.expm1(-b))

    def _diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t))

    def noise_level(self, t: Tensor) -> Tensor:
        return torch.sqrt(torch.expm1(self.int_beta(t)))

    def t_of_noise_level(self, level: Tensor) -> Tensor:
        level = level.to(torch.float64)
        return self.t_of_int_beta(torch.log1p(level * level))

    def _lw_cum(self, t: Tensor) -> Tensor:
        b = self.int_beta(t.to(torch.float64))
        return b + torch.log(-torch.expm1(-b))  # = log(e^B - 1)

    def _lw_cum_inv(self, c: Tensor) -> Tensor:
        return self.t_of_int_beta(torch.nn.functional.softplus(c.to(torch.float64)))


class SubVPSDE(_BetaSchedule):
    """sub-VP SDE: same mean as VP, std sigma = 1 - exp(-B) (no square root)."""

    def _marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.int_beta(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)

    def _diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(self.beta(t) * -torch.expm1(-2 * self.int_beta(t)))

    def _lw_cum(self, t: Tensor) -> Tensor:
        b = self.int_beta(t.to(torch.float64))
        return b + 2 * torch.log(-torch.expm1(-b))

    def _lw_cum_inv(self, c: Tensor) -> Tensor:
        # C(B) = B + 2 log(1 - e^-B) is increasing in B; bisect on log B in float64 so tiny B
        # (t_min ~ 1e-5 gives B ~ 1e-6) is resolved to full relative precision.
        c = c.to(torch.float64)
        b_max = self.int_beta(torch.tensor(self.T, dtype=torch.float64)).item() + 1.0
        lo = torch.full_like(c, -80.0)
        hi = torch.full_like(c, math.log(b_max))
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            b = torch.exp(mid)
            above = b + 2 * torch.log(-torch.expm1(-b)) > c
            hi = torch.where(above, mid, hi)
            lo = torch.where(above, lo, mid)
        return self.t_of_int_beta(torch.exp(0.5 * (lo + hi)))


class VESDE(SDE):
    """Variance-exploding SDE: sigma(t) = sigma_min (sigma_max / sigma_min)^t, alpha = 1.

    Follows score_sde's convention that the marginal std is sigma(t) (x0 is taken as already
    blurred by sigma_min), not sqrt(sigma(t)^2 - sigma_min^2).
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0,
                 eps: float = 1e-5):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        if not 0 < eps < T:
            raise ValueError(f"need 0 < eps < T, got eps={eps}, T={T}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.T, self.eps = float(T), float(eps)

    @property
    def _log_ratio(self) -> float:
        return math.log(self.sigma_max / self.sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self.sigma(t)

    def _drift_rate(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _diffusion(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def t_of_noise_level(self, level: Tensor) -> Tensor:
        return torch.log(level.to(torch.float64) / self.sigma_min) / self._log_ratio

    def _lw_cum(self, t: Tensor) -> Tensor:
        return 2 * self._log_ratio * t.to(torch.float64)

    def _lw_cum_inv(self, c: Tensor) -> Tensor:
        return c.to(torch.float64) / (2 * self._log_ratio)


class EDMSDE(SDE):
    """EDM (Karras et al. 2022) process: sigma(t) = t, alpha = 1, g = sqrt(2t); t is sigma."""

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5,
                 rho: float = 7.0):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self.sigma_data, self.rho = float(sigma_data), float(rho)
        self.T, self.eps = self.sigma_max, self.sigma_min

    def _marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), t

    def _drift_rate(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _diffusion(self, t: Tensor) -> Tensor:
        return torch.sqrt(2 * t)

    @property
    def prior_std(self) -> float:
        return self.sigma_max

    def t_of_noise_level(self, level: Tensor) -> Tensor:
        return level.to(torch.float64)

    def _lw_cum(self, t: Tensor) -> Tensor:
        return 2 * torch.log(t.to(torch.float64))

    def _lw_cum_inv(self, c: Tensor) -> Tensor:
        return torch.exp(0.5 * c.to(torch.float64))


SDES: dict[str, type[SDE]] = {"vp": VPSDE, "subvp": SubVPSDE, "ve": VESDE, "edm": EDMSDE}


def make_sde(name: str, **params) -> SDE:
    """Build a process by name ("vp", "subvp", "ve", "edm", a non-linear one of
    `scorekit.nonlinear_sde.NONLINEAR_SDES`, e.g. "double_well", "reflected", the reflected
    process on a box of `scorekit.reflected`, or "jacobi" for Dirichlet diffusion on the
    simplex) with keyword parameters."""
    from scorekit.dirichlet import JacobiDiffusion
    from scorekit.nonlinear_sde import NONLINEAR_SDES
    from scorekit.reflected import REFLECTED_SDES

    registry = {**SDES, **NONLINEAR_SDES, **REFLECTED_SDES, "jacobi": JacobiDiffusion}
    if name not in registry:
        others = sorted({**NONLINEAR_SDES, **REFLECTED_SDES, "jacobi": JacobiDiffusion})
        raise ValueError(f"unknown sde {name!r}; valid: {sorted(SDES) + others}")
    from scorekit._validate import check_kwargs

    cls = registry[name]
    check_kwargs(cls, params, where=f"sde '{name}'")
    return cls(**params)


def __getattr__(name: str):
    # The non-linear processes live in scorekit.nonlinear_sde (which builds on SDE above);
    # resolving them lazily keeps `from scorekit.sde import NonlinearSDE` free of import cycles.
    if name in ("NonlinearSDE", "DoubleWellSDE"):
        from scorekit import nonlinear_sde

        return getattr(nonlinear_sde, name)
    raise AttributeError(f"module 'scorekit.sde' has no attribute {name!r}")
