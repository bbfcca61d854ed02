"""Sudoku training: a tiny model beats random filling, resume is bit-exact, and
`scripts/train.py experiment=sudoku` runs end to end."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _config import compose_config

from scorekit.train import trainer_class
from scorekit.training.sudoku import SudokuTrainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["experiment=sudoku", "trainer.batch_size=32", "trainer.progress=false",
        "trainer.warmup=10", "trainer.lr=3e-3", "model.width=32", "model.depth=2",
        "data.n_train=100", "data.n_test=32", "data.eval_clues=[50]", "eval.n_samples=32",
        "sampler.steps=20", "sampler.time_dilation=1", "sde.n_time=60", "sde.n_grid=256",
        "eval.plot=false"]


def _cfg(tmp_path, overrides):
    return compose_config([*TINY, f"+sde.cache_dir={tmp_path / 'cache'}", *overrides])


@pytest.mark.slow
def test_tiny_model_beats_random_filling(tmp_path):
    """150 steps of a 2-block width-32 model: accuracy on the blanks of 50-clue held-out
    puzzles exceeds random filling (1/9) by 5 binomial standard errors of the blank count."""
    trainer = SudokuTrainer(_cfg(tmp_path, ["trainer.steps=150"]), run_dir=tmp_path / "run")
    metrics = trainer.run()
    per = metrics["per_clues"][50]
    n_blank = per["n_puzzles"] * (81 - 50)
    chance = 1 / 9
    assert per["blank_cell_accuracy"] > chance + 5 * math.sqrt(chance * (1 - chance) / n_blank)
    assert (tmp_path / "run" / "metrics.json").is_file()
    # k candidates per puzzle: k times the NFE; the k = 1 rate is measured on all k B fills.
    puzzles = trainer.puzzles(60, 8)
    pred, info = trainer.solve(puzzles, {"method": "jacobi", "steps": 4}, candidates=3)
    assert pred.shape == (8, 9, 9) and info["nfe"] == 12 and info["candidates"] == 3
    assert 0 <= info["candidate_solved"] <= 1
    with pytest.raises(ValueError, match="candidates"):
        trainer.solve(puzzles, candidates=0)


@pytest.mark.slow
def test_resume_is_bit_exact(tmp_path):
    overrides = ["trainer.steps=4", "trainer.ckpt_every=2", "trainer.log_every=2",
                 "data.n_train=20"]
    full = SudokuTrainer(_cfg(tmp_path, overrides), run_dir=tmp_path / "full")
    full.fit()
    part = SudokuTrainer(_cfg(tmp_path, overrides), run_dir=tmp_path / "part")
    part.fit(until=2)
    resumed = SudokuTrainer(_cfg(tmp_path, [*overrides, "trainer.resume=true"]),
                            run_dir=tmp_path / "part")
    resumed.fit()
    assert resumed.step == 4 and full.loss_history == resumed.loss_history
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert trainer_class(resumed.cfg) is SudokuTrainer
    # Time budgets: a spent budget trains nothing; a tiny one stops after a step, checkpointed.
    resumed.fit(max_time_s=resumed.train_time)
    assert resumed.step == 4
    budget = SudokuTrainer(_cfg(tmp_path, overrides), run_dir=tmp_path / "budget")
    budget.fit(max_time_s=1e-9)
    assert budget.step == 1 and budget.ckpt_path.is_file()


@pytest.mark.slow
def test_train_script_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "scripts/train.py", *TINY, "trainer.steps=2", "eval.n_samples=4",
           "eval.plot=true", "sampler.steps=3", "data.n_train=8", "data.n_test=4",
           f"+sde.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 <= metrics["solved_fraction"] <= 1 and metrics["nfe"] == 3
    assert (run_dir / "samples.png").is_file()
    assert (run_dir / "checkpoints" / "last.safetensors").is_file()
