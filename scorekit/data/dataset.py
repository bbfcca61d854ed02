"""`Dataset`: a data set's train / held-out tensors and what is known about them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from scorekit.data.boltzmann import CLEAN_SCORES
from scorekit.data.synthetic import gmm_params


@dataclass(frozen=True)
class Dataset:
    """Train and held-out test samples, (N, *sample_shape); kind is "points", "image" or
    "sudoku" (digit grids (N, 9, 9), modelled as one-hot boards of shape (81, 9));
    value_range: the interval every element lies in (images), or None; train_std: the training
    set's standard deviation (kept when only some rows are: `scorekit.data.reference`)."""

    name: str
    train: Tensor
    test: Tensor
    kind: str
    sample_shape: tuple[int, ...]
    params: dict[str, Any] = field(default_factory=dict)
    value_range: tuple[float, float] | None = None
    train_std: float | None = None  # of the whole training set (filled in when not given)

    def __post_init__(self) -> None:
        if self.train_std is None:
            x = self.train if self.train.is_floating_point() else self.train.double()
            std = float(x.std()) if x.numel() > 1 else 1.0
            object.__setattr__(self, "train_std", std)

    @property
    def dim(self) -> int:
        return math.prod(self.sample_shape)

    @property
    def has_exact_score(self) -> bool:
        return self.name == "gmm"

    @property
    def has_clean_score(self) -> bool:
        """Whether grad log p0 is known pointwise (`score`), as target score matching needs."""
        return self.name in CLEAN_SCORES

    def score(self, x0: Tensor) -> Tensor:
        """Clean data score grad log p0(x0); x0: (B, *sample_shape), computed in its dtype."""
        if not self.has_clean_score:
            raise ValueError(f"dataset {self.name!r} has no known clean score; valid: "
                             f"{sorted(CLEAN_SCORES)}")
        return CLEAN_SCORES[self.name](x0, **self.params)

    def exact_score(self, sde):
        """The closed-form score of the data distribution under `sde` (mixtures only)."""
        if not self.has_exact_score:
            raise ValueError(f"dataset {self.name!r} has no closed-form score")
        from scorekit.scores import GMMScore

        return GMMScore(*gmm_params(**self.params), sde)
