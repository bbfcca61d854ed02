"""Which code trained a model: the checkout state (commit, dirty flag, diff hash) read from a
real git repository, and the per-segment history a checkpoint carries through resumes."""

import hashlib
import importlib.metadata
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from _config import compose_config as _cfg

from scorekit import io as ckpt
from scorekit.provenance import code_state, describe_segments
from scorekit.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.steps=6", "trainer.ckpt_every=3", "trainer.log_every=3",
        "trainer.batch_size=32", "trainer.progress=false", "model.hidden=16", "model.depth=1",
        "data.n_train=400", "data.n_test=100", "eval.n_samples=50", "eval.plot=false",
        "sampler.steps=5"]

needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _git(repo, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@needs_git
def test_code_state_of_a_real_checkout(tmp_path):
    """Clean after a commit; dirty (with the hash of `git diff HEAD`) after editing a tracked
    file; untracked files and edited result tables leave it clean; no checkout: nothing."""
    repo = tmp_path / "repo"
    (repo / "benchmarks" / "results").mkdir(parents=True)
    (repo / "code.py").write_text("x = 1\n")
    (repo / "benchmarks" / "results" / "t.md").write_text("| a |\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "first")
    head = _git(repo, "rev-parse", "--short", "HEAD")
    assert code_state(repo) == {"commit": head, "dirty": False}

    (repo / "benchmarks" / "results" / "t.md").write_text("| b |\n")
    (repo / "notes.txt").write_text("untracked\n")
    assert code_state(repo) == {"commit": head, "dirty": False}

    (repo / "code.py").write_text("x = 2\n")
    diff = _git(repo, "diff", "HEAD", "--", "code.py")
    assert code_state(repo) == {"commit": head, "dirty": True,
                                "diff_sha256": hashlib.sha256(diff.encode()).hexdigest()}
    assert code_state(tmp_path / "elsewhere") == {}


def test_describe_segments_names_every_commit_when_they_differ():
    clean = {"scorekit": "0.1.0", "torch": "2.13.0", "commit": "aaaaaaa", "dirty": False}
    dirty = {"scorekit": "0.1.0", "torch": "2.13.0", "commit": "bbbbbbb", "dirty": True,
             "diff_sha256": "c" * 64}
    one = [{"from_step": 0, "to_step": 3, "source": clean},
           {"from_step": 3, "to_step": 6, "source": clean}]
    assert describe_segments(one) == "trained at commit aaaaaaa (clean) in 2 segment(s)"
    two = [one[0], {"from_step": 3, "to_step": 6, "source": dirty}]
    assert describe_segments(two) == ("trained across: steps 0-3 at commit aaaaaaa (clean); "
                                      "steps 3-6 at commit bbbbbbb (dirty, diff cccccccccccc)")
    old = [{"from_step": 0, "to_step": 6, "source": None}]
    assert describe_segments(old) == "trained across: steps 0-6 at unrecorded code"
    wheel = [{"from_step": 0, "to_step": 6, "source": {"scorekit": "0.1.0", "torch": "2"}}]
    assert "scorekit 0.1.0 (not a git checkout)" in describe_segments(wheel)
    assert describe_segments([]) == "training provenance not recorded"


def test_checkpoints_carry_one_segment_per_training_process(tmp_path):
    """A run trained to step 3, then resumed by a second Trainer to step 6, records two
    segments [0, 3] and [3, 6], each with the versions that ran; the checkpoint at step 3 holds
    only the first, and a Trainer that only loads the run reports the same history."""
    run = tmp_path / "run"
    first = Trainer(_cfg(TINY), run_dir=run)
    first.fit(until=3)
    meta3 = ckpt.load(first.ckpt_path)[1]
    assert [(s["from_step"], s["to_step"]) for s in meta3["segments"]] == [(0, 3)]
    del first
    second = Trainer(_cfg(TINY + ["trainer.resume=true"]), run_dir=run)
    assert second.step == 3
    second.fit()
    meta = ckpt.load(second.ckpt_path)[1]
    assert [(s["from_step"], s["to_step"]) for s in meta["segments"]] == [(0, 3), (3, 6)]
    for seg in meta["segments"]:
        assert seg["source"]["scorekit"] == importlib.metadata.version("scorekit")
        assert seg["source"]["torch"] == torch.__version__
    if shutil.which("git") and (ROOT / ".git").exists():
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                              capture_output=True, text=True).stdout.strip()
        assert {seg["source"]["commit"] for seg in meta["segments"]} == {head}
    second.fit()  # nothing left to train: no empty segment
    assert Trainer.from_run_dir(run).training_segments() == meta["segments"]


def test_checkpoint_without_segments_reports_its_steps_as_unrecorded(tmp_path):
    run = tmp_path / "run"
    tr = Trainer(_cfg(TINY), run_dir=run)
    tr.fit()
    tensors, meta = ckpt.load(tr.ckpt_path)
    del meta["segments"]
    ckpt.save(tr.ckpt_path, tensors, meta)
    loaded = Trainer.from_run_dir(run)
    assert loaded.training_segments() == [{"from_step": 0, "to_step": 6, "source": None}]
    assert "steps 0-6 at unrecorded code" in describe_segments(loaded.training_segments())
