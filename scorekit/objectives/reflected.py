"""Denoising score matching for the reflected process on a box (Lou & Ermon 2023, eq. 9).

`x_t = fold(x0 + sigma_t z)` is an exact draw of the reflected transition, and the target is its
exact score `grad log p(x_t | x0)` (images / cosine series in float64, `ReflectedSDE`). The
target is not `-z / sigma_t`: folding maps many z to one x_t, and the kernel score averages them.
As for DSM, E[target | x_t] is the marginal score, so the minimiser is the score of p_t.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scorekit.objectives.dsm import Score, batch_t, check_reduction, check_t_range, reduce
from scorekit.objectives.dsm import scaled_score as _scaled_score
from scorekit.processes import SDE, Process, per_sample

REFLECTED_WEIGHTINGS = ("sigma2", "likelihood")


class ReflectedDSM:
    """Reflected DSM loss; `loss_fn(model, x0)` returns a scalar (mean over batch).

    Per sample: t ~ U(t_min, T), loss `lambda(t) / sigma_t^2 * || sigma_t s(x_t, t) - sigma_t
    grad log p(x_t | x0) ||^2` summed (reduction "sum", no hidden 1/2; the official code halves
    it) or averaged over elements. weighting "sigma2": lambda = sigma_t^2; "likelihood": lambda =
    g(t)^2, for the VE schedule a constant 2 log(sigma_max / sigma_min) times "sigma2".
    `t_min` defaults to `sde.eps` (1e-5, as the official loss).
    """

    def __init__(self, sde: SDE, weighting: str = "sigma2", t_min: float | None = None,
                 reduction: str = "sum"):
        if not sde.is_reflected:
            raise ValueError(f"ReflectedDSM needs a scorekit.reflected.ReflectedSDE, got "
                             f"{type(sde).__name__} (use DSM)")
        if weighting not in REFLECTED_WEIGHTINGS:
            raise ValueError(f"unknown weighting {weighting!r}; valid: "
                             f"{list(REFLECTED_WEIGHTINGS)}")
        check_reduction(reduction)
        self.t_min, _ = check_t_range(sde, t_min)
        self.sde, self.weighting, self.reduction = sde, weighting, reduction

    def sample_t(self, n: int, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
                 ) -> Tensor:
        """t ~ U(t_min, T): (n,)."""
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
        return (self.t_min + u * (self.sde.T - self.t_min)).to(dtype)

    def weight(self, t: Tensor) -> Tensor:
        """Multiplier of the sigma^2-weighted residual; t: (B,) -> (B,)."""
        if self.weighting == "sigma2":
            return torch.ones_like(t)
        return Process(self.sde).diffusion(t) ** 2 / Process(self.sde).marginal(t)[1] ** 2

    def noised(self, x0: Tensor, t: Tensor | float | None = None,
               generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """(t, x_t, sigma_t grad log p(x_t | x0)) for a batch x0: (B, *D); t drawn unless given."""
        if t is None:
            t = self.sample_t(x0.shape[0], generator, x0.device, x0.dtype)
        t = batch_t(t, x0)
        xt = self.sde._noise(x0, t, generator)
        _, target = self.sde._transition(xt, x0, t)
        sigma = Process(self.sde).marginal(t.to(torch.float64))[1]
        return t, xt, (per_sample(sigma, target) * target).to(x0.dtype)

    def per_sample(self, model: Score, x0: Tensor, t: Tensor | float | None = None,
                   generator: torch.Generator | None = None) -> Tensor:
        """Per-sample losses (B,); `t` (B,) or a float fixes the time."""
        t, xt, target = self.noised(x0, t, generator)
        sigma = Process(self.sde).marginal(t)[1]
        resid = _scaled_score(model, xt, t, sigma) - target
        return self.weight(t) * reduce(resid, self.reduction)

    def __call__(self, model: Score, x0: Tensor, t: Tensor | float | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Scalar loss: mean over the batch of `per_sample`."""
        return self.per_sample(model, x0, t, generator).mean()
