"""The target of a tempered sampler: p^beta, for evaluating FKC's anneal mode.

`sampler=fkc` (mode anneal) samples p^beta / Z, not p, so its samples are compared with draws
of p^beta. Where the data density is closed-form (a Gaussian mixture), `tempered_draws` gives
exact-in-distribution draws by sampling-importance-resampling exact draws of p with weights
p(x)^(beta - 1); `tempered_mixture` is the separated-mode limit of p^beta as a mixture (for
the per-mode metrics): component k becomes N(mu_k, Sigma_k / beta) with weight proportional to
w_k^beta |Sigma_k|^((1 - beta) / 2), since N(x; mu, Sigma)^beta integrates to
(2 pi)^(d (1 - beta) / 2) |Sigma|^((1 - beta) / 2) beta^(-d / 2).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from scorekit.scores import GMMScore

POOL = 64  # exact draws of p per returned draw of p^beta


def tempered_beta(section: dict[str, Any]) -> float | None:
    """beta of a sampler section that targets p^beta (fkc, anneal mode, beta != 1), else
    None."""
    if section.get("method") != "fkc" or section.get("mode", "anneal") != "anneal":
        return None
    beta = float(section.get("beta", 1.0))
    return None if beta == 1.0 else beta


def tempered_draws(gmm: GMMScore, beta: float, n: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """n draws (n, d) float64 of p^beta / Z by resampling POOL * n exact draws of p with
    weights p^(beta - 1) (bounded for beta > 1; for beta < 1 the tails need the large pool)."""
    pool = gmm.sample_data(POOL * n, generator)
    t0 = torch.zeros(pool.shape[0], dtype=torch.float64, device=pool.device)
    logw = (beta - 1.0) * gmm.marginal_logp(pool, t0)
    idx = torch.multinomial(torch.softmax(logw, 0), n, replacement=True, generator=generator)
    return pool[idx]


def tempered_mixture(gmm: GMMScore, beta: float) -> GMMScore:
    """The separated-mode limit of p^beta as a Gaussian mixture (module docstring)."""
    covs = gmm.covs.double()
    logw = beta * gmm.weights.double().log() + 0.5 * (1.0 - beta) * torch.logdet(covs)
    return GMMScore(torch.softmax(logw, 0), gmm.means.double(), covs / beta, gmm.sde)
