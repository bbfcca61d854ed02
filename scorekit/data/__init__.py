"""Datasets: `make_dataset(name, ...)` returns train/test tensors and what is known about them.

- `synthetic`: mixtures, moons, swiss roll, checkerboard; `boltzmann`: densities with a known
  clean score; `images`: sklearn digits, scikit-image patches, a local image folder; `sudoku`:
  generated grids and puzzles.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch

from scorekit.data.boltzmann import CLEAN_SCORES, banana, double_well
from scorekit.data.dataset import Dataset
from scorekit.data.images import IMAGE_RANGE, digits, folder, patches
from scorekit.data.sudoku import sudoku_grids
from scorekit.data.synthetic import checkerboard, gmm, gmm_params, moons, swissroll

__all__ = ["Dataset", "make_dataset", "DATASETS", "CLEAN_SCORES", "gmm", "gmm_params", "moons",
           "swissroll", "checkerboard", "digits", "banana", "double_well", "patches", "folder",
           "sudoku_grids"]

DATASETS = {"gmm": gmm, "moons": moons, "swissroll": swissroll, "checkerboard": checkerboard,
            "digits": digits, "banana": banana, "double_well": double_well, "patches": patches,
            "folder": folder, "sudoku": sudoku_grids}
FIXED_SETS = ("digits", "folder")  # a fixed collection of images, split rather than drawn
# Evaluation's sliced Wasserstein floor, MMD and Frechet distance need >= 2 held-out rows (and
# as many training rows); a fixed set holds out at most a quarter, so it needs 4x that.
MIN_HELDOUT = 2
MIN_FIXED_IMAGES = 4 * MIN_HELDOUT


def make_dataset(name: str, n_train: int = 20000, n_test: int = 5000, seed: int = 0,
                 **params: Any) -> Dataset:
    """Build a dataset by name; synthetic ones draw n_train + n_test points with `seed`.

    "digits" (1797 images, in [low, high], default [-1, 1]) and "folder" (in [-1, 1]) are
    fixed sets: `n_test` (at most a quarter) are held out, the rest train (`n_train` caps the
    training set); they need >= 8 images and n_train, n_test >= 2 (evaluation's statistics).
    "patches" draws n_train + n_test crops in [-1, 1]. "sudoku" draws n_train + n_test
    complete grids (B, 9, 9); its options (`sudoku`'s keywords) configure training givens and
    evaluation puzzles.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {sorted(DATASETS)}")
    for key, val in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{key} must be an integer >= 1, got {val!r}")
    fn = DATASETS[name]
    valid = [p for p in inspect.signature(fn).parameters if p not in ("n", "generator", "dtype")]
    for key in params:
        if key not in valid:
            raise ValueError(f"unknown parameter {key!r} for dataset {name!r}; valid: {valid}")
    gen = torch.Generator().manual_seed(seed)
    if name == "sudoku":
        grids = sudoku_grids(n_train + n_test, generator=gen, **params)
        return Dataset(name, grids[:n_train], grids[n_train:], "sudoku", (81, 9), dict(params))
    if name in FIXED_SETS:
        for key, val in (("n_test", n_test), ("n_train", n_train)):
            if val < MIN_HELDOUT:
                raise ValueError(f"dataset {name!r} needs {key} >= {MIN_HELDOUT} (evaluation "
                                 f"compares >= {MIN_HELDOUT} held-out and training images), got "
                                 f"{key}={val}")
        images = fn(**params)
        _check_fixed_count(name, params, images.shape[0])
        perm = torch.randperm(images.shape[0], generator=gen)
        n_test = min(n_test, images.shape[0] // 4)
        test, train = images[perm[:n_test]], images[perm[n_test:]][:n_train]
        bounds = (float(params.get("low", IMAGE_RANGE[0])),
                  float(params.get("high", IMAGE_RANGE[1])))
        return Dataset(name, train, test, "image", tuple(images.shape[1:]), dict(params), bounds)
    x = fn(n_train + n_test, generator=gen, **params)
    if x.dim() == 4:  # drawn images (patches)
        return Dataset(name, x[:n_train], x[n_train:], "image", tuple(x.shape[1:]),
                       dict(params), IMAGE_RANGE)
    return Dataset(name, x[:n_train], x[n_train:], "points", tuple(x.shape[1:]), dict(params))


def _check_fixed_count(name: str, params: dict[str, Any], n: int) -> None:
    """A fixed set of n images must leave >= MIN_HELDOUT held out after the quarter split."""
    if n < MIN_FIXED_IMAGES:
        where = (f"folder dataset root {str(Path(params['root']).expanduser())!r}"
                 if name == "folder" else f"dataset {name!r}")
        raise ValueError(f"{where} holds {n} images; at least {MIN_FIXED_IMAGES} are needed: a "
                         f"quarter of them (at most n_test) is held out, and evaluation needs "
                         f">= {MIN_HELDOUT} held-out images")
