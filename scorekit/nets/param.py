"""One place where a raw network's output becomes a score.

A backbone `F(x_in, c_noise)` sees preconditioned inputs (EDM, Karras et al. 2022, Table 1, in the
rescaled coordinates `x~ = x / alpha`, noise level `s = sigma / alpha`):
`x_in = c_in x~` with `c_in = 1 / sqrt(s^2 + sigma_data^2)` and `c_noise = log(s) / 4`.
Its output is read as a score, epsilon, x0, or EDM's skip-connected denoiser, and converted here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from scorekit.processes import SDE, Process, compute_dtype, per_sample
from scorekit.processes.predictions import scaled_score_from_x0

PARAMETERIZATIONS = ("score", "eps", "x0", "edm")


class ScoreModel(nn.Module):
    """Wrap a backbone `net(x_in, c_noise)` so that `model(x, t)` returns the score (B, *D).

    `scaled_score(x, t)` returns `sigma_t * score` computed without dividing by a tiny sigma,
    which is what the sigma^2-weighted DSM loss needs.
    """

    def __init__(self, net: nn.Module, sde: SDE, parameterization: str = "eps",
                 sigma_data: float = 1.0, precondition: bool = True):
        super().__init__()
        if parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"unknown parameterization {parameterization!r}; valid: "
                             f"{list(PARAMETERIZATIONS)}")
        if sigma_data <= 0:
            raise ValueError(f"sigma_data must be > 0, got {sigma_data}")
        self.net, self.sde = net, sde
        self.parameterization = parameterization
        self.sigma_data = float(sigma_data)
        self.precondition = precondition

    def _scales(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) computed in float32 at least (`compute_dtype`): half-precision t
        would collapse neighbouring noise levels."""
        return Process(self.sde).scales(t.to(compute_dtype(x.dtype)))

    def _raw(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Network output F plus per-sample (alpha, sigma, s = sigma/alpha), broadcast to x.
        The noise label c_noise stays in float32 for half-precision x (networks embed it)."""
        alpha, sigma = self._scales(x, t)
        level = sigma / alpha
        if self.precondition:
            c_in = torch.rsqrt(level**2 + self.sigma_data**2) / alpha
            c_noise = 0.25 * torch.log(level)
        else:
            c_in, c_noise = torch.ones_like(alpha), t.to(alpha.dtype)
        out = self.net(x * per_sample(c_in.to(x.dtype), x), c_noise)
        return out, *(per_sample(v.to(x.dtype), x) for v in (alpha, sigma, level))

    def scaled_score(self, x: Tensor, t: Tensor) -> Tensor:
        """sigma_t * grad log p_t(x) = -eps_hat; x: (B, *D), t: (B,) -> (B, *D).

        A process with a reference score (e.g. the stationary law of a non-linear process) has
        it added, so the network learns only the deviation from it.
        """
        scaled = self._scaled_net_score(x, t)
        ref = Process(self.sde).reference_score(x, t)
        if ref is None:
            return scaled
        return scaled + per_sample(self._scales(x, t)[1].to(x.dtype), x) * ref

    def _scaled_net_score(self, x: Tensor, t: Tensor) -> Tensor:
        out, alpha, sigma, level = self._raw(x, t)
        p = self.parameterization
        if p == "eps":
            return -out
        if p == "score":
            return sigma * out
        sd2 = self.sigma_data**2
        if p == "x0":
            x0 = out
        else:  # edm: D = c_skip x~ + c_out F, with c_skip, c_out of the rescaled noise level
            x0 = (sd2 / (level**2 + sd2)) * (x / alpha) + (level * self.sigma_data
                                                           * torch.rsqrt(level**2 + sd2)) * out
        return scaled_score_from_x0(x, x0, alpha, sigma)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """Score grad_x log p_t(x); x: (B, *D), t: (B,) -> (B, *D)."""
        sigma = self._scales(x, t)[1].to(x.dtype)
        return self.scaled_score(x, t) / per_sample(sigma, x)
