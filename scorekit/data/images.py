"""Small image data that ships with its packages (no download)."""

from __future__ import annotations

import torch
from torch import Tensor

DIGITS_RANGE = (-1.0, 1.0)  # default pixel range of `digits`


def digits(low: float = DIGITS_RANGE[0], high: float = DIGITS_RANGE[1]) -> Tensor:
    """sklearn's 1797 8x8 handwritten digits as (1797, 1, 8, 8) float32 in [low, high]
    (x / 16 mapped affinely; the default [-1, 1] is x/16*2 - 1, [0, 1] suits a reflected box)."""
    from sklearn.datasets import load_digits

    if not low < high:
        raise ValueError(f"digits needs low < high, got low={low}, high={high}")
    images = torch.as_tensor(load_digits().images, dtype=torch.float32)
    return (low + images / 16.0 * (high - low)).unsqueeze(1)
