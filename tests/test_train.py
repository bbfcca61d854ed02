"""Trainer: bit-exact resume, config validation, checkpoint mismatch, learning a 2-D mixture."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _config import compose_config as _cfg
from omegaconf import OmegaConf

import samplers
from scorekit import io as ckpt
from scorekit.config import ConfigError
from scorekit.train import Trainer
from scorekit.training.checkpoint import load_module

ROOT = Path(__file__).resolve().parents[1]


SMALL = ["trainer.steps=40", "trainer.ckpt_every=20", "trainer.batch_size=64",
         "trainer.log_every=10", "trainer.progress=false", "model.hidden=32", "model.depth=2",
         "data.n_train=2000", "data.n_test=500", "eval.n_samples=200", "eval.plot=false",
         "sampler.steps=20"]


def _params(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_resume_is_bit_exact(tmp_path):
    """Stopped at step 20 and resumed from its checkpoint == uninterrupted 40 steps."""
    full = Trainer(_cfg(SMALL), run_dir=tmp_path / "full")
    full.fit()
    part = Trainer(_cfg(SMALL), run_dir=tmp_path / "part")
    part.fit(until=20)
    assert part.step == 20 and part.ckpt_path.exists()
    resumed = Trainer(_cfg(SMALL + ["trainer.resume=true"]), run_dir=tmp_path / "part")
    resumed.fit()
    assert resumed.step == 40
    for a, b in ((full.model, resumed.model), (full.ema, resumed.ema)):
        pa, pb = _params(a), _params(b)
        assert all(torch.equal(pa[k], pb[k]) for k in pa)
    assert full.loss_history == resumed.loss_history


def test_resume_differs_without_rng_state(tmp_path):
    """The bit-exact test has power: resuming with a fresh data RNG gives other parameters."""
    full = Trainer(_cfg(SMALL), run_dir=tmp_path / "full")
    full.fit()
    part = Trainer(_cfg(SMALL), run_dir=tmp_path / "part")
    part.fit(until=20)
    resumed = Trainer(_cfg(SMALL + ["trainer.resume=true"]), run_dir=tmp_path / "part")
    resumed._maybe_resume()
    resumed.data_gen.manual_seed(123)
    resumed.fit()
    assert not torch.equal(full.model.net.layers[0].weight, resumed.model.net.layers[0].weight)


def test_checkpoint_is_safetensors_with_state(tmp_path):
    tr = Trainer(_cfg(SMALL), run_dir=tmp_path)
    tr.fit(until=20)
    tensors, meta = ckpt.load(tr.ckpt_path)
    assert meta["step"] == 20 and "rng.data" in tensors and "optim.0.exp_avg" in tensors
    assert any(k.startswith("ema.") for k in tensors)
    assert not list(tr.ckpt_path.parent.glob("*.tmp"))  # atomic write left no temp file


def test_unknown_config_key_named():
    with pytest.raises(Exception, match="stepz"):
        _cfg(["trainer.stepz=3"])  # Hydra rejects unknown override keys
    cfg = _cfg(SMALL)
    cfg["trainer"]["stepz"] = 3
    with pytest.raises(ConfigError, match="'trainer.stepz'"):
        Trainer(cfg)
    cfg = _cfg(SMALL)
    cfg["data"]["radiuss"] = 3.0
    with pytest.raises(ValueError, match="'radiuss'"):
        Trainer(cfg)


@pytest.mark.parametrize("key,value,msg", [
    ("trainer.steps", 0, "trainer.steps must be an integer >= 1, got 0"),
    ("trainer.lr", -1.0, "trainer.lr must be > 0, got -1.0"),
    ("sampler.steps", 0, "sampler.steps must be an integer >= 1, got 0"),
    ("logger.mode", "cloud", "logger.mode must be"),
])
def test_bad_values_named(key, value, msg, tmp_path):
    cfg = OmegaConf.create(_cfg(SMALL))
    OmegaConf.update(cfg, key, value)
    with pytest.raises(ConfigError, match=msg):
        Trainer(cfg, run_dir=tmp_path)


def test_bad_type_named(tmp_path):
    cfg = _cfg(SMALL)
    cfg["trainer"]["batch_size"] = "many"
    with pytest.raises(ConfigError, match="trainer.batch_size"):
        Trainer(cfg, run_dir=tmp_path)


def test_mismatched_checkpoint(tmp_path):
    tr = Trainer(_cfg(SMALL), run_dir=tmp_path / "a")
    tr.fit(until=20)
    other = Trainer(_cfg(SMALL + ["model.hidden=48"]), run_dir=tmp_path / "b")
    with pytest.raises(ckpt.CheckpointError, match="model.hidden: checkpoint 32 vs config 48"):
        other.load_checkpoint(tr.ckpt_path)
    # Same config, different tensors: the shape check names the parameter.
    tensors, _ = ckpt.load(tr.ckpt_path)
    with pytest.raises(ckpt.CheckpointError, match=r"'model.net.layers.0.weight' has shape"):
        load_module(other.model, tensors, "model", "ckpt")
    with pytest.raises(ckpt.CheckpointError, match="not found"):
        other.load_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("group,option", [("sde", "ve"), ("sde", "subvp"), ("sde", "edm"),
                                          ("sampler", "pc"), ("data", "moons"),
                                          ("objective", "dsm"), ("logger", "offline")])
def test_every_config_option_builds(group, option, tmp_path):
    Trainer(_cfg(SMALL + [f"{group}={option}"]), run_dir=tmp_path)


def test_evaluate_writes_metrics_and_plot(tmp_path):
    cfg = _cfg(SMALL)
    cfg["eval"]["plot"] = True
    tr = Trainer(cfg, run_dir=tmp_path)
    tr.fit()
    metrics = tr.evaluate()
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["nfe"] == 21 == metrics["nfe"]  # 20 EM steps + Tweedie
    assert (tmp_path / "samples.png").stat().st_size > 1000


def test_sampler_teleport_from_config(tmp_path):
    """`sampler.teleport=true`: the Gaussian is fitted to the training data and cached, t_start
    is picked from the model's score, the run starts there (same NFE budget), and metrics.json
    records it; a numeric t_start is used as given; a non-boolean flag is named."""
    tr = Trainer(_cfg(SMALL + ["sampler=heun", "sampler.steps=6", "sampler.teleport=true"]),
                 run_dir=tmp_path)
    tr.fit()
    metrics = tr.evaluate()
    cache = tmp_path / "teleport.safetensors"
    assert cache.is_file() and metrics["teleport_mode"] == "ode" and metrics["nfe"] == 11
    assert tr.sde.eps < metrics["t_start"] <= tr.sde.T
    tp = samplers.GaussianTeleport.load(cache, tr.sde)
    assert torch.allclose(tp.mean, tr.data.train.double().mean(0), atol=1e-6)
    res = tr.sample(50, {"method": "em", "steps": 5, "teleport": True, "t_start": 0.3})
    assert res.info["t_start"] == 0.3 and res.info["teleport_mode"] == "marginal"
    with pytest.raises(ConfigError, match="sampler.teleport must be true or false"):
        tr.sample(5, {"method": "em", "steps": 5, "teleport": "maybe"})


@pytest.mark.slow
def test_learns_2d_mixture(tmp_path):
    """The default experiment (DSM + MLP on the 8-mode ring, 4000 steps, EM 500 steps) learns the
    mixture: mode weights, mode widths and sliced W2 all close to exact samples'.

    Thresholds, for n = 4000 samples of 8 equal modes (std 0.1, radius 2):
    - sliced W2 <= 2 x the noise floor (the same metric between two exact sample sets, ~0.09)
      and <= 1/5 of the prior's (~0.6): dropping one mode alone scores ~0.40.
    - mode-weight TV <= 0.05: exact samples give E[TV] = 0.5 sum_k sqrt(2 w(1-w) / (pi n))
      ~= 0.017; one dropped mode adds 0.125, a doubled one 0.11.
    - mean per-mode std ratio <= 1.25 (exact: 1 +- 0.01): 1.25 x blur is visible in the plot.
    - off-mode fraction (outside every mode's 99.9% ellipse) <= 0.02 (exact: 0.001).
    """
    tr = Trainer(_cfg(["trainer.progress=false", "eval.plot=false"]), run_dir=tmp_path)
    tr.fit()
    m = tr.evaluate()
    assert m["sliced_wasserstein"] <= 2 * m["sliced_wasserstein_floor"], m
    assert m["sliced_wasserstein"] <= m["sliced_wasserstein_prior"] / 5, m
    assert m["mode_weight_tv"] <= 0.05, m
    assert m["mode_std_ratio_mean"] <= 1.25, m
    assert m["off_mode_fraction"] <= 0.02, m


@pytest.mark.slow
def test_sigkill_and_resume_matches_uninterrupted(tmp_path):
    """A training process killed with SIGKILL resumes from its last checkpoint and ends with
    the same parameters as a run that was never interrupted."""
    args = ["trainer.steps=600", "trainer.ckpt_every=50", "trainer.progress=false",
            "model.hidden=32", "data.n_train=2000", "eval.n_samples=100", "eval.plot=false",
            "sampler.steps=5"]
    script = str(ROOT / "scripts" / "train.py")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    subprocess.run([sys.executable, script, *args, f"hydra.run.dir={ref_dir}"], check=True,
                   env=env, capture_output=True)
    proc = subprocess.Popen([sys.executable, script, *args, f"hydra.run.dir={run_dir}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = run_dir / "checkpoints" / "last.safetensors"
    deadline = time.time() + 120
    while not ck.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ckpt.load(ck)[1]["step"]
    subprocess.run([sys.executable, script, *args, f"hydra.run.dir={run_dir}",
                    "trainer.resume=true"], check=True, env=env, capture_output=True)
    ref, _ = ckpt.load(ref_dir / "checkpoints" / "last.safetensors")
    got, meta = ckpt.load(ck)
    assert meta["step"] == 600 and killed_at < 600
    assert all(torch.equal(ref[k], got[k]) for k in ref if k.startswith(("model.", "ema.")))
