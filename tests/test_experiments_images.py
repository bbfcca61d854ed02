"""Image experiment configs: each composes, validates, builds its UNet and takes a finite step."""

from pathlib import Path

import numpy as np
import pytest
import torch
from _config import compose_config as _cfg
from PIL import Image

from scorekit.nets import UNetScore
from scorekit.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _image_folder(root: Path, n: int = 12) -> Path:
    """A CIFAR-10-style export: class sub-directories of 32x32 RGB PNGs."""
    rng = np.random.default_rng(0)
    for i in range(n):
        d = root / f"class{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


@pytest.mark.parametrize("experiment, shape", [
    ("digits_vp", (1, 8, 8)), ("digits_edm", (1, 8, 8)), ("patches_edm", (1, 16, 16)),
    pytest.param("cifar10_edm", (3, 32, 32), marks=pytest.mark.slow)])
def test_image_experiment_builds_and_steps(experiment, shape, tmp_path):
    extra = ["trainer.batch_size=4", "trainer.progress=false", "device=cpu"]
    if experiment == "cifar10_edm":
        extra.append(f"data.root={_image_folder(tmp_path / 'images')}")
    if experiment == "patches_edm":
        extra += ["data.n_train=64", "data.n_test=16"]
    tr = Trainer(_cfg([f"experiment={experiment}", *extra]), run_dir=tmp_path / "run")
    assert isinstance(tr.model, UNetScore) and tuple(tr.data.sample_shape) == shape
    before = [p.detach().clone() for p in tr.model.parameters()]
    loss = tr.train_step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, tr.model.parameters(), strict=True))


def test_cifar10_edm_needs_a_local_root(tmp_path):
    with pytest.raises(Exception, match="data.root"):
        Trainer(_cfg(["experiment=cifar10_edm", "device=cpu"]), run_dir=tmp_path)
