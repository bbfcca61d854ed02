"""EDM preconditioning (Karras et al. 2022, Table 1) around any backbone `F(x_in, c_noise)`.

The coefficients c_skip, c_out, c_in, c_noise are computed once, in `param.ScoreModel`; this
module names that combination the way the EDM paper does.
"""

from __future__ import annotations

from torch import Tensor, nn

from scorekit.nets.param import ScoreModel
from scorekit.processes import SDE
from scorekit.processes.predictions import x0_from_scaled_score


class EDMPrecond(ScoreModel):
    """`D(x; sigma) = c_skip x + c_out F(c_in x; c_noise)` with `c_noise = ln(sigma) / 4`.

    `model(x, t)` returns the score `(D - x) / sigma^2` (for alpha = 1), and `denoise(x, t)`
    returns D itself; x: (B, *D), t: (B,). For processes with alpha_t != 1 the same formulas apply
    to `x / alpha` at noise level `sigma / alpha`.
    """

    def __init__(self, net: nn.Module, sde: SDE, sigma_data: float = 0.5):
        super().__init__(net, sde, parameterization="edm", sigma_data=sigma_data,
                         precondition=True)

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """E[x0 | x_t] (Tweedie) from the preconditioned network; x: (B, *D) -> (B, *D)."""
        alpha, sigma = (v.to(x.dtype) for v in self._scales(x, t))
        return x0_from_scaled_score(x, self.scaled_score(x, t), alpha, sigma)
