"""Sampling to disk under several processes (gloo on CPU), as torchrun runs it: the samples do
not depend on the world size, a failing rank stops every rank with its error named, and a
killed rank's missing shards are completed by a rerun of another world size."""

import os
import signal
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import samplers
from scorekit.scores.gaussian import GMMScore
from scorekit.sde import VPSDE

N, SHAPE = 45, (2,)
KW = {"method": "em", "steps": 5, "seed": 11}


def _score():
    sde = VPSDE()
    w = torch.tensor([0.4, 0.6])
    m = torch.tensor([[-1.5, 0.0], [1.5, 0.5]])
    return GMMScore(w, m, torch.stack([0.3 * torch.eye(2), 0.5 * torch.eye(2)]), sde), sde


class _Faulty:
    """The score, raising (mode "raise") or killing its process ("kill") at call `at`."""

    def __init__(self, score, mode, at):
        self.score, self.mode, self.at, self.calls = score, mode, at, 0

    def __call__(self, x, t):
        self.calls += 1
        if self.calls == self.at:
            if self.mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("the score failed on purpose")
        return self.score(x, t)


def _worker(rank, world, init, out, batch, fault, report):
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=30))
    score, sde = _score()
    if fault is not None and fault[0] == rank:
        score = _Faulty(score, fault[1], fault[2])
    try:
        samplers.sample_to_disk(score, sde, out, N, SHAPE, batch_size=batch, **KW)
        Path(report).write_text("ok")
    except Exception as err:  # noqa: BLE001 - the test reads what each rank saw
        Path(report).write_text(f"{type(err).__name__}: {err}")
    finally:
        dist.destroy_process_group()


def _launch(tmp, world, out, batch, fault=None, timeout=120):
    ctx = mp.get_context("spawn")
    init = tmp / f"pg-{time.monotonic_ns()}"
    reports = [tmp / f"report-{out.name}-{r}" for r in range(world)]
    procs = [ctx.Process(target=_worker, args=(r, world, str(init), str(out), batch, fault,
                                               str(reports[r]))) for r in range(world)]
    start = time.monotonic()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
            pytest.fail("a rank hung")
    texts = [r.read_text() if r.is_file() else None for r in reports]
    return texts, [p.exitcode for p in procs], time.monotonic() - start


def _one_process(out, batch):
    score, sde = _score()
    return samplers.sample_to_disk(score, sde, out, N, SHAPE, batch_size=batch, **KW)


def test_two_ranks_equal_one_rank_bit_for_bit(tmp_path):
    _one_process(tmp_path / "one", 10)
    texts, codes, _ = _launch(tmp_path, 2, tmp_path / "two", 7)
    assert texts == ["ok", "ok"] and codes == [0, 0]
    one, two = samplers.load_samples(tmp_path / "one"), samplers.load_samples(tmp_path / "two")
    assert one.shape == (N, 2) and torch.equal(one, two)
    # Shards by index: rank 0 wrote the even ones, rank 1 the odd ones (7 shards of 7 rows).
    direct = samplers.sample(*_score(), (N, 2), **KW).x
    assert torch.equal(direct, two)


def test_a_failing_rank_stops_every_rank_with_its_error(tmp_path):
    # Rank 1's second shard (its 6th score call: 5 EM steps + Tweedie per shard) fails.
    texts, codes, wall = _launch(tmp_path, 2, tmp_path / "out", 7, fault=(1, "raise", 8))
    assert codes == [0, 0] and wall < 60
    for text in texts:
        assert text.startswith("RankFailed") and "rank 1" in text
        assert "shard 3 (rows 21..27)" in text and "the score failed on purpose" in text


def test_killed_rank_then_one_process_completes_the_job(tmp_path):
    out = tmp_path / "out"
    texts, codes, wall = _launch(tmp_path, 2, out, 7, fault=(1, "kill", 8))
    assert codes[1] == -signal.SIGKILL and texts[1] is None
    assert texts[0] is not None and texts[0] != "ok" and wall < 60  # rank 0 did not hang
    on_disk = sorted(int(p.stem.split("-")[1]) for p in out.glob("shard-*.safetensors"))
    assert 1 in on_disk and 3 not in on_disk  # rank 1 died in its second shard
    assert not list(out.glob(".*tmp*"))
    res = _one_process(out, 7)
    assert sorted(res.written) == sorted(set(range(7)) - set(on_disk))
    ref = samplers.sample(*_score(), (N, 2), **KW).x
    assert torch.equal(samplers.load_samples(out), ref)


def _stats_worker(rank, world, init, feats, report):
    from scorekit.evaluation.features.stats import FeatureStats
    from scorekit.ranks import Ranks

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=30))
    try:
        lo, hi = Ranks.current().chunk(feats.shape[0])
        mine = FeatureStats.from_features(feats[lo:hi], chunk=50)
        got = mine.gathered(Ranks.current())
        torch.save({"n": got.n, "mean": got.mean, "cov": got.cov}, report)
    finally:
        dist.destroy_process_group()


def test_feature_statistics_merged_over_ranks_give_the_one_rank_fd(tmp_path):
    """FD from statistics accumulated per rank (float64) and merged equals the one-process FD
    to 1e-10 relative; the reference FD is computed here from numpy's covariance."""
    import numpy as np
    import scipy.linalg

    from scorekit.evaluation.features.stats import FeatureStats
    from scorekit.metrics import frechet_distance

    g = torch.Generator().manual_seed(0)
    mix = torch.randn(6, 6, generator=g, dtype=torch.float64)
    feats = torch.randn(301, 6, generator=g, dtype=torch.float64) @ mix
    feats = feats + 3.0
    other = torch.randn(400, 6, generator=g, dtype=torch.float64) * 1.3
    ctx = mp.get_context("spawn")
    init = tmp_path / "pg"
    procs = [ctx.Process(target=_stats_worker, args=(r, 2, str(init), feats,
                                                     str(tmp_path / f"s{r}.pt")))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    s0, s1 = (torch.load(tmp_path / f"s{r}.pt") for r in range(2))
    assert s0["n"] == s1["n"] == 301 and torch.equal(s0["cov"], s1["cov"])
    merged = FeatureStats.from_moments(s0["mean"], s0["cov"], s0["n"])
    one = FeatureStats.from_features(feats, chunk=64)
    fd_two, fd_one = frechet_distance(merged, other), frechet_distance(one, other)
    a, b = feats.numpy(), other.numpy()
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = scipy.linalg.sqrtm(ca @ cb).real
    ref = float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * root))
    assert fd_two == pytest.approx(fd_one, rel=1e-10)
    assert fd_one == pytest.approx(ref, rel=1e-8)  # sqrtm's own accuracy


def _torchrun(args, cwd, nproc=2, timeout=300):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    from _config import compose_config

    from scorekit.train import Trainer

    run = tmp_path_factory.mktemp("mlp_run")
    cfg = compose_config(["model.hidden=32", "model.depth=1", "trainer.steps=2",
                          "trainer.batch_size=16", "trainer.progress=false",
                          "data.n_train=200", "data.n_test=50", "eval.plot=false",
                          "sampler=em", "sampler.steps=6"])
    Trainer(cfg, run_dir=run).fit()
    return run


@pytest.mark.slow
def test_torchrun_sample_script_equals_one_process(mlp_run, tmp_path):
    """`torchrun --nproc_per_node=2 scripts/sample.py out=...` writes the same files as one
    process: each shard is the same batch, computed by whichever rank owns it."""
    root = Path(__file__).resolve().parents[1]
    script = str(root / "scripts" / "sample.py")
    args = [f"run_dir={mlp_run}", "n=50", "batch=8", "progress=false"]
    proc = _torchrun([script, *args, f"out={tmp_path / 'two'}"], tmp_path)
    lines = proc.stdout.splitlines()  # rank 0 alone announces the stream and reports on it
    assert sum(line.startswith("streaming 50 samples in 7 shards") for line in lines) == 1
    assert sum(line.startswith("50 samples in 7 shards") for line in lines) == 1
    _torchrun([script, *args, f"out={tmp_path / 'one'}"], tmp_path, nproc=1)
    two, one = samplers.load_samples(tmp_path / "two"), samplers.load_samples(tmp_path / "one")
    assert two.shape == (50, 2) and torch.equal(one, two)
    assert not (mlp_run / "samples").exists() or not any((mlp_run / "samples").iterdir())


def test_progress_bar_counts_shards_on_disk(tmp_path, capsys):
    score, sde = _score()
    samplers.sample_to_disk(score, sde, tmp_path / "a", 20, SHAPE, batch_size=7, seed=0,
                            method="em", steps=2)
    (tmp_path / "a" / "shard-000001.safetensors").unlink()
    capsys.readouterr()
    samplers.sample_to_disk(score, sde, tmp_path / "a", 20, SHAPE, batch_size=7, seed=0,
                            method="em", steps=2, progress=True)
    err = capsys.readouterr().err
    assert "shards" in err and "2/3" in err and "3/3" in err  # 2 found on disk, then 1 written


def test_one_process_error_keeps_its_type_and_names_the_shard(tmp_path):
    score, sde = _score()
    with pytest.raises(ValueError, match=r"shard 1 \(rows 7\.\.13\): the score failed"):
        samplers.sample_to_disk(_Faulty(score, "raise", 4), sde, tmp_path, 20, SHAPE,
                                batch_size=7, seed=0, method="em", steps=2)
    assert [p.name for p in sorted(tmp_path.glob("shard-*"))] == ["shard-000000.safetensors"]
