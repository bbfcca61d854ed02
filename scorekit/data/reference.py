"""What sampling and evaluation need from a run's data, stored in the run directory.

A trained run is sampled and evaluated from `<run_dir>/data_reference.safetensors`, written
when training starts: the data set's name, kind, sample shape, value range, parameters and the
training set's standard deviation (the networks' sigma_data), with the train and held-out rows
that the teleport fit and the metrics use (every row up to 2^24 elements per split: all of each
embedded data set; for large image sets the first rows, with the full counts recorded). So
`Trainer.from_run_dir` and `scripts/sample.py` never rebuild the data set: a run trained on a
local image folder samples after the folder is gone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from scorekit import io
from scorekit.data.dataset import Dataset

__all__ = ["REFERENCE", "MAX_ELEMENTS", "save_reference", "load_reference"]

REFERENCE = "data_reference.safetensors"
MAX_ELEMENTS = 2**24  # per split: 64 MiB of float32
FORMAT = "scorekit-data-reference-1"


def _rows(x: torch.Tensor, max_elements: int) -> torch.Tensor:
    per_row = max(1, x[0].numel()) if x.shape[0] else 1
    return x[: max(1, max_elements // per_row)]


def save_reference(data: Dataset, path: str | Path, seed: int,
                   max_elements: int = MAX_ELEMENTS) -> None:
    """Write `data`'s reference (atomically) to `path`."""
    meta = {"format": FORMAT, "name": data.name, "kind": data.kind,
            "sample_shape": list(data.sample_shape), "params": data.params,
            "value_range": None if data.value_range is None else list(data.value_range),
            "train_std": float(data.train_std), "seed": int(seed),
            "n_train": int(data.train.shape[0]), "n_test": int(data.test.shape[0])}
    io.save(path, {"train": _rows(data.train, max_elements),
                   "test": _rows(data.test, max_elements)}, meta)


def load_reference(path: str | Path) -> tuple[Dataset, dict[str, Any]]:
    """The `Dataset` a reference stands for (its stored rows) and the reference's metadata."""
    tensors, meta = io.load(path)
    if meta.get("format") != FORMAT:
        raise io.CheckpointError(f"{path} is not a scorekit data reference "
                                 f"(format {meta.get('format')!r})")
    value_range = meta["value_range"]
    data = Dataset(meta["name"], tensors["train"], tensors["test"], meta["kind"],
                   tuple(meta["sample_shape"]), dict(meta["params"]),
                   None if value_range is None else tuple(value_range),
                   train_std=meta["train_std"])
    return data, meta
