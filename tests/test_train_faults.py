"""Trainer under faults: SIGKILL at random points, corrupted and missing checkpoints, a full disk,
non-finite losses, and pickle checkpoints. After each, the newest good checkpoint loads and a
resumed run ends bit-for-bit where an uninterrupted one does."""

import errno
import multiprocessing
import os
import random
import signal
import time
import warnings

import pytest
import torch
from _config import compose_config as _cfg

from scorekit import io as ckpt
from scorekit.config import ConfigError
from scorekit.train import Trainer

TINY = ["trainer.steps=100", "trainer.ckpt_every=2", "trainer.log_every=5",
        "trainer.batch_size=64", "trainer.progress=false", "model.hidden=32", "model.depth=2",
        "data.n_train=2000", "data.n_test=500", "eval.n_samples=200", "eval.plot=false",
        "sampler.steps=10"]
SHORT = [o for o in TINY if not o.startswith("trainer.steps")] + ["trainer.steps=12"]


def _state(path):
    """Everything a checkpoint holds except wall-clock time and how the run was launched
    (`run_config` records trainer.resume, `segments` where each process took over)."""
    tensors, meta = ckpt.load(path)
    meta.pop("train_time")
    meta.pop("run_config")
    meta.pop("segments")
    return tensors, meta


def _assert_same_state(a, b):
    (ta, ma), (tb, mb) = a, b
    assert ma == mb
    assert set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def _reference(tmp_path, overrides):
    tr = Trainer(_cfg(overrides), run_dir=tmp_path / "ref")
    tr.fit()
    return _state(tr.ckpt_path)


@pytest.fixture(scope="module")
def short_ref(tmp_path_factory):
    """Final state of an uninterrupted SHORT run (shared by the tests below)."""
    return _reference(tmp_path_factory.mktemp("short"), SHORT)


def _resume(run_dir, overrides):
    tr = Trainer(_cfg(overrides + ["trainer.resume=true"]), run_dir=run_dir)
    tr.fit()
    return tr


def _train_child(overrides, run_dir):
    torch.set_num_threads(1)
    Trainer(_cfg(overrides), run_dir=run_dir).fit()


@pytest.mark.slow
@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork")
def test_sigkill_at_random_points_always_resumable(tmp_path, one_thread):
    """5 training processes killed with SIGKILL after seeded random delays (a checkpoint every
    2 steps, so kills land inside checkpoint writes too): the newest checkpoint always loads,
    and resuming ends with exactly the uninterrupted run's model, EMA, optimizer, RNG state,
    step and loss history."""
    ref = _reference(tmp_path, TINY)
    rng = random.Random(14)
    ctx = multiprocessing.get_context("fork")  # children share the imports: no start-up cost
    killed_at = []
    for trial in range(5):
        run_dir = tmp_path / f"run{trial}"
        last = run_dir / "checkpoints" / "last.safetensors"
        prev = last.with_name("prev.safetensors")
        proc = ctx.Process(target=_train_child, args=(TINY, run_dir))
        proc.start()
        deadline = time.monotonic() + 60
        while not last.exists() and proc.is_alive() and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # `last` may be mid-rotation: `prev` is then used
            _, meta, _ = ckpt.load_latest(last, prev)
        killed_at.append(meta["step"])
        _resume(run_dir, TINY)
        _assert_same_state(_state(last), ref)
    assert any(s < 100 for s in killed_at), killed_at  # at least one kill hit a live run


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_last_checkpoint_falls_back_to_previous(tmp_path, damage, short_ref):
    """last.safetensors truncated, bit-flipped or gone: resume warns, continues from
    prev.safetensors, moves the bad file aside and ends as the uninterrupted run."""
    part = Trainer(_cfg(SHORT), run_dir=tmp_path / "run")
    part.fit(until=8)
    last = part.ckpt_path
    data = bytearray(last.read_bytes())
    if damage == "truncate":
        last.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "flip":
        data[-50] ^= 0x01
        last.write_bytes(bytes(data))
    else:
        last.unlink()
    with pytest.warns(UserWarning, match="using the previous checkpoint .*prev.safetensors"):
        tr = Trainer(_cfg(SHORT + ["trainer.resume=true"]), run_dir=tmp_path / "run")
    assert tr.step == 6
    assert (last.with_name(last.name + ".corrupt").exists()) == (damage != "delete")
    tr.fit()
    _assert_same_state(_state(last), short_ref)


@pytest.mark.parametrize("fail_on", [1, 2, 3], ids=["rotate", "rename", "next-save"])
def test_disk_full_during_training_keeps_a_good_checkpoint(tmp_path, monkeypatch, fail_on,
                                                          short_ref):
    """os.replace raising ENOSPC at a checkpoint (moving last -> prev, renaming the new file in,
    or at the next save): training stops with the OSError, every checkpoint file on disk loads,
    and resuming ends as the uninterrupted run."""
    tr = Trainer(_cfg(SHORT), run_dir=tmp_path / "run")
    tr.fit(until=4)
    real, calls = os.replace, {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    with pytest.raises(OSError, match="No space left"):
        tr.fit()
    monkeypatch.undo()
    files = list(tr.ckpt_path.parent.iterdir())
    assert not [p for p in files if p.suffix == ".tmp"]
    for p in files:
        ckpt.load(p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _resume(tmp_path / "run", SHORT)
    _assert_same_state(_state(tr.ckpt_path), short_ref)


class _NaNAt:
    """Objective wrapper whose loss is NaN at the given (1-based) calls."""

    def __init__(self, inner, calls):
        self.inner, self.calls, self.n = inner, set(calls), 0

    def __call__(self, model, x0, generator=None):
        self.n += 1
        loss = self.inner(model, x0, generator=generator)
        return loss * float("nan") if self.n in self.calls else loss


def test_nonfinite_loss_names_step_and_is_never_checkpointed(tmp_path):
    tr = Trainer(_cfg(TINY), run_dir=tmp_path)
    tr.objective = _NaNAt(tr.objective, {7})
    with pytest.raises(FloatingPointError, match="training loss is nan at step 7;"):
        tr.fit()
    tensors, meta = ckpt.load(tr.ckpt_path)
    assert meta["step"] == 6 and all(torch.isfinite(v).all() for v in tensors.values())


def test_skip_nonfinite_skips_logs_and_stops_past_the_limit(tmp_path, capsys):
    small = [o for o in TINY if not o.startswith("trainer.steps")] + ["trainer.steps=20"]
    tr = Trainer(_cfg(small + ["trainer.skip_nonfinite=2"]), run_dir=tmp_path / "a")
    tr.objective = _NaNAt(tr.objective, {3, 9})
    tr.fit()
    assert tr.step == 20 and tr.skipped == [3, 8]
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert "step 8: training loss is nan; batch skipped (2 of trainer.skip_nonfinite=2)" \
        in capsys.readouterr().out
    assert ckpt.load(tr.ckpt_path)[1]["skipped"] == [3, 8]  # survives a resume
    tr = Trainer(_cfg(small + ["trainer.skip_nonfinite=2"]), run_dir=tmp_path / "b")
    tr.objective = _NaNAt(tr.objective, {3, 9, 10})
    with pytest.raises(FloatingPointError, match=r"3 non-finite batches \(at steps \[3, 8, 8\]\), "
                                                 r"more than trainer.skip_nonfinite=2"):
        tr.fit()
    with pytest.raises(ConfigError, match="trainer.skip_nonfinite must be an integer >= 0"):
        Trainer(_cfg(small + ["trainer.skip_nonfinite=-1"]), run_dir=tmp_path / "c")


def test_pickle_state_dict_loads_only_on_request(tmp_path):
    src = Trainer(_cfg(TINY), run_dir=tmp_path / "src")
    src.fit(until=4)
    pt = tmp_path / "weights.pt"
    torch.save(src.model.state_dict(), pt)
    tr = Trainer(_cfg(TINY), run_dir=tmp_path / "dst")
    with pytest.raises(ckpt.CheckpointError, match="allow_pickle"):
        tr.load_checkpoint(pt, weights_only=True)
    with pytest.raises(ckpt.CheckpointError, match="holds weights only"):
        tr.load_checkpoint(pt, allow_pickle=True)
    with pytest.warns(UserWarning, match="carries no config"):
        tr.load_checkpoint(pt, weights_only=True, allow_pickle=True)
    for a, b in ((src.model, tr.model), (src.model, tr.ema)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    tr = Trainer(_cfg(TINY + ["trainer.allow_pickle=true"]), run_dir=tmp_path / "cfg")
    with pytest.warns(UserWarning, match="carries no config"):
        tr.load_checkpoint(pt, weights_only=True)
