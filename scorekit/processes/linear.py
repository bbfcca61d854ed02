"""Linear forward processes: VP, sub-VP, VE and EDM.

Gaussian transitions `x_t = alpha_t * x0 + sigma_t * noise` and a drift `f(x, t) = f_t * x`
(`drift_rate`); each class implements the hooks of `scorekit.processes.base.SDE`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from scorekit.processes.base import SDE, check_range

__all__ = ["VPSDE", "SubVPSDE", "VESDE", "EDMSDE", "SDES"]


class _BetaSchedule(SDE):
    """Shared linear-beta schedule of VP and sub-VP: beta(t) = b0 + t (b1 - b0)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0,
                 eps: float = 1e-3):
        check_range("beta_min", beta_min, "beta_max", beta_max, equal_ok=True)
        check_range("eps", eps, "T", T)
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
        check_range("sigma_min", sigma_min, "sigma_max", sigma_max)
        check_range("eps", eps, "T", T)
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
        check_range("sigma_min", sigma_min, "sigma_max", sigma_max)
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
