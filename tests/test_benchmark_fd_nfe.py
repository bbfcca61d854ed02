"""`scripts/benchmark.py suite=fd_nfe`: a tiny UNet trained a few steps, benchmarked end to end."""

import json
import sys
import time
from pathlib import Path

import pytest
from _config import compose_config

from scorekit.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import fd_nfe  # noqa: E402
from scripts import benchmark  # noqa: E402

TINY = ["experiment=digits_edm", "model.channels=[8,16]", "model.norm_groups=8",
        "model.attention_head_dim=8", "trainer.steps=3", "trainer.batch_size=16",
        "trainer.progress=false", "trainer.log_every=1", "eval.plot=false"]
METHODS = ["em", "heun", "ode", "em+tp"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = compose_config(TINY)
    run_dir = tmp_path_factory.mktemp("run")
    Trainer(cfg, run_dir=run_dir).fit()
    return run_dir


def _bench(run_dir, out, **kw):
    return fd_nfe.run(ckpt=str(run_dir), features="raw", n=16, seeds=1, methods=METHODS,
                      quick=True, out_dir=str(out), name="tiny", **kw)


def test_fd_nfe_end_to_end(tiny_run, tmp_path):
    payload = _bench(tiny_run, tmp_path)
    for ext in ("json", "md", "png"):
        assert (tmp_path / f"tiny.{ext}").stat().st_size > 0
    rows = {(r["method"], r["setting"]): r for r in payload["rows"]}
    # Counted NFE: EM steps + Tweedie = 10 and 35 (on Karras' grid for EDM); Heun 2*steps - 1.
    assert rows[("em", "steps=9, grid=edm")]["nfe"] == 10
    assert rows[("em", "steps=34, grid=edm")]["nfe"] == 35
    assert rows[("heun", "steps=5")]["nfe"] == 9 and rows[("heun", "steps=18")]["nfe"] == 35
    assert rows[("ode", "rtol=0.01, atol=0.01")]["nfe"] > 0
    assert payload["t_star"] is not None and ("em+tp", "steps=9, grid=edm") in rows
    floor = rows[("data: train vs held-out", "n=16")]
    assert floor["nfe"] == 0 and floor["fd_test"] > 0
    # 3 training steps cannot model digits: every sampler is far above the data's own level.
    assert all(r["fd_test"] > floor["fd_test"] for r in payload["rows"] if r["nfe"] > 0)
    m = payload["matched"]  # the run's own sampler (heun) at the held-out size, vs train
    assert m["n"] == 360 and len(m["fd_train"]) == 1 and m["nfe"] == 35
    assert m["ratio"] == pytest.approx(m["fd_train_mean"] / m["data_fd_train"]) and m["ratio"] > 1
    saved = json.loads((tmp_path / "tiny.json").read_text())
    assert saved["train_steps"] == 3 and saved["features"]["kind"] == "raw"
    assert "| em | steps=9, grid=edm | 10 |" in (tmp_path / "tiny.md").read_text()


def test_fd_nfe_resumes_from_cached_rows(tiny_run, tmp_path, monkeypatch):
    first = _bench(tiny_run, tmp_path)

    def no_sampling(*args, **kwargs):
        raise AssertionError("a cached row was sampled again")

    monkeypatch.setattr(Trainer, "sample", no_sampling)
    again = _bench(tiny_run, tmp_path)
    assert [r["fd_test"] for r in again["rows"]] == [r["fd_test"] for r in first["rows"]]


def test_peer_starts_from_our_prior_draws(tiny_run, monkeypatch):
    """k-diffusion's rows start from exactly the prior draws our samplers start from for the
    same repetition (a paired comparison), and repetitions differ."""
    import torch

    from benchmarks import _peers
    from scorekit.evaluation.features import FeatureExtractor

    tr = Trainer.from_run_dir(tiny_run)
    ours, peers = [], []
    draw = tr.sde.prior_sample

    def recording_prior(*args, **kwargs):
        x = draw(*args, **kwargs)
        ours.append(x.clone())
        return x

    def fake_kd(name, kind, nfe, score, sde, x_t, seed):
        peers.append(x_t.clone())
        return x_t, float(nfe)

    score = fd_nfe._Scorer(tr, FeatureExtractor("raw"))
    for rep in (0, 1):
        monkeypatch.setattr(tr.sde, "prior_sample", recording_prior)
        score({"method": "em", "steps": 2, "denoise": "none"}, 6, rep)
        monkeypatch.undo()
        monkeypatch.setattr(_peers, "run_kd", fake_kd)
        score({"peer": ("euler", "karras"), "nfe": 2}, 6, rep)
        monkeypatch.undo()
    assert len(ours) == len(peers) == 2
    for mine, theirs in zip(ours, peers, strict=True):
        assert torch.equal(mine, theirs)
    assert not torch.allclose(ours[0], ours[1])


def test_benchmark_script_checks_suite_options():
    assert benchmark.parse(["suite=fd_nfe", "ckpt=x", "n=8"]) == ("fd_nfe", {"ckpt": "x", "n": 8})
    with pytest.raises(ValueError, match="unknown option 'bogus'"):
        benchmark.main(["suite=fd_nfe", "bogus=1"])


def test_fd_nfe_rejects_unknown_method(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="unknown \\['nope'\\]"):
        fd_nfe.run(ckpt=str(tiny_run), methods=["nope"], out_dir=str(tmp_path))


@pytest.mark.slow
def test_fd_nfe_logs_table_and_plot_to_wandb_offline(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    fd_nfe.run(ckpt=str(tiny_run), features="raw", n=8, seeds=1, methods=["em"], quick=True,
               out_dir=str(tmp_path), name="wb", wandb="offline")
    runs = list((tiny_run / "fd_nfe" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline wandb run, found {runs}"
    # wandb's service process writes the record file; on a loaded machine its last block can
    # land just after finish() returns, so wait for it (bounded) before reading.
    deadline = time.monotonic() + 60
    while True:
        logged = b"".join(f.read_bytes() for f in runs[0].glob("*.wandb"))
        if (b"fd_vs_nfe" in logged and b"fd/em" in logged) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert b"fd_vs_nfe" in logged and b"fd/em" in logged


@pytest.mark.slow
def test_fd_nfe_under_torchrun_matches_one_process(tiny_run, tmp_path):
    """Two gloo ranks split every setting's samples by index and merge the feature
    statistics; rank 0 alone writes. The samples equal one process's up to the UNet's
    batch-size-dependent rounding (the ranks evaluate half batches), so FD agrees to 1e-3."""
    import os
    import shutil
    import subprocess

    two_run, one_run = tmp_path / "two_run", tmp_path / "one_run"
    shutil.copytree(tiny_run, two_run)
    shutil.copytree(tiny_run, one_run)
    for d in (two_run, one_run):
        shutil.rmtree(d / "fd_nfe", ignore_errors=True)
    args = ["features=raw", "n=16", "seeds=1", "methods=[em,heun]", "quick=true"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "scripts" / "benchmark.py"), "suite=fd_nfe", f"ckpt={two_run}", *args,
           f"out_dir={tmp_path / 'out2'}", "name=two"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("wrote ") == 1  # rank 0 alone reports and writes
    two = json.loads((tmp_path / "out2" / "two.json").read_text())
    one = fd_nfe.run(ckpt=str(one_run), features="raw", n=16, seeds=1, methods=["em", "heun"],
                     quick=True, out_dir=str(tmp_path / "out1"), name="one")
    key = lambda r: (r["method"], r["setting"], r["seed"])  # noqa: E731
    rows2, rows1 = {key(r): r for r in two["rows"]}, {key(r): r for r in one["rows"]}
    assert rows2.keys() == rows1.keys()
    for k, r in rows1.items():
        assert rows2[k]["nfe"] == r["nfe"], k
        assert rows2[k]["fd_test"] == pytest.approx(r["fd_test"], rel=1e-3), k
    cached = json.loads((two_run / "fd_nfe" / "rows.json").read_text())["rows"]
    assert len(cached) == len([r for r in two["rows"] if r["nfe"] > 0]) + 1  # + matched


@pytest.mark.slow
def test_tuned_grid_rows_in_quick_mode(tiny_run, tmp_path, monkeypatch):
    """"+opt": the grid tuned to the run (one budget in quick mode), cached in the run dir and
    sampled at exactly its NFE (tuned here on fewer draws and trial grids than quick's)."""
    monkeypatch.setattr(fd_nfe, "QUICK_OPT_N", 8)
    monkeypatch.setattr(fd_nfe, "QUICK_OPT_EVALS", 4)
    payload = fd_nfe.run(ckpt=str(tiny_run), features="raw", n=16, seeds=1,
                         methods=["dpm_solver+opt"], quick=True, out_dir=str(tmp_path),
                         name="tiny_opt")
    rows = [r for r in payload["rows"] if r["method"] == "dpm_solver+opt"]
    assert [(r["setting"], r["nfe"]) for r in rows] == [("nfe=5, grid=tuned", 5)]
    assert (tiny_run / "grids" / "dpm_solver_nfe5.json").is_file()
