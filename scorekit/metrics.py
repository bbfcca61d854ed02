"""The metrics under their original import path (`scorekit.metrics.frechet_distance`).

The code lives in `scorekit.evaluation.metrics`; this module only re-exports it.
"""

from scorekit.evaluation.features import FeatureExtractor, FeatureStats
from scorekit.evaluation.metrics import (
    frechet_distance,
    gaussian_frechet,
    mmd,
    mode_metrics,
    sliced_wasserstein,
)

__all__ = ["sliced_wasserstein", "gaussian_frechet", "frechet_distance", "mmd", "mode_metrics",
           "FeatureExtractor", "FeatureStats"]
