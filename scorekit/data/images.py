"""Small image data that ships with its packages (no download)."""

from __future__ import annotations

import torch
from torch import Tensor


def digits() -> Tensor:
    """sklearn's 1797 8x8 handwritten digits as (1797, 1, 8, 8) float32 in [-1, 1] (x/16*2 - 1)."""
    from sklearn.datasets import load_digits

    images = torch.as_tensor(load_digits().images, dtype=torch.float32)
    return (images / 16.0 * 2 - 1).unsqueeze(1)
