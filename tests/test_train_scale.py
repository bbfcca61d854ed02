"""Trainer at scale: DDP on 2 gloo processes, gradient accumulation, bf16 autocast, fp16 loss
scaling, EMA warm-up, SIGTERM checkpoint-and-stop, and validation of their config keys."""

import copy
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _config import compose_config as _cfg

from scorekit import io as ckpt
from scorekit.config import ConfigError
from scorekit.train import Trainer
from scorekit.training import distributed
from scorekit.training.signals import StopRequested
from scorekit.training.step import chunk_seed

ROOT = Path(__file__).resolve().parents[1]
TINY = ["trainer.steps=20", "trainer.batch_size=64", "trainer.log_every=1",
        "trainer.ckpt_every=10", "trainer.progress=false", "model.hidden=32", "model.depth=2",
        "data.n_train=2000", "data.n_test=500", "eval.n_samples=200", "eval.plot=false",
        "sampler.steps=10"]


def _build(overrides, run_dir):
    return Trainer(_cfg(overrides), run_dir=run_dir)


def _resumed(overrides, run_dir, build=_build):
    """The run in `run_dir`, stopped early, continued from its checkpoint to the end."""
    tr = build(overrides + ["trainer.resume=true"], run_dir)
    tr.fit()
    return tr


def _same_modules(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _assert_same_run(a, b):
    assert a.loss_history == b.loss_history
    assert _same_modules(a.model, b.model) and _same_modules(a.ema, b.ema)


def _ddp_child(rank, port, run_dir, out):
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tr = Trainer(_cfg(TINY), run_dir=run_dir)
    tr.fit()
    torch.save({"world": tr.dist.world_size, "loss": tr.loss_history,
                "ema": tr.ema.state_dict(), "model": tr.model.state_dict()}, out / f"{rank}.pt")
    distributed.shutdown()


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_ddp_on_two_gloo_processes_matches_one_process_accumulating(tmp_path, one_thread):
    """2 ranks x grad_accum=1 and 1 process x grad_accum=2, global batch 64, 20 steps: the same
    per-step losses and final weights.

    Both cut each global batch into the same K=2 chunks with the same noise; the single process
    sums grad(l_0 / 2) + grad(l_1 / 2), DDP averages grad(l_0) and grad(l_1) over ranks. That
    is the same sum in another order and scaling; with K = 2 the scalings are powers of two and
    exact, so the runs agree to the bit here, and in general to float32 rounding of one sum of
    K terms per step, compounded over 20 steps: rtol 1e-5.
    """
    # First: its imports (Adam's lazy torch._dynamo among them) are then shared by the forks.
    single = Trainer(_cfg(TINY + ["trainer.grad_accum=2"]), run_dir=tmp_path / "single")
    single.fit()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = multiprocessing.get_context("fork")  # children share the imports: no start-up cost
    procs = [ctx.Process(target=_ddp_child, args=(r, port, tmp_path / "ddp", tmp_path))
             for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    r0, r1 = (torch.load(tmp_path / f"{r}.pt") for r in range(2))
    assert r0["world"] == 2 and len(r0["loss"]) == 20
    assert r0["loss"] == r1["loss"] and all(torch.equal(r0["ema"][k], r1["ema"][k])
                                            for k in r0["ema"])  # replicas stay identical
    torch.testing.assert_close(torch.tensor(r0["loss"]), torch.tensor(single.loss_history),
                               rtol=1e-5, atol=0)
    for name, module in (("ema", single.ema), ("model", single.model)):
        for k, v in module.state_dict().items():
            torch.testing.assert_close(r0[name][k], v, rtol=1e-5, atol=1e-7)
    meta = ckpt.load(tmp_path / "ddp" / "checkpoints" / "last.safetensors")[1]
    assert meta["step"] == 20 and meta["loss_history"] == r0["loss"]  # written by rank 0


def test_grad_accum_gradient_is_the_global_batch_gradient_clipped(tmp_path, monkeypatch):
    """grad_accum=2: the gradient reaching the optimizer is that of the mean loss over the
    whole global batch (chunk k's noise seeded by chunk_seed(seed, 0, k)), clipped once as a
    whole (clipping per micro-batch would change its direction); the reported loss is that
    mean."""
    tr = Trainer(_cfg(TINY + ["trainer.grad_accum=2", "trainer.grad_clip=0.05"]),
                 run_dir=tmp_path)
    ref = copy.deepcopy(tr.model)
    data_gen = torch.Generator()
    data_gen.set_state(tr.data_gen.get_state())
    idx = torch.randint(tr.train_x.shape[0], (64,), generator=data_gen)
    per_sample = [tr.objective.per_sample(ref, tr.train_x[idx[32 * k:32 * (k + 1)]],
                                          generator=torch.Generator().manual_seed(
                                              chunk_seed(tr.cfg.seed, 0, k)))
                  for k in range(2)]
    ref_loss = torch.cat(per_sample).mean()
    ref_loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.05)
    assert norm > 0.1  # clipping is active
    seen = {}
    real_step = tr.optimizer.step

    def step(*args, **kwargs):
        seen["grads"] = [p.grad.clone() for p in tr.model.parameters()]
        return real_step(*args, **kwargs)

    monkeypatch.setattr(tr.optimizer, "step", step)
    loss = tr.train_step()
    torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-6, atol=0)
    for got, want in zip(seen["grads"], (p.grad for p in ref.parameters()), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_bf16_autocast_runs_the_network_in_bf16_and_resumes_exactly(tmp_path):
    """precision=bf16 on CPU: the network's layers compute in bfloat16, the first loss is
    within 2% of fp32's on the same batch and noise, and a resumed run is bit-exact."""
    bf16 = TINY + ["trainer.precision=bf16"]
    full = Trainer(_cfg(bf16), run_dir=tmp_path / "full")
    dtypes = set()
    full.model.net.layers[0].register_forward_hook(lambda m, i, o: dtypes.add(o.dtype))
    full.fit()
    assert dtypes == {torch.bfloat16}
    fp32 = Trainer(_cfg(TINY), run_dir=tmp_path / "fp32")
    fp32.fit(until=1)
    assert abs(full.loss_history[0] / fp32.loss_history[0] - 1) < 0.02
    _build(bf16, tmp_path / "part").fit(until=10)
    _assert_same_run(_resumed(bf16, tmp_path / "part"), full)


@pytest.mark.gpu
def test_fp16_loss_scaler_state_is_checkpointed_and_resumes_exactly(tmp_path):
    """precision=fp16 on CUDA: the GradScaler's scale is in the checkpoint and a resumed run
    ends bit-for-bit where an uninterrupted one does."""
    fp16 = TINY + ["trainer.precision=fp16", "device=cuda"]
    full = Trainer(_cfg(fp16), run_dir=tmp_path / "full")
    full.fit()
    meta = ckpt.load(full.ckpt_path)[1]
    assert meta["scaler"]["scale"] == full.scaler.get_scale() > 1
    _build(fp16, tmp_path / "part").fit(until=10)
    resumed = _resumed(fp16, tmp_path / "part")
    assert resumed.scaler.get_scale() == full.scaler.get_scale()
    _assert_same_run(resumed, full)


def test_loss_scaler_state_round_trips_through_the_checkpoint(tmp_path):
    """The fp16 plumbing on CPU (fp16 itself needs CUDA): with an enabled GradScaler whose scale
    grows every 3 steps, the checkpoint holds its state and a resumed run continues with the
    uninterrupted run's scale, growth counter and weights."""
    def build(overrides, run_dir):
        tr = _build(overrides, run_dir)
        tr.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
        if tr.step > 0:  # resumed in the constructor, into the disabled scaler: load again
            tr.load_checkpoint(tr.ckpt_path)
        return tr

    full = build(TINY, tmp_path / "full")
    full.fit()
    assert full.scaler.get_scale() == 2.0**16  # grown 6 times in 20 steps
    part = build(TINY, tmp_path / "part")
    part.fit(until=10)
    assert ckpt.load(part.ckpt_path)[1]["scaler"] == {
        "scale": 2.0**13, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 3,
        "_growth_tracker": 1}
    resumed = _resumed(TINY, tmp_path / "part", build)
    assert resumed.scaler.state_dict() == full.scaler.state_dict()
    _assert_same_run(resumed, full)


def test_ema_warmup_false_uses_the_constant_decay(tmp_path):
    """After one step the EMA is lerp(init, weights, 1 - decay) with decay = ema_decay when
    ema_warmup=false, and (1+1)/(10+1) under the warm-up."""
    for warmup, decay in ((False, 0.9), (True, 2 / 11)):
        tr = Trainer(_cfg(TINY + ["trainer.ema_decay=0.9", f"trainer.ema_warmup={warmup}"]),
                     run_dir=tmp_path / str(warmup))
        init = copy.deepcopy(tr.model)
        tr.train_step()
        for e, w0, w in zip(tr.ema.parameters(), init.parameters(), tr.model.parameters(),
                            strict=True):
            torch.testing.assert_close(e, torch.lerp(w0, w, 1 - decay))


def test_sigterm_checkpoints_the_step_stops_and_resumes_exactly(tmp_path, monkeypatch):
    """SIGTERM during step 7: the step finishes, a checkpoint at step 7 is written (ckpt_every
    is 10), fit raises StopRequested (exit code 143), the previous handler is back, and
    resuming ends with the uninterrupted run's weights, EMA and losses."""
    full = Trainer(_cfg(TINY), run_dir=tmp_path / "full")
    full.fit()
    before = signal.getsignal(signal.SIGTERM)
    tr = Trainer(_cfg(TINY), run_dir=tmp_path / "run")
    real_step = tr.train_step

    def step():
        loss = real_step()
        if tr.step == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return loss

    monkeypatch.setattr(tr, "train_step", step)
    with pytest.raises(StopRequested, match="SIGTERM received: stopped after step 7") as err:
        tr.fit()
    assert err.value.exit_code == 143 and signal.getsignal(signal.SIGTERM) is before
    assert ckpt.load(tr.ckpt_path)[1]["step"] == 7
    _assert_same_run(_resumed(TINY, tmp_path / "run"), full)


@pytest.mark.slow
def test_sigterm_ends_train_script_with_143_without_evaluating(tmp_path):
    """scripts/train.py sent SIGTERM after its first checkpoint: exit code 143, a message
    naming the step, a checkpoint at that step, no metrics.json."""
    run_dir = tmp_path / "run"
    args = ["trainer.steps=100000", "trainer.ckpt_every=20", "trainer.progress=false",
            "model.hidden=32", "data.n_train=2000", f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *args],
                            env={**os.environ, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run_dir / "checkpoints" / "last.safetensors"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    step = ckpt.load(last)[1]["step"]
    assert proc.returncode == 143, err
    assert f"SIGTERM received: stopped after step {step} " in err
    assert 20 <= step < 100000 and not (run_dir / "metrics.json").exists()


@pytest.mark.slow
def test_torchrun_two_processes_share_one_run_dir(tmp_path):
    """`torchrun --nproc_per_node=2 scripts/train.py` with Hydra's default ${now:}-named run
    dir: one run dir (rank 0's) holding the config, checkpoint and metrics."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "scripts" / "train.py"), *TINY, "trainer.log_every=5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (tmp_path / "outputs" / "default").iterdir()
    assert {"config.yaml", "metrics.json", "checkpoints"} <= {p.name for p in run_dir.iterdir()}
    assert ckpt.load(run_dir / "checkpoints" / "last.safetensors")[1]["step"] == 20


@pytest.mark.parametrize("overrides,msg", [
    (["trainer.grad_accum=0"], "trainer.grad_accum must be an integer >= 1, got 0"),
    (["trainer.grad_accum=3"], "trainer.batch_size must be divisible by trainer.grad_accum=3"),
    (["trainer.precision=fp8"], r"trainer.precision must be one of \['fp32', 'bf16', 'fp16'\]"),
    (["trainer.precision=bf16", "dtype=float64"],
     "trainer.precision must be fp32 with dtype=float64"),
    (["trainer.precision=fp16"], "trainer.precision=fp16 needs a CUDA device"),
    (["trainer.ema_warmup=maybe"], "'trainer.ema_warmup'"),
])
def test_new_trainer_keys_validated(overrides, msg, tmp_path):
    with pytest.raises(ConfigError, match=msg):
        Trainer(_cfg(TINY + overrides), run_dir=tmp_path)


def test_global_batch_must_split_over_processes(tmp_path):
    """batch_size 64 cannot be cut into 4 processes x 32 micro-batches: the error names both
    keys and the number of processes."""
    tr = Trainer(_cfg(TINY + ["trainer.grad_accum=32"]), run_dir=tmp_path)
    tr.dist = distributed.Dist(rank=0, world_size=4)
    with pytest.raises(ConfigError, match=r"trainer.batch_size=64 must be divisible by the "
                                          r"number of processes x trainer.grad_accum = 4 x 32"):
        tr._init_step()


def test_second_sigterm_exits_143_at_once():
    """A second SIGTERM while the first is being honoured stops at once with 143 (the SIGTERM
    convention), a second SIGINT with KeyboardInterrupt."""
    from scorekit.training.signals import SignalFlag

    with SignalFlag() as flag:
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.signum == signal.SIGTERM
        with pytest.raises(SystemExit) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
        assert stop.value.code == 143
    with SignalFlag() as flag, pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
