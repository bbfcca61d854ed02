"""What a model can predict about x0 from x_t = alpha_t x0 + sigma_t noise, converted in one place.

Scores, noise and data predictions of a linear process are the same information (Song et al.
2021; Karras et al. 2022, Table 1):

    eps_hat = -sigma_t s,    x0_hat = (x + sigma_t^2 s) / alpha_t     (Tweedie's formula),
    s = (alpha_t x0_hat - x) / sigma_t^2 = -eps_hat / sigma_t.

`sigma_t s` (the "scaled score", -eps_hat) is what sigma^2-weighted training regresses and what
networks output without dividing by a tiny sigma. Coefficients are (B,) tensors broadcast
against x: (B, *D), or Python floats.
"""

from __future__ import annotations

from torch import Tensor

from scorekit.processes.base import Process, Score, compute_dtype, per_sample

__all__ = ["x0_from_score", "x0_from_scaled_score", "x0_from_eps", "scaled_score_from_x0",
           "score_from_x0", "eps_from_score", "tweedie"]


def _b(coef: Tensor | float, x: Tensor) -> Tensor | float:
    # Coefficients may be computed in higher precision than x (half-precision samples).
    return per_sample(coef.to(x.dtype), x) if isinstance(coef, Tensor) else coef


def x0_from_score(x: Tensor, score: Tensor, alpha: Tensor | float,
                  sigma: Tensor | float) -> Tensor:
    """Tweedie: E[x0 | x_t = x] = (x + sigma^2 s) / alpha."""
    return (x + _b(sigma**2, x) * score) / _b(alpha, x)


def x0_from_scaled_score(x: Tensor, scaled: Tensor, alpha: Tensor | float,
                         sigma: Tensor | float) -> Tensor:
    """Tweedie from the scaled score sigma s (= -eps_hat): (x + sigma (sigma s)) / alpha."""
    return (x + _b(sigma, x) * scaled) / _b(alpha, x)


def scaled_score_from_x0(x: Tensor, x0: Tensor, alpha: Tensor | float,
                         sigma: Tensor | float) -> Tensor:
    """sigma s = (alpha x0 - x) / sigma from a data prediction."""
    return (_b(alpha, x) * x0 - x) / _b(sigma, x)


def score_from_x0(x: Tensor, x0: Tensor, alpha: Tensor | float,
                  sigma: Tensor | float) -> Tensor:
    """s = (alpha x0 - x) / sigma^2 from a data prediction."""
    return (_b(alpha, x) * x0 - x) / _b(sigma, x) ** 2


def x0_from_eps(x_tilde: Tensor, eps: Tensor, level: Tensor | float) -> Tensor:
    """Tweedie in EDM's rescaled variables x~ = x / alpha, s = sigma / alpha:
    x0 = x~ - s eps_hat (an Euler step of dx~/ds = eps_hat from s to 0)."""
    return x_tilde - _b(level, x_tilde) * eps


def eps_from_score(score: Tensor, sigma: Tensor | float) -> Tensor:
    """eps_hat = -sigma s."""
    return -_b(sigma, score) * score


def tweedie(score: Score, process: Process, x: Tensor, t: float) -> Tensor:
    """Posterior mean E[x0 | x_t] at one time t for every sample (one score evaluation);
    x: (B, *D)."""
    tt = x.new_full((x.shape[0],), t, dtype=compute_dtype(x.dtype))
    alpha, sigma = process.marginal(tt)
    return x0_from_score(x, score(x, tt), alpha, sigma)
