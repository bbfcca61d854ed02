"""A folder data set too small to hold out 2 images fails when the data set is built, naming the
folder, the image count and the minimum, instead of after training at evaluation."""

import re

import pytest
import torch
from _config import compose_config as _cfg

from scorekit.data import MIN_FIXED_IMAGES, make_dataset
from scorekit.train import Trainer


def _write_pngs(root, n):
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = torch.randint(0, 256, (6, 6), generator=gen, dtype=torch.uint8)
        Image.fromarray(arr.numpy()).save(root / f"{i}.png")
    return root


def _too_few(root, n):
    return re.escape(f"folder dataset root {str(root)!r} holds {n} images; at least "
                     f"{MIN_FIXED_IMAGES} are needed")


def test_minimum_is_eight():
    """At most a quarter is held out and evaluation needs 2 held-out images: 4 * 2."""
    assert MIN_FIXED_IMAGES == 8


def test_five_images_rejected_naming_folder_count_and_minimum(tmp_path):
    root = _write_pngs(tmp_path / "images", 5)
    with pytest.raises(ValueError, match=_too_few(root, 5)):
        make_dataset("folder", root=str(root), size=4)


def test_minimum_count_builds_with_two_held_out(tmp_path):
    root = _write_pngs(tmp_path / "images", MIN_FIXED_IMAGES)
    data = make_dataset("folder", root=str(root), size=4)
    assert data.test.shape == (2, 3, 4, 4) and data.train.shape == (6, 3, 4, 4)


def test_single_held_out_image_requested_rejected(tmp_path):
    root = _write_pngs(tmp_path / "images", MIN_FIXED_IMAGES)
    with pytest.raises(ValueError, match=r"needs n_test >= 2 .* got n_test=1"):
        make_dataset("folder", root=str(root), size=4, n_test=1)


def test_trainer_construction_fails_before_training(tmp_path):
    root = _write_pngs(tmp_path / "images", 5)
    cfg = _cfg(["data=folder", f"data.root={root}", "data.size=4", "model.hidden=8",
                "model.depth=1", "trainer.steps=3", "trainer.batch_size=8",
                "trainer.progress=false", "eval.plot=false"])
    with pytest.raises(ValueError, match=_too_few(root, 5)):
        Trainer(cfg, run_dir=tmp_path / "run")
