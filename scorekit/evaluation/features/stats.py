"""Streaming mean and covariance of features (float64), for Fréchet distances over many samples."""

from __future__ import annotations

import torch
from torch import Tensor

from scorekit.ranks import Ranks


class FeatureStats:
    """Running mean and scatter matrix of feature rows, merged batch by batch (Chan, Golub and
    LeVeque 1979), so memory is O(F^2) whatever the number of samples.

    `update(feats)` takes (B, F); `mean` (F,), `cov` (F, F) (unbiased, / (n - 1)), `n`.
    Everything is accumulated in float64 on the device of the first batch.
    """

    def __init__(self) -> None:
        self.n = 0
        self._mean: Tensor | None = None
        self._scatter: Tensor | None = None  # sum of (x - mean)(x - mean)^T

    @classmethod
    def from_features(cls, feats: Tensor, chunk: int = 4096) -> FeatureStats:
        """Statistics of feats (N, F), accumulated `chunk` rows at a time."""
        stats = cls()
        for i in range(0, feats.shape[0], chunk):
            stats.update(feats[i:i + chunk])
        return stats

    @classmethod
    def from_moments(cls, mean: Tensor, cov: Tensor, n: int) -> FeatureStats:
        """Statistics with a given mean (F,), unbiased covariance (F, F) and count n >= 2."""
        stats = cls()
        stats.n = int(n)
        stats._mean = mean.detach().double().clone()
        stats._scatter = cov.detach().double() * (n - 1)
        return stats

    def update(self, feats: Tensor) -> FeatureStats:
        """Add a batch of features (B, F); returns self."""
        if feats.dim() != 2 or feats.shape[0] == 0:
            raise ValueError(f"features must have shape (B >= 1, F), got {tuple(feats.shape)}")
        if self._mean is not None and feats.shape[1] != self._mean.shape[0]:
            raise ValueError(f"feature dim {feats.shape[1]} differs from the accumulated "
                             f"{self._mean.shape[0]}")
        x = feats.detach().double()
        if self._mean is not None and x.device != self._mean.device:
            raise ValueError(f"features on {x.device}, statistics on {self._mean.device}")
        nb = x.shape[0]
        mean_b = x.mean(0)
        centred = x - mean_b
        scatter_b = centred.T @ centred
        if self._mean is None:
            self.n, self._mean, self._scatter = nb, mean_b, scatter_b
            return self
        n = self.n + nb
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (nb / n)
        self._scatter = self._scatter + scatter_b + torch.outer(delta, delta) * (self.n * nb / n)
        self.n = n
        return self

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another set's statistics (Chan's pairwise formula); returns self."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self._mean, self._scatter = other.n, other._mean.clone(), other._scatter.clone()
            return self
        n = self.n + other.n
        delta = other._mean.to(self._mean.device) - self._mean
        self._mean = self._mean + delta * (other.n / n)
        self._scatter = (self._scatter + other._scatter.to(self._mean.device)
                         + torch.outer(delta, delta) * (self.n * other.n / n))
        self.n = n
        return self

    def gathered(self, ranks: Ranks) -> FeatureStats:
        """The statistics of every rank's features (float64), merged in rank order, so every
        rank gets the same result; self in one process."""
        if not ranks.enabled:
            return self
        mine = (self.n, None if self._mean is None else self._mean.cpu(),
                None if self._scatter is None else self._scatter.cpu())
        out = FeatureStats()
        for n, mean, scatter in ranks.gather(mine):
            if n:
                part = FeatureStats()
                part.n, part._mean, part._scatter = n, mean, scatter
                out.merge(part)
        return out

    @property
    def mean(self) -> Tensor:
        if self._mean is None:
            raise ValueError("no features accumulated yet")
        return self._mean

    @property
    def cov(self) -> Tensor:
        if self.n < 2:
            raise ValueError(f"a covariance needs >= 2 samples, have {self.n}")
        return self._scatter / (self.n - 1)
