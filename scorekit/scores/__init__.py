"""Closed-form scores: exact ground truth for every test, and training-free models.

- `gaussian`: `GaussianScore` and `GMMScore`, the exact noised scores of Gaussian and Gaussian
  mixture data under any linear process (with exact marginal densities and samplers).
- `empirical`: `EmpiricalScore`, the (smoothed) score of a training set as chunked attention.

A score is any callable `score(x, t)`; x: (B, *D), t: (B,) (`scorekit.processes.Score`).
"""

from scorekit.processes.base import Score
from scorekit.scores.empirical import EmpiricalScore
from scorekit.scores.gaussian import GaussianScore, GMMScore, LowRankGaussian

__all__ = ["Score", "GaussianScore", "GMMScore", "LowRankGaussian", "EmpiricalScore"]
