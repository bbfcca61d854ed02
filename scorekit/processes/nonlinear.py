"""Processes with a non-linear drift, `dx = f(x, t) dt + g dW` (objectives.md §4).

Their transitions are not Gaussian, so there is no closed-form marginal: they are trained with
`scorekit.objectives.LocalDSM` and sampled with reverse Euler–Maruyama (`samplers.sample(...,
method="em", denoise="mean")`). Also importable as `scorekit.sde.NonlinearSDE` / `DoubleWellSDE`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from scorekit import rng
from scorekit.processes.base import SDE, as_t, check_range, per_sample

__all__ = ["NonlinearSDE", "DoubleWellSDE", "NONLINEAR_SDES", "quartic_well",
           "quartic_well_log_norm"]


class NonlinearSDE(SDE):
    """`dx = f(x, t) dt + g dW` with a general drift `drift_fn(x, t)`, x: (B, *D), t: (B,), and a
    constant diffusion g.

    No closed-form marginal: `marginal` raises, training uses `LocalDSM`, and of the samplers only
    Euler–Maruyama applies (with `denoise="mean"` or `"none"`). `prior(shape, generator, device,
    dtype)` draws the start of the reverse process (e.g. the stationary law); without one,
    `prior_sample` runs the forward SDE from 0 for `burn_in` time units, which approximates the
    stationary law (equal to q_T only if the process mixes by T). `elementwise=True` declares a
    coordinate-wise drift (diagonal Jacobian). Networks are preconditioned with the short-time
    transition scale `(1, g sqrt(t))` (`_scales`) and, given `reference_score(x)` (e.g. the
    stationary score), learn only the deviation from it: a network's bounded error then cannot
    overpower a superlinear drift in the reverse SDE (the reverse drift is `g^2 s - f`).
    """

    is_linear = False

    def __init__(self, drift_fn: Callable[[Tensor, Tensor], Tensor], diffusion: float = 1.0,
                 T: float = 1.0, eps: float = 1e-3, prior: Callable[..., Tensor] | None = None,
                 prior_logp: Callable[[Tensor], Tensor] | None = None, elementwise: bool = False,
                 reference_score: Callable[[Tensor], Tensor] | None = None,
                 burn_in: float = 10.0, burn_in_steps: int = 1000):
        if not callable(drift_fn):
            raise ValueError(f"drift_fn must be callable, got {drift_fn!r}")
        if isinstance(diffusion, bool) or not isinstance(diffusion, (int, float)) \
                or not diffusion > 0:
            raise ValueError(f"diffusion must be a number > 0, got {diffusion!r}")
        check_range("eps", eps, "T", T)
        if not burn_in > 0 or not isinstance(burn_in_steps, int) or burn_in_steps < 1:
            raise ValueError(f"need burn_in > 0 and burn_in_steps >= 1, got burn_in={burn_in}, "
                             f"burn_in_steps={burn_in_steps}")
        self.drift_fn = drift_fn
        self.g = float(diffusion)
        self.T, self.eps = float(T), float(eps)
        self.prior, self.prior_logp_fn, self.elementwise = prior, prior_logp, bool(elementwise)
        self.reference_score = reference_score
        self.burn_in, self.burn_in_steps = float(burn_in), burn_in_steps

    def _marginal(self, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"{type(self).__name__} has a non-linear drift and no "
                                  "closed-form marginal (train with LocalDSM)")

    def _drift_rate(self, t: Tensor) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__}: the drift is not linear in x; "
                                  "use drift(x, t)")

    def _drift(self, x: Tensor, t: Tensor) -> Tensor:
        return self.drift_fn(x, t)

    def _diffusion(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.g)

    def _scales(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), self.g * torch.sqrt(t)

    def _reference_score(self, x: Tensor, t: Tensor) -> Tensor | None:
        return None if self.reference_score is None else self.reference_score(x)

    @property
    def prior_std(self) -> float:
        raise NotImplementedError(f"{type(self).__name__} has no Gaussian prior")

    def simulate(self, x: Tensor, t_from: Tensor | float, t_to: Tensor | float, steps: int,
                 generator: torch.Generator | None = None) -> Tensor:
        """Euler–Maruyama from x at t_from to t_to, per-sample times (B,); x: (B, *D).

        EM is explicit: with a superlinear drift it diverges once h |f'(x)| > 2 somewhere, which
        raises FloatingPointError rather than returning inf / NaN.
        """
        t_from, t_to = as_t(t_from, x), as_t(t_to, x)
        h = (t_to - t_from) / steps
        hx = per_sample(h, x)
        for i in range(steps):
            t = t_from + i * h
            z = rng.randn(x.shape, generator, x.dtype, x.device)
            x = x + hx * self._drift(x, t) + per_sample(self._diffusion(t), x) * hx.sqrt() * z
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"Euler–Maruyama with {steps} steps diverged (step "
                                     f"h |f'(x)| > 2 for some x): use more steps")
        return x

    def prior_sample(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                     device: torch.device | str | None = None, dtype: torch.dtype | None = None
                     ) -> Tensor:
        """Draw from `prior`, or simulate from 0 for `burn_in` time units; shape (B, *D)."""
        if self.prior is not None:
            return self.prior(tuple(shape), generator=generator, device=device, dtype=dtype)
        x = torch.zeros(tuple(shape), device=device, dtype=dtype)
        return self.simulate(x, 0.0, self.burn_in, self.burn_in_steps, generator)

    def prior_logp(self, z: Tensor) -> Tensor:
        """Log density of the prior per sample (needs `prior_logp`); z: (B, *D) -> (B,)."""
        if self.prior_logp_fn is None:
            raise NotImplementedError(f"{type(self).__name__} was built without prior_logp")
        return self.prior_logp_fn(z)


def quartic_well(n: int, k: float, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
                 ) -> Tensor:
    """Exact draws (n,) from `p(y) ∝ exp(-k (y^2 - 1)^2)` by rejection.

    Since `(y^2 - 1)^2 = (|y| - 1)^2 (|y| + 1)^2 >= (|y| - 1)^2`,
    `p~(y) <= exp(-k (|y| - 1)^2) <= E(y) := exp(-k (y - 1)^2) + exp(-k (y + 1)^2)`, and `E` is
    `2 sqrt(pi / k)` times the proposal `(N(1, 1/2k) + N(-1, 1/2k)) / 2`; accept with `p~ / E`.
    """
    if not k > 0:
        raise ValueError(f"k must be > 0, got {k}")
    out = torch.empty(0, dtype=torch.float64, device=device)
    while out.numel() < n:
        m = 2 * (n - out.numel()) + 16
        u = rng.rand(m, generator, torch.float64, device)
        z = rng.randn(m, generator, torch.float64, device)
        y = torch.where(u < 0.5, -1.0, 1.0).to(torch.float64) + z / math.sqrt(2 * k)
        log_env = torch.logaddexp(-k * (y - 1) ** 2, -k * (y + 1) ** 2)
        accept = rng.rand(m, generator, torch.float64, device).log() \
            < -k * (y * y - 1) ** 2 - log_env
        out = torch.cat([out, y[accept]])
    return out[:n].to(dtype)


def _quartic_well_rows(streams: rng.SampleStreams, d: int, k: float) -> Tensor:
    """`quartic_well` row by row, (B, d): row i's candidates come from stream i only, and a row
    stops drawing once it holds d draws, so its draws never depend on the other rows."""
    b = len(streams)
    out = torch.zeros(b, d, dtype=torch.float64, device=streams.device)
    have = torch.zeros(b, dtype=torch.int64, device=streams.device)
    need = torch.arange(b, device=streams.device)
    m = 2 * d + 16
    while need.numel():
        u = streams.rand((need.numel(), m), torch.float64, rows=need)
        z = streams.randn((need.numel(), m), torch.float64, rows=need)
        a = streams.rand((need.numel(), m), torch.float64, rows=need)
        y = torch.where(u < 0.5, -1.0, 1.0).to(torch.float64) + z / math.sqrt(2 * k)
        log_env = torch.logaddexp(-k * (y - 1) ** 2, -k * (y + 1) ** 2)
        accept = a.log() < -k * (y * y - 1) ** 2 - log_env
        slot = have[need, None] + accept.long().cumsum(1) - 1  # where each accepted draw goes
        keep = accept & (slot < d)
        r, c = keep.nonzero(as_tuple=True)
        out[need[r], slot[r, c]] = y[r, c]
        have.index_add_(0, need, keep.long().sum(1))
        need = need[have[need] < d]
    return out


def quartic_well_log_norm(k: float) -> float:
    """log of `int exp(-k (y^2 - 1)^2) dy` (trapezoid rule: spectrally accurate here)."""
    half = math.sqrt(1 + math.sqrt(50 / k)) + 0.5  # k (y^2 - 1)^2 > 50 beyond: e^-50 tails
    y = torch.linspace(-half, half, 40_001, dtype=torch.float64)
    return math.log(float(torch.trapezoid(torch.exp(-k * (y * y - 1) ** 2), y)))



class DoubleWellSDE(NonlinearSDE):
    """Overdamped Langevin process in the quartic double well `U(y) = barrier (y^2 - 1)^2` per
    coordinate: `dy = -U'(y) dt + g dW`. Its stationary law `∝ exp(-2 U / g^2)` (wells at ±1) is
    the prior, sampled exactly, and its score is the networks' reference score. q_T equals the
    prior only once the process has mixed: the slowest rate is the barrier crossing (0.23 for
    barrier = g = 1), but data symmetric under y -> -y per coordinate never excite that mode and
    relax at the next rate (4.1 for barrier = g = 1).
    """

    def __init__(self, barrier: float = 1.0, diffusion: float = 1.0, T: float = 1.0,
                 eps: float = 1e-3):
        if not barrier > 0 or not diffusion > 0:
            raise ValueError(f"need barrier > 0 and diffusion > 0, got barrier={barrier}, "
                             f"diffusion={diffusion}")
        self.barrier = float(barrier)
        self._k = 2 * self.barrier / float(diffusion) ** 2
        self._log_norm = quartic_well_log_norm(self._k)
        super().__init__(self._double_well_drift, diffusion, T, eps, prior=self._stationary,
                         prior_logp=self._stationary_logp, elementwise=True,
                         reference_score=self.stationary_score)

    def _double_well_drift(self, x: Tensor, t: Tensor) -> Tensor:
        return -4 * self.barrier * x * (x * x - 1)

    def stationary_score(self, x: Tensor) -> Tensor:
        """grad log of the stationary law, `-2 U'(x) / g^2`; x: (B, *D)."""
        return -4 * self._k * x * (x * x - 1)

    def _stationary(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                    device: torch.device | str | None = None, dtype: torch.dtype | None = None
                    ) -> Tensor:
        if isinstance(generator, rng.SampleStreams):  # row i from stream i alone
            y = _quartic_well_rows(generator, math.prod(shape[1:]), self._k)
        else:
            y = quartic_well(math.prod(shape), self._k, generator, torch.float64, device)
        return y.reshape(shape).to(device=device, dtype=dtype or torch.get_default_dtype())

    def _stationary_logp(self, z: Tensor) -> Tensor:
        zf = z.flatten(1)
        return (-self._k * (zf * zf - 1) ** 2).sum(1) - zf.shape[1] * self._log_norm

    def __repr__(self) -> str:
        return (f"DoubleWellSDE(barrier={self.barrier}, diffusion={self.g}, T={self.T}, "
                f"eps={self.eps})")


NONLINEAR_SDES: dict[str, type[SDE]] = {"double_well": DoubleWellSDE}
