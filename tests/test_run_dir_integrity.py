"""Run directories under careless or unlucky use: a resume with other settings, edited
checkpoint metadata, two writers, litter from killed writes, streaming from another model, and
resuming a directory with no checkpoint. Each test names the failure it guards against."""

import json
import os
import socket
import subprocess
import sys
import warnings

import pytest
import torch
from _config import compose_config as _cfg

from scorekit import io as ckpt
from scorekit.config import ConfigError
from scorekit.lock import LOCK_NAME, DirLock, LockHeld
from scorekit.train import Trainer

TINY = ["trainer.steps=6", "trainer.ckpt_every=3", "trainer.log_every=3",
        "trainer.batch_size=32", "trainer.progress=false", "model.hidden=16", "model.depth=1",
        "data.n_train=400", "data.n_test=100", "eval.n_samples=50", "eval.plot=false",
        "sampler.steps=5"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished TINY run (steps 3 and 6 checkpointed) with sde=ve and likelihood weighting."""
    run = tmp_path_factory.mktemp("finished") / "run"
    tr = Trainer(_cfg(TINY + ["sde=ve", "objective.weighting=likelihood"]), run_dir=run)
    tr.fit()
    return run


def _snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _copy(run, dest):
    dest.mkdir()
    for rel, data in _snapshot(run).items():
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_bytes(data)
    return dest


# --- 1, 2: a resume continues the run's own config ------------------------------------------
def test_failed_resume_writes_nothing(finished, tmp_path):
    """Trial 1: the README's resume command without the run's sde/weighting overrides is
    refused naming both keys, and the run dir (config.yaml included) is byte-identical."""
    run = _copy(finished, tmp_path / "run")
    before = _snapshot(run)
    with pytest.raises(ConfigError) as err:
        Trainer(_cfg(TINY + ["trainer.resume=true"]), run_dir=run)
    assert "sde.name: run has 've', given 'vp'" in str(err.value)
    assert "objective.weighting: run has 'likelihood', given 'sigma2'" in str(err.value)
    assert _snapshot(run) == before
    assert Trainer.from_run_dir(run).cfg.sde.name == "ve"  # still samples


def test_resume_refuses_changed_training_settings(finished, tmp_path):
    """Trial 2: seed, lr and batch size differ from the run: refused, each named with both
    values."""
    run = _copy(finished, tmp_path / "run")
    over = TINY + ["sde=ve", "objective.weighting=likelihood", "trainer.resume=true"]
    with pytest.raises(ConfigError) as err:
        Trainer(_cfg(over + ["seed=5", "trainer.lr=0.05", "trainer.batch_size=64"]),
                run_dir=run)
    for part in ("seed: run has 0, given 5", "trainer.lr: run has 0.002, given 0.05",
                 "trainer.batch_size: run has 32, given 64"):
        assert part in str(err.value)


def test_resume_takes_the_resumable_overrides(finished, tmp_path):
    """More steps and another log interval apply on resume; the rest comes from config.yaml
    (given here only as the run's own values), and the checkpoint records the full config."""
    run = _copy(finished, tmp_path / "run")
    over = TINY + ["sde=ve", "objective.weighting=likelihood", "trainer.resume=true",
                   "trainer.steps=9", "trainer.log_every=1"]
    tr = Trainer(_cfg(over), run_dir=run)
    assert tr.step == 6 and tr.cfg.trainer.steps == 9 and tr.cfg.trainer.log_every == 1
    tr.fit()
    meta = ckpt.load(tr.ckpt_path)[1]
    assert meta["step"] == 9 and meta["run_config"]["trainer"]["steps"] == 9
    assert meta["run_config"]["objective"]["weighting"] == "likelihood"


# --- 3: one checksum over tensors and metadata -----------------------------------------------
def _rewrite_header(path, edit):
    """Apply `edit(header)` to a safetensors file's JSON header, keeping the tensor bytes."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])


def _edit_meta(fn):
    def edit(header):
        meta = json.loads(header["__metadata__"]["scorekit"])
        fn(meta)
        header["__metadata__"]["scorekit"] = json.dumps(meta)
    return edit


def _set_step(meta):
    meta["step"] = 3


def _set_beta2(meta):
    meta["optim"]["param_groups"][0]["betas"][1] = 0.099


def _rename_digest(header):
    md = header["__metadata__"]
    md["sha256"] = md.pop("scorekit_sha256")


@pytest.mark.parametrize("edit,match", [
    (_edit_meta(_set_step), "checksum"), (_edit_meta(_set_beta2), "checksum"),
    (_rename_digest, "no 'scorekit_sha256' checksum")], ids=["step", "adam-beta2", "renamed-key"])
def test_edited_metadata_falls_back_to_prev(finished, tmp_path, edit, match):
    """Trial 3: editing the step or Adam's beta2 in `last`, or renaming its checksum key, is
    detected; the resume warns and continues from the intact `prev` (step 3)."""
    run = _copy(finished, tmp_path / "run")
    last = run / "checkpoints" / "last.safetensors"
    if "betas" not in json.dumps(ckpt.load(last)[1]["optim"]):
        pytest.skip("optimizer metadata layout changed")
    _rewrite_header(last, edit)
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load(last)
    over = TINY + ["sde=ve", "objective.weighting=likelihood", "trainer.resume=true"]
    with pytest.warns(UserWarning, match="using the previous checkpoint"):
        tr = Trainer(_cfg(over), run_dir=run)
    assert tr.step == 3
    assert tr.optimizer.param_groups[0]["betas"][1] == 0.999


def test_bad_metadata_value_with_valid_checksum_falls_back_to_prev(finished, tmp_path):
    """A checkpoint whose (checksummed) metadata has a step that is not an integer is refused
    and `prev` used, not a crash that blocks the resume."""
    run = _copy(finished, tmp_path / "run")
    last = run / "checkpoints" / "last.safetensors"
    tensors, meta = ckpt.load(last)
    ckpt.save(last, tensors, {**meta, "step": "six"})
    over = TINY + ["sde=ve", "objective.weighting=likelihood", "trainer.resume=true"]
    with pytest.warns(UserWarning, match="malformed.*using the previous checkpoint"):
        tr = Trainer(_cfg(over), run_dir=run)
    assert tr.step == 3


def test_oversized_checkpoint_refused_before_reading(tmp_path, monkeypatch):
    """Trial 8: a file declaring a 2 GiB tensor (sparse) is refused from its header: no tensor
    is read."""
    tr = Trainer(_cfg(TINY), run_dir=tmp_path / "run")
    path = tmp_path / "big.safetensors"
    size = 2 << 30
    md = {"scorekit": "{}", "scorekit_sha256": "0" * 64}
    raw = json.dumps({"__metadata__": md, "w": {"dtype": "F32", "shape": [size // 4],
                                                "data_offsets": [0, size]}}).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(len(raw).to_bytes(8, "little") + raw)
        fh.truncate(8 + len(raw) + size)
    monkeypatch.setattr(ckpt, "safe_open", lambda *a, **k: pytest.fail("tensors were read"))
    with pytest.raises(ckpt.CheckpointError, match="more than the"):
        tr.load_checkpoint(path)


# --- 4: one writer per run dir ---------------------------------------------------------------
@pytest.fixture
def other_process():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _lock_as(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(
        {"pid": pid, "host": host or socket.gethostname(), "start": None, "since": "earlier",
         "command": "scripts/train.py"}))


def test_second_writer_refused_naming_the_holder(finished, tmp_path, other_process):
    """Trial 4: a run dir locked by a live process: a second training is refused naming its
    pid and host, and writes nothing."""
    run = _copy(finished, tmp_path / "run")
    _lock_as(run, other_process.pid)
    before = _snapshot(run)
    over = TINY + ["sde=ve", "objective.weighting=likelihood", "trainer.resume=true"]
    with pytest.raises(LockHeld, match=f"pid {other_process.pid} on host"):
        Trainer(_cfg(over), run_dir=run)
    assert _snapshot(run) == before


def test_stale_lock_taken_over(tmp_path, other_process):
    """The holder was killed: its lock is taken over with a warning, and released after."""
    other_process.kill()
    other_process.wait()
    _lock_as(tmp_path / "run", other_process.pid)
    with pytest.warns(UserWarning, match="stale lock"):
        tr = Trainer(_cfg(TINY), run_dir=tmp_path / "run")
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    tr.lock.release()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_lock_of_another_host_is_not_broken(tmp_path):
    _lock_as(tmp_path, 12345, host="elsewhere")
    with pytest.raises(LockHeld, match="elsewhere.*delete"):
        DirLock(tmp_path).acquire()


def test_two_trainings_race_one_wins(tmp_path):
    """Two processes start training the same fresh run dir at once: exactly one trains, the
    other exits naming the lock, and the finished checkpoint loads."""
    code = ("import sys; sys.path.insert(0, 'tests'); from _config import compose_config as c;"
            "from scorekit.train import Trainer;"
            f"Trainer(c({TINY!r}), run_dir={str(tmp_path / 'run')!r}).fit()")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=root, env=env,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert codes[0] == 0, results
    if codes[1] != 0:  # they overlapped: the loser names the lock
        assert any("LockHeld" in err and "in use by pid" in err for _, err in results)
    assert ckpt.load(tmp_path / "run" / "checkpoints" / "last.safetensors")[1]["step"] == 6


# --- 5: litter and permissions ---------------------------------------------------------------
def test_temp_files_of_killed_writes_removed_on_start(finished, tmp_path):
    """Trial 5: temp files of every writer (ours and safetensors' own naming) are removed when
    the run dir is next opened for training; other files stay."""
    run = _copy(finished, tmp_path / "run")
    litter = [run / ".config.yaml.k2j3.tmp", run / ".metrics.json.x9.tmp",
              run / "checkpoints" / ".last.safetensors.ab12cd.tmp",
              run / "checkpoints" / ".tmpAbC123"]
    for p in litter:
        p.write_bytes(b"partial")
    (run / "notes.txt").write_text("mine")
    over = TINY + ["sde=ve", "objective.weighting=likelihood", "trainer.resume=true"]
    Trainer(_cfg(over), run_dir=run)
    assert not [p for p in litter if p.exists()] and (run / "notes.txt").exists()


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_written_files_follow_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        tr = Trainer(_cfg(TINY + ["trainer.steps=3"]), run_dir=tmp_path / "run")
        tr.fit()
    finally:
        os.umask(old)
    for p in (tr.run_dir / "config.yaml", tr.ckpt_path):
        assert p.stat().st_mode & 0o777 == 0o666 & ~mask, p


# --- 6: streaming from the same model only -------------------------------------------------
def test_stream_refuses_another_model_or_weights(finished, tmp_path):
    """Trial 6: completing an `out=` stream with the non-EMA weights or with `prev` is refused
    naming the field; the same model completes it."""
    out = tmp_path / "samples"
    tr = Trainer.from_run_dir(finished)
    tr.sample_to_disk(out, n=20, batch_size=10, use_ema=True)
    (out / "shard-000001.safetensors").unlink()
    with pytest.raises(ValueError, match="use_ema"):
        tr.sample_to_disk(out, n=20, batch_size=10, use_ema=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prev = Trainer.from_run_dir(finished, checkpoint=finished / "checkpoints" /
                                    "prev.safetensors")
    with pytest.raises(ValueError, match="checkpoint_sha256"):
        prev.sample_to_disk(out, n=20, batch_size=10, use_ema=True)
    res = tr.sample_to_disk(out, n=20, batch_size=10, use_ema=True)
    assert res.written == [1]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["checkpoint_sha256"] == ckpt.digest_of(
        finished / "checkpoints" / "last.safetensors") and manifest["seed"] == 1


def test_stream_from_before_manifests_had_a_source(finished, tmp_path):
    """A stream whose manifest predates `source` is refused with the line that would adopt it;
    added, the same model completes the stream."""
    out = tmp_path / "samples"
    tr = Trainer.from_run_dir(finished)
    tr.sample_to_disk(out, n=20, batch_size=10, use_ema=True)
    (out / "shard-000001.safetensors").unlink()
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    source = manifest.pop("source")
    path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="does not record which model") as err:
        tr.sample_to_disk(out, n=20, batch_size=10, use_ema=True)
    assert f'"source": {json.dumps(source)}' in str(err.value)
    path.write_text(json.dumps({**manifest, "source": source}))
    assert tr.sample_to_disk(out, n=20, batch_size=10, use_ema=True).written == [1]


def test_stream_dir_locked_by_a_live_process(tmp_path, finished, other_process):
    _lock_as(tmp_path / "samples", other_process.pid)
    with pytest.raises(LockHeld, match="sample dir"):
        Trainer.from_run_dir(finished).sample_to_disk(tmp_path / "samples", n=4, batch_size=2)


# --- 8: edges ------------------------------------------------------------------------------
def test_resume_without_checkpoint_in_a_finished_run_refused(finished, tmp_path):
    """Both checkpoints gone from a finished run: trainer.resume=true refuses to restart from
    step 0 over its results; allow_new starts there."""
    run = _copy(finished, tmp_path / "run")
    for name in ("last.safetensors", "prev.safetensors"):
        (run / "checkpoints" / name).unlink()
    (run / "metrics.json").write_text("{}")
    over = TINY + ["sde=ve", "objective.weighting=likelihood"]
    with pytest.raises(ConfigError, match="no checkpoint.*metrics.json.*allow_new"):
        Trainer(_cfg(over + ["trainer.resume=true"]), run_dir=run)
    tr = Trainer(_cfg(over + ["trainer.resume=allow_new"]), run_dir=run)
    assert tr.step == 0


@pytest.mark.parametrize("resume", ["false", "other"])
def test_new_run_over_a_finished_one_refused(finished, tmp_path, resume):
    """`trainer.resume=false` (the default) or a checkpoint from elsewhere, in a run dir that
    holds a run's checkpoint: refused before anything is written (training from step 0 there
    would replace that run)."""
    run = _copy(finished, tmp_path / "run")
    before = _snapshot(run)
    given = str(finished) if resume == "other" else resume
    over = TINY + ["sde=ve", "objective.weighting=likelihood", f"trainer.resume={given}"]
    with pytest.raises(ConfigError, match="already holds a run.*trainer.resume=true"):
        Trainer(_cfg(over), run_dir=run)
    assert _snapshot(run) == before


def test_resume_in_a_new_dir_starts_from_zero(tmp_path):
    tr = Trainer(_cfg(TINY + ["trainer.resume=true"]), run_dir=tmp_path / "new")
    assert tr.step == 0


def test_directory_named_like_a_checkpoint_is_not_a_run_dir(tmp_path):
    tr = Trainer(_cfg(TINY), run_dir=tmp_path / "run")
    fake = tmp_path / "last.safetensors"
    fake.mkdir()
    with pytest.raises(ckpt.CheckpointError, match="is a directory"):
        tr.load_checkpoint(fake)


def test_checkpoint_memory_bound_covers_a_real_checkpoint(finished):
    """The size bound refuses nothing that this trainer itself writes."""
    tr = Trainer.from_run_dir(finished)
    assert (finished / "checkpoints" / "last.safetensors").stat().st_size < \
        tr._max_checkpoint_bytes()
    assert torch.isfinite(tr.sample(4).x).all()
