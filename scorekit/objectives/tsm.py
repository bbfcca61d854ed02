"""Target score matching (De Bortoli, Hutchinson, Wirnsberger, Doucet 2024) mixed with DSM.

For data whose clean score `grad log p0` is known pointwise (Boltzmann densities p0 ∝ e^-U), and
`x_t = alpha_t x0 + sigma_t eps`, two unbiased regression targets for `grad log p_t(x_t)` exist:
- DSM (denoising score identity):  `-eps / sigma_t`, variance ~ 1 / sigma_t^2 as t -> 0;
- TSM (target score identity):     `grad log p0(x0) / alpha_t`, variance -> 0 as sigma_t -> 0 but
  ~ 1 / alpha_t^2 as alpha_t -> 0 (VP at large t).
Any convex combination `kappa_t TSM + (1 - kappa_t) DSM` is unbiased too, so all mixings share
the minimiser `grad log p_t` and differ only in variance. The default
`kappa_t = alpha_t^2 c^2 / (alpha_t^2 c^2 + sigma_t^2)` (`kappa_scale` c = 1: the spec's choice,
`[alpha (grad log p0(x0) + x0) - x_t] / (alpha^2 + sigma^2)`) is the variance-free mixing for
N(mu, c^2 I) data: both targets are affine in x0 given x_t, with slopes -1 / (c^2 alpha) (TSM)
and alpha / sigma^2 (DSM), and this kappa cancels them, leaving the exact score. For other data
set c to the data's length scale (the inverse square root of the curvature of -log p0): with c
too large the TSM part dominates while sigma_t exceeds that scale, where its variance is high.
Weighting is sigma_t^2 for every mixing, so losses of different mixings differ by constants.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from scorekit.objectives.dsm import (
    Score,
    batch_t,
    check_linear,
    check_reduction,
    check_t_range,
    noised,
    reduce,
    scaled_score,
)
from scorekit.processes import SDE, Process, per_sample

MIXINGS = ("kappa", "tsm", "dsm")
KappaFn = Callable[[Tensor, Tensor], Tensor]


class TSM:
    """Target score-matching loss; `loss_fn(model, x0)` returns a scalar (mean over batch).

    `data_score(x0)` returns grad log p0(x0) shaped like x0. `mixing`: "kappa" (default, weight
    alpha^2 c^2 / (alpha^2 c^2 + sigma^2) with c = `kappa_scale`, or `kappa_fn(alpha, sigma)`),
    "tsm" (kappa = 1) or "dsm" (kappa = 0, identical to `DSM(weighting="sigma2")`). Times are
    uniform on [t_min, t_max]; pure TSM with VP should keep t_max small (the target scales as
    1 / alpha_t). `max_score_norm` clips the per-sample norm of grad log p0 (for stiff potentials
    with clashes; it biases the target).
    """

    needs_data_score = True

    def __init__(self, sde: SDE, data_score: Callable[[Tensor], Tensor], mixing: str = "kappa",
                 kappa_fn: KappaFn | None = None, t_min: float | None = None,
                 t_max: float | None = None, reduction: str = "sum",
                 max_score_norm: float | None = None, kappa_scale: float = 1.0):
        check_linear(sde, "TSM")
        if not callable(data_score):
            raise ValueError(f"data_score must be callable x0 -> grad log p0(x0), got "
                             f"{data_score!r}")
        if mixing not in MIXINGS:
            raise ValueError(f"unknown mixing {mixing!r}; valid: {list(MIXINGS)}")
        if kappa_fn is not None and (mixing != "kappa" or not callable(kappa_fn)):
            raise ValueError(f"kappa_fn must be a callable and needs mixing='kappa', got "
                             f"kappa_fn={kappa_fn!r}, mixing={mixing!r}")
        if not kappa_scale > 0 or (kappa_fn is not None and kappa_scale != 1.0):
            raise ValueError(f"kappa_scale must be > 0 and applies to the default kappa only, "
                             f"got kappa_scale={kappa_scale}, kappa_fn={kappa_fn!r}")
        check_reduction(reduction)
        if max_score_norm is not None and not max_score_norm > 0:
            raise ValueError(f"max_score_norm must be null or > 0, got {max_score_norm}")
        self.t_min, self.t_max = check_t_range(sde, t_min, t_max)
        alpha, sigma = Process(sde).marginal(torch.tensor([self.t_max], dtype=torch.float64))
        if mixing == "tsm" and float(sigma / alpha) > 10:
            warnings.warn(f"pure TSM up to t_max={self.t_max:g} scales grad log p0 by "
                          f"sigma/alpha = {float(sigma / alpha):.3g}; consider mixing='kappa' or "
                          "a smaller t_max", stacklevel=2)
        self.sde, self.data_score, self.mixing = sde, data_score, mixing
        self.kappa_fn, self.kappa_scale = kappa_fn, float(kappa_scale)
        self.reduction = reduction
        self.max_score_norm = None if max_score_norm is None else float(max_score_norm)

    def kappa(self, t: Tensor) -> Tensor:
        """Weight of the TSM target at each time; t: (B,) -> (B,)."""
        return self._mix_weights(t)[0]

    def _mix_weights(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """(kappa, 1 - kappa); the default's 1 - kappa = sigma^2 / (alpha^2 c^2 + sigma^2) is
        formed directly: by subtraction it loses its relative precision when sigma is small, and
        it multiplies the DSM term eps / sigma, which is then large."""
        if self.mixing == "tsm":
            return torch.ones_like(t), torch.zeros_like(t)
        if self.mixing == "dsm":
            return torch.zeros_like(t), torch.ones_like(t)
        alpha, sigma = Process(self.sde).marginal(t)
        if self.kappa_fn is None:
            signal = (self.kappa_scale * alpha) ** 2
            return signal / (signal + sigma**2), sigma**2 / (signal + sigma**2)
        kappa = self.kappa_fn(alpha, sigma)
        return kappa, 1 - kappa

    def sample_t(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                 ) -> Tensor:
        """t ~ U(t_min, t_max): (n,)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        return (self.t_min + u * (self.t_max - self.t_min)).to(dtype)

    def clean_score(self, x0: Tensor) -> Tensor:
        """grad log p0(x0), shape-checked and clipped to `max_score_norm`; (B, *D)."""
        s0 = self.data_score(x0)
        if s0.shape != x0.shape:
            raise ValueError(f"data_score returned shape {tuple(s0.shape)} for x0 of shape "
                             f"{tuple(x0.shape)}")
        if self.max_score_norm is not None:
            norm = s0.flatten(1).norm(dim=1).clamp_min(torch.finfo(s0.dtype).tiny)
            s0 = s0 * per_sample((self.max_score_norm / norm).clamp(max=1.0), s0)
        return s0

    def scaled_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """sigma_t times the regression target: kappa (sigma / alpha) grad log p0(x0) -
        (1 - kappa) eps; x0, noise: (B, *D), t: (B,) -> (B, *D)."""
        kappa, one_minus = self._mix_weights(t)
        out = -per_sample(one_minus, noise) * noise
        if self.mixing != "dsm":
            alpha, sigma = Process(self.sde).marginal(t)
            out = out + per_sample(kappa * sigma / alpha, x0) * self.clean_score(x0)
        return out

    def target(self, x0: Tensor, xt: Tensor, t: Tensor | float) -> Tensor:
        """Regression target for grad log p_t(xt) given its clean source x0: (B, *D)."""
        t = batch_t(t, x0)
        alpha, sigma = Process(self.sde).marginal(t)
        noise = (xt - per_sample(alpha, x0) * x0) / per_sample(sigma, x0)
        return self.scaled_target(x0, noise, t) / per_sample(sigma, x0)

    def per_sample(self, model: Score, x0: Tensor, t: Tensor | float | None = None,
                   noise: Tensor | None = None, generator: torch.Generator | None = None
                   ) -> Tensor:
        """Per-sample losses `||sigma_t model(x_t, t) - sigma_t target||^2`: (B,)."""
        t, noise, xt, sigma = noised(self, x0, t, noise, generator)
        resid = scaled_score(model, xt, t, sigma) - self.scaled_target(x0, noise, t)
        return reduce(resid, self.reduction)

    def __call__(self, model: Score, x0: Tensor, t: Tensor | float | None = None,
                 noise: Tensor | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Scalar loss: mean over the batch of `per_sample`."""
        return self.per_sample(model, x0, t, noise, generator).mean()
