"""A small CNN digit classifier, trained on sklearn's digits, whose penultimate layer gives
Fréchet-distance features for 8x8 digit models (FID's role, offline and in seconds)."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Changing any of these changes the cache key, so a stale file is never reused.
SETTINGS = {"version": 1, "width": 16, "features": 64, "epochs": 20, "batch": 128, "lr": 4e-3,
            "weight_decay": 1e-4, "seed": 0, "n_test": 360}


class DigitsCNN(nn.Module):
    """(B, 1, 8, 8) in [-1, 1] -> logits (B, 10); `features` gives the penultimate (B, F)."""

    def __init__(self, width: int = 32, features: int = 128):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.Flatten(),
            nn.Linear(2 * width * 16, features), nn.ReLU())
        self.head = nn.Linear(features, 10)

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


def cache_key(settings: dict = SETTINGS) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def default_path(cache_dir: str | Path | None = None) -> Path:
    """Where the trained weights live: `<cache_dir>/digits-cnn-<key>.safetensors`
    (cache_dir defaults to $SCOREKIT_CACHE, else ~/.cache/scorekit)."""
    import os

    root = cache_dir or os.environ.get("SCOREKIT_CACHE") or Path.home() / ".cache" / "scorekit"
    return Path(root).expanduser() / f"digits-cnn-{cache_key()}.safetensors"


def _split(settings: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (torch.as_tensor(data.images, dtype=torch.float32) / 16 * 2 - 1).unsqueeze(1)
    y = torch.as_tensor(data.target, dtype=torch.long)
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(settings["seed"]))
    test, train = perm[:settings["n_test"]], perm[settings["n_test"]:]
    return x[train], y[train], x[test], y[test]


def accuracy(net: DigitsCNN, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((net(x).argmax(1) == y).double().mean())


def train(settings: dict = SETTINGS) -> tuple[DigitsCNN, float]:
    """Train on sklearn's digits minus a seeded held-out split; returns (net, held-out accuracy).
    Seeded and CPU-only (a few seconds), so the same settings give the same weights."""
    x, y, x_test, y_test = _split(settings)
    gen = torch.Generator().manual_seed(settings["seed"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["seed"])
        net = DigitsCNN(settings["width"], settings["features"])
    opt = torch.optim.AdamW(net.parameters(), lr=settings["lr"],
                            weight_decay=settings["weight_decay"])
    steps = settings["epochs"] * math.ceil(x.shape[0] / settings["batch"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, settings["lr"], total_steps=steps)
    net.train()
    for _ in range(settings["epochs"]):
        perm = torch.randperm(x.shape[0], generator=gen)
        for i in range(0, x.shape[0], settings["batch"]):
            idx = perm[i:i + settings["batch"]]
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    net.eval()
    return net, accuracy(net, x_test, y_test)


def load_or_train(path: str | Path | None = None) -> tuple[DigitsCNN, dict]:
    """The cached classifier at `path` (default `default_path()`), training and writing it
    atomically first if the file is absent. Returns (net in eval mode, metadata)."""
    from scorekit import io

    path = Path(path) if path is not None else default_path()
    try:
        tensors, meta = io.load(path) if path.exists() else (None, None)
    except io.CheckpointError as err:  # unreadable or of an earlier version: retrain it
        warnings.warn(f"{err}; retraining the classifier", stacklevel=2)
        tensors = None
    if tensors is not None:
        if meta.get("settings") != SETTINGS:
            raise ValueError(f"classifier weights {path} were trained with settings "
                             f"{meta.get('settings')}, expected {SETTINGS}; delete the file")
        net = DigitsCNN(SETTINGS["width"], SETTINGS["features"])
        net.load_state_dict(tensors)
        return net.eval().requires_grad_(False), meta
    net, acc = train()
    meta = {"settings": SETTINGS, "test_accuracy": acc}
    io.save(path, net.state_dict(), meta)
    return net.requires_grad_(False), meta
