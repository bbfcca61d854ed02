"""A run directory suffices to sample and evaluate: the data reference stored at training time
replaces the data source (a local image folder deleted after training)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from _config import compose_config as _cfg

import samplers
from scorekit.data.reference import REFERENCE, load_reference
from scorekit.train import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _images(root: Path, n: int = 24) -> None:
    from PIL import Image

    gen = torch.Generator().manual_seed(0)
    root.mkdir(parents=True)
    for i in range(n):
        arr = torch.randint(0, 256, (8, 8), generator=gen, dtype=torch.uint8)
        Image.fromarray(arr.numpy()).save(root / f"{i}.png")


def test_sampling_after_the_data_source_is_deleted(tmp_path):
    images, run = tmp_path / "images", tmp_path / "run"
    _images(images)
    cfg = _cfg(["data=folder", f"data.root={images}", "data.size=8", "data.grayscale=true",
                "data.n_test=6", "model.hidden=32", "model.depth=1", "trainer.steps=3",
                "trainer.batch_size=8", "trainer.progress=false", "eval.n_samples=16",
                "eval.plot=false", "sampler=heun", "sampler.steps=3", "sampler.teleport=true"])
    tr = Trainer(cfg, run_dir=run)
    tr.fit()
    before = tr.evaluate()
    data, meta = load_reference(run / REFERENCE)
    assert torch.equal(data.train, tr.data.train) and torch.equal(data.test, tr.data.test)
    assert meta["n_train"] == 18 and meta["n_test"] == 6 and data.sample_shape == (1, 8, 8)
    assert data.value_range == (-1.0, 1.0) and data.train_std == tr.data.train_std
    shutil.rmtree(images)
    again = Trainer.from_run_dir(run)
    after = again.evaluate(out_dir=tmp_path / "eval")
    for key in ("sliced_wasserstein", "mmd", "frechet_distance_raw", "nfe", "t_start"):
        assert after[key] == before[key], key
    res = again.sample(5)
    assert torch.equal(res.x, tr.sample(5).x)
    out = tmp_path / "shards"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "sample.py"), f"run_dir={run}",
                    "n=10", "batch=4", f"out={out}", f"hydra.run.dir={tmp_path / 'h'}"],
                   check=True, cwd=ROOT, capture_output=True)
    assert samplers.load_samples(out).shape == (10, 1, 8, 8)
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
