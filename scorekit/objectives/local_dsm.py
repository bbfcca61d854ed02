"""Local denoising score matching for processes without Gaussian transitions (objectives.md §4).

For `dy = f(y, t) dt + g(t) dW` and any `s < t`, Markovianity gives the local denoising score
identity `grad log q_t(y_t) = E[grad_{y_t} log q(y_t | y_s) | y_t]`, so regressing a model onto
`grad log q(y_t | y_s)` over pairs (y_s ~ q_s, y_t ~ q(. | y_s)) is unbiased. Over a short step
`h = t - s = min(h_max, h_frac t)` the transition is replaced by the Gaussian of the drift
linearised at y_s (time frozen at s), `f(y) ≈ f(y_s) + J (y - y_s)`:
  mean `m = y_s + h phi1(h J) f(y_s)`, `phi1(z) = (e^z - 1) / z`,
  cov  `Sigma = int_0^h e^{J u} g^2 e^{J^T u} du`,
both from one Van Loan block exponential (diagonal closed forms for coordinate-wise drifts). The
linearisation drops `f'' Var / 2` from the mean's ODE, so the target is biased by about
`-h f''(y) / 4` (constant g); its variance ~ 1 / (g^2 h) grows as h -> 0.
Processes with Gaussian transitions (`sde.is_linear`) use the exact kernel N(a y_s, v I),
`a = alpha_t / alpha_s`, `v = sigma_t^2 - a^2 sigma_s^2`, and then local DSM is unbiased with
DSM's minimiser.
The weight `lambda` keeps the per-sample loss O(1) and depends on (s, t) only: `v` for the exact
kernel, `g(s)^2 h` otherwise. A weight that depends on y_s (such as tr(Sigma(y_s))) would move the
minimiser to `E[lambda tau | y_t] / E[lambda | y_t]`, which is not the score.
(Singhal, Goldstein, Ranganath 2024, "What's the score? Automated denoising score matching for
nonlinear diffusions"; the time-pair schedule and weighting here are this package's choice.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from scorekit._validate import check_positive_int
from scorekit.objectives.dsm import Score, batch_t, check_reduction, check_t_range, reduce
from scorekit.processes import SDE, Process, per_sample

__all__ = ["LocalDSM", "GaussianKernel", "KERNELS", "phi1", "drift_linearisation",
           "taylor_kernel", "euler_kernel", "exact_kernel"]

KERNELS = ("auto", "exact", "taylor", "euler")
# |J h| above this makes e^{2 J h} overflow-prone in the unstable directions of the drift.
_MAX_JH = 20.0


@dataclass(frozen=True)
class GaussianKernel:
    """Gaussian transition N(mean, cov): mean (B, d); cov (B, d) when diagonal, else (B, d, d)."""

    mean: Tensor
    cov: Tensor

    @property
    def diagonal(self) -> bool:
        return self.cov.dim() == 2

    def score(self, y: Tensor) -> Tensor:
        """grad_y log N(y; mean, cov) = -cov^{-1} (y - mean); y: (B, d) -> (B, d)."""
        if self.diagonal:
            return -(y - self.mean) / self.cov
        chol = torch.linalg.cholesky(self.cov)
        return -torch.cholesky_solve((y - self.mean)[..., None], chol)[..., 0]



def phi1(z: Tensor) -> Tensor:
    """(e^z - 1) / z, with its Taylor series where |z| < 1e-6 (no 0/0)."""
    small = z.abs() < 1e-6
    safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1 + z / 2 + z * z / 6, torch.expm1(safe) / safe)


def drift_linearisation(sde: SDE, y: Tensor, s: Tensor, shape: tuple[int, ...]
                        ) -> tuple[Tensor, Tensor]:
    """f(y_s) (B, d) and its Jacobian: (B, d) diagonal for linear or elementwise drifts, else
    (B, d, d); y: (B, d) flattened from per-sample `shape`. Autograd with one backward pass per
    output coordinate (the drift acts on each sample separately, so row sums are per-sample)."""
    if sde.is_linear:
        rate = Process(sde).drift_rate(s)[:, None].expand_as(y)
        return rate * y, rate
    with torch.enable_grad():
        v = y.detach().requires_grad_(True)
        f = Process(sde).drift(v.reshape(-1, *shape), s).reshape(y.shape)
        if sde.elementwise:
            (diag,) = torch.autograd.grad(f.sum(), v)
            return f.detach(), diag
        rows = [torch.autograd.grad(f[:, i].sum(), v, retain_graph=i + 1 < f.shape[1])[0]
                for i in range(f.shape[1])]
    return f.detach(), torch.stack(rows, 1)


def taylor_kernel(sde: SDE, y_s: Tensor, s: Tensor, h: Tensor, shape: tuple[int, ...]
                  ) -> GaussianKernel:
    """Gaussian of the drift linearised at y_s over [s, s + h] (module docstring); float64 in."""
    f, jac = drift_linearisation(sde, y_s, s, shape)
    g2 = Process(sde).diffusion(s) ** 2
    if jac.dim() == 2:
        z = jac * h[:, None]
        if bool((z > _MAX_JH).any()):
            raise ValueError(f"|J h| up to {float(z.max()):.3g} > {_MAX_JH}: lower h_max")
        mean = y_s + h[:, None] * phi1(z) * f
        return GaussianKernel(mean, (g2 * h)[:, None] * phi1(2 * z))
    b, d = f.shape
    eye = torch.eye(d, dtype=f.dtype, device=f.device)
    block = torch.zeros(b, 2 * d + 1, 2 * d + 1, dtype=f.dtype, device=f.device)
    block[:, :d, :d] = jac
    block[:, :d, d:2 * d] = g2[:, None, None] * eye
    block[:, d:2 * d, d:2 * d] = -jac.transpose(1, 2)
    block[:, :d, 2 * d] = f
    # Van Loan (1978): expm([[J, Q], [0, -J^T]] h) has F12 F11^T = int_0^h e^{Ju} Q e^{J^T u} du;
    # the extra column gives int_0^h e^{Ju} du f = h phi1(hJ) f.
    e = torch.linalg.matrix_exp(block * h[:, None, None])
    cov = e[:, :d, d:2 * d] @ e[:, :d, :d].transpose(1, 2)
    if not bool(torch.isfinite(cov).all()):
        raise ValueError("the linearised transition overflowed (|J h| too large): lower h_max")
    return GaussianKernel(y_s + e[:, :d, 2 * d], 0.5 * (cov + cov.transpose(1, 2)))


def euler_kernel(sde: SDE, y_s: Tensor, s: Tensor, h: Tensor, shape: tuple[int, ...]
                 ) -> GaussianKernel:
    """One Euler–Maruyama step as the transition: N(y_s + h f(y_s), g^2 h I)."""
    f = Process(sde).drift(y_s.reshape(-1, *shape), s).reshape(y_s.shape)
    var = Process(sde).diffusion(s) ** 2 * h
    return GaussianKernel(y_s + h[:, None] * f, var[:, None].expand_as(y_s))


def exact_kernel(sde: SDE, y_s: Tensor, s: Tensor, t: Tensor) -> GaussianKernel:
    """Exact transition of a linear process: N(a y_s, v I), a = alpha_t / alpha_s,
    v = sigma_t^2 - a^2 sigma_s^2."""
    alpha_s, sigma_s = Process(sde).marginal(s)
    alpha_t, sigma_t = Process(sde).marginal(t)
    a = alpha_t / alpha_s
    v = sigma_t**2 - a**2 * sigma_s**2
    return GaussianKernel(a[:, None] * y_s, v[:, None].expand_as(y_s))


class LocalDSM:
    """Local DSM loss; `loss_fn(model, x0)` returns a scalar (mean over batch).

    Per sample: t ~ U(t_min, T), s = t - h(t) with h(t) = min(h_max, h_frac t); y_s from the
    data (exact marginal for linear processes, else `forward_steps` Euler–Maruyama steps from x0);
    y_t from y_s (exact for linear processes, else `substeps` fine Euler–Maruyama steps); loss
    `lambda ||model(y_t, t) + Sigma^{-1} (y_t - m)||^2` with the kernel `kernel`: "auto" (exact
    for linear processes, "taylor" otherwise), "exact", "taylor" or "euler" (one EM step, for
    comparison: several times the bias of "taylor"). h_max defaults to 0.01 T.
    """

    def __init__(self, sde: SDE, h_max: float | None = None, h_frac: float = 0.5,
                 kernel: str = "auto", substeps: int = 10, forward_steps: int = 100,
                 t_min: float | None = None, reduction: str = "sum"):
        if sde.is_reflected:
            raise ValueError(f"LocalDSM's Gaussian short-step kernels ignore the reflection of "
                             f"{type(sde).__name__} at the box faces: use ReflectedDSM")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; valid: {list(KERNELS)}")
        if kernel == "exact" and not sde.is_linear:
            raise ValueError(f"kernel='exact' needs a linear process; {type(sde).__name__} has "
                             "a non-linear drift: use 'taylor'")
        h_max = 0.01 * sde.T if h_max is None else float(h_max)
        if not 0 < h_max < sde.T:
            raise ValueError(f"h_max must lie in (0, T={sde.T:g}), got {h_max}")
        if not 0 < h_frac <= 1:
            raise ValueError(f"h_frac must lie in (0, 1], got {h_frac}")
        check_positive_int(substeps, "substeps")
        check_positive_int(forward_steps, "forward_steps")
        check_reduction(reduction)
        self.t_min, _ = check_t_range(sde, t_min)
        self.sde, self.h_max, self.h_frac = sde, h_max, float(h_frac)
        self.kernel_name = ("exact" if sde.is_linear else "taylor") if kernel == "auto" else kernel
        self.substeps, self.forward_steps, self.reduction = substeps, forward_steps, reduction

    def step_size(self, t: Tensor) -> Tensor:
        """h(t) = min(h_max, h_frac t); (B,) -> (B,)."""
        return torch.clamp(self.h_frac * t, max=self.h_max)

    def sample_t(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                 ) -> Tensor:
        """t ~ U(t_min, T): (n,)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        return (self.t_min + u * (self.sde.T - self.t_min)).to(dtype)

    def sample_pair(self, x0: Tensor, t: Tensor | float,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(y_s, s, y_t) for data x0: (B, *D) at times t: (B,) (module docstring)."""
        t = batch_t(t, x0)
        s = t - self.step_size(t)
        sde = self.sde
        if not sde.is_linear:
            y_s = self._simulate(x0, torch.zeros_like(s), s, "forward_steps", generator)
            return y_s, s, self._simulate(y_s, s, t, "substeps", generator)
        alpha_s, sigma_s = Process(sde).marginal(s)
        eps_s, eps_t = (torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                                    device=x0.device) for _ in range(2))
        y_s = per_sample(alpha_s, x0) * x0 + per_sample(sigma_s, x0) * eps_s
        k = exact_kernel(sde, y_s.flatten(1), s, t)
        y_t = k.mean + k.cov.sqrt() * eps_t.flatten(1)
        return y_s, s, y_t.reshape(x0.shape)

    def _simulate(self, y: Tensor, t_from: Tensor, t_to: Tensor, steps_name: str,
                  generator: torch.Generator | None) -> Tensor:
        steps = getattr(self, steps_name)
        try:
            return self.sde.simulate(y, t_from, t_to, steps, generator)
        except FloatingPointError as err:
            raise FloatingPointError(f"{err}; raise LocalDSM {steps_name}={steps}") from err

    def kernel(self, y_s: Tensor, s: Tensor, t: Tensor) -> GaussianKernel:
        """The Gaussian transition used for targets, in float64 on flattened y_s: (B, d)."""
        shape = tuple(y_s.shape[1:])
        y, s64, t64 = y_s.flatten(1).double(), s.double(), t.double()
        if self.kernel_name == "exact":
            return exact_kernel(self.sde, y, s64, t64)
        build = taylor_kernel if self.kernel_name == "taylor" else euler_kernel
        return build(self.sde, y, s64, t64 - s64, shape)

    def weight(self, s: Tensor, t: Tensor) -> Tensor:
        """lambda(s, t): the exact kernel variance v, else g(s)^2 (t - s); (B,), float64."""
        s64, t64 = s.double(), t.double()
        if self.kernel_name == "exact":
            alpha_s, sigma_s = Process(self.sde).marginal(s64)
            alpha_t, sigma_t = Process(self.sde).marginal(t64)
            return sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2
        return Process(self.sde).diffusion(s64) ** 2 * (t64 - s64)

    def target(self, y_t: Tensor, y_s: Tensor, s: Tensor, t: Tensor | float
               ) -> tuple[Tensor, Tensor]:
        """Regression target grad log q^(y_t | y_s) (shaped like y_t) and weight lambda (B,)."""
        t = batch_t(t, y_t)
        tau = self.kernel(y_s, s, t).score(y_t.flatten(1).double()).reshape(y_t.shape)
        return tau.to(y_t.dtype), self.weight(s, t).to(y_t.dtype)

    def per_sample(self, model: Score, x0: Tensor, t: Tensor | float | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """Per-sample losses (B,); `t` (B,) or a float fixes the time."""
        if t is None:
            t = self.sample_t(x0.shape[0], generator, x0.device, x0.dtype)
        t = batch_t(t, x0)
        y_s, s, y_t = self.sample_pair(x0, t, generator)
        tau, lam = self.target(y_t, y_s, s, t)
        resid = per_sample(lam.sqrt(), y_t) * (model(y_t, t) - tau)
        return reduce(resid, self.reduction)

    def __call__(self, model: Score, x0: Tensor, t: Tensor | float | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Scalar loss: mean over the batch of `per_sample`."""
        return self.per_sample(model, x0, t, generator).mean()

