"""Sampling to disk in shards: exact resume after an interruption, refusal to mix runs, and a
1e6-sample soak run with memory bounded by the batch size, killed and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import samplers
from samplers.stream import shard_path
from scorekit.scores import GaussianScore
from scorekit.sde import VPSDE

ROOT = Path(__file__).resolve().parents[1]
SDE = VPSDE()


def _score(d=2):
    return GaussianScore(torch.zeros(d), torch.eye(d), SDE)


def _run(out, n=95, batch=10, seed=0, **kw):
    return samplers.sample_to_disk(_score(), SDE, out, n, (2,), batch_size=batch, seed=seed,
                                   method="em", steps=4, **kw)


def test_resume_recomputes_only_missing_or_damaged_shards(tmp_path):
    ref = _run(tmp_path / "ref")
    assert ref.shards == 10 and ref.written == list(range(10))
    x_ref = samplers.load_samples(tmp_path / "ref")
    assert x_ref.shape == (95, 2) and torch.unique(x_ref, dim=0).shape[0] == 95
    _run(tmp_path / "run")
    shard_path(tmp_path / "run", 3).unlink()  # never written
    data = shard_path(tmp_path / "run", 7).read_bytes()
    shard_path(tmp_path / "run", 7).write_bytes(data[: len(data) // 2])  # torn
    (tmp_path / "run" / ".shard-000005.safetensors.x1.tmp").write_bytes(b"partial")
    with pytest.warns(UserWarning, match="recomputing shard 7"):
        res = _run(tmp_path / "run")
    assert res.written == [3, 7] and len(res.skipped) == 8
    assert torch.equal(samplers.load_samples(tmp_path / "run"), x_ref)
    assert not list((tmp_path / "run").glob("*.tmp"))
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["complete"] is True


def test_other_parameters_refused(tmp_path):
    _run(tmp_path, n=20)
    with pytest.raises(ValueError, match="seed: on disk 0 vs now 1"):
        _run(tmp_path, n=20, seed=1)
    with pytest.raises(ValueError, match="batch_size: on disk 10 vs now 5"):
        _run(tmp_path, n=20, batch=5)


def test_load_samples_refuses_gaps(tmp_path):
    _run(tmp_path, n=30)
    shard_path(tmp_path, 1).unlink()
    with pytest.raises(ValueError, match="shard 1 of .*not found"):
        samplers.load_samples(tmp_path)


def test_bad_arguments_named(tmp_path):
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        _run(tmp_path, n=0)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got -2"):
        _run(tmp_path, batch=-2)


_WORKER = """
import json, resource, sys, torch
torch.set_num_threads(1)
import samplers
from scorekit.scores import GaussianScore
from scorekit.sde import VPSDE
out, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sde = VPSDE()
score = GaussianScore(torch.zeros(2), torch.eye(2), sde)
kw = dict(batch_size=batch, method="em", steps=5, dtype=torch.float64)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
samplers.sample_to_disk(score, sde, out + "_warmup", 2 * batch, 2, **kw)  # code paths warm
before = peak()
res = samplers.sample_to_disk(score, sde, out, n, 2, **kw)
print(json.dumps({"growth": peak() - before, "time": res.wall_time}))
"""

N_SOAK, BATCH = 1_000_000, 10_000


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss units, SIGKILL")
def test_soak_million_samples_bounded_memory_and_resume(tmp_path):
    """1e6 2-D samples in 100 shards of 1e4 (float64: 16 MB on disk, 160 kB per batch).

    Peak RSS may grow by at most 16 batches plus 4 MiB of allocator slack after a warm-up,
    under half the output: keeping the samples in memory would fail. A second run killed with
    SIGKILL part-way and rerun ends with exactly the uninterrupted run's 1e6 rows."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", _WORKER]
    ref = subprocess.run(cmd + [str(tmp_path / "ref"), str(N_SOAK), str(BATCH)], env=env,
                         check=True, capture_output=True, text=True)
    stats = json.loads(ref.stdout.strip().splitlines()[-1])
    batch_bytes = BATCH * 2 * 8
    bound = 16 * batch_bytes + 4 * 2**20
    assert bound < N_SOAK * 2 * 8 / 2
    assert stats["growth"] <= bound, stats

    run = tmp_path / "run"
    proc = subprocess.Popen(cmd + [str(run), str(N_SOAK), str(BATCH)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list(run.glob("shard-*"))) < 30 and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(run.glob("shard-*.safetensors")))
    assert 0 < done < 100  # interrupted part-way
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = samplers.sample_to_disk(_score(), SDE, run, N_SOAK, 2, batch_size=BATCH,
                                      method="em", steps=5, dtype=torch.float64)
    finally:
        torch.set_num_threads(n)
    assert len(res.skipped) >= done - 1 and len(res.written) + len(res.skipped) == 100
    x, x_ref = samplers.load_samples(run), samplers.load_samples(tmp_path / "ref")
    assert x.shape == (N_SOAK, 2) and torch.equal(x, x_ref)
    assert torch.unique(x, dim=0).shape[0] == N_SOAK  # no duplicated shard or row
