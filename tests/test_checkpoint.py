"""Checkpoint files: atomic writes, corruption detection, fallback to the previous file, a full
disk, and pickle files that load only on request and never run code."""

import errno
import os
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from scorekit import io as ckpt


def _state(step):
    g = torch.Generator().manual_seed(step)
    return {"w": torch.randn(64, 8, generator=g), "b": torch.randn(8, generator=g)}, {"step": step}


def _pair(tmp_path):
    """last = step 2, prev = step 1, both written by `save` with rotation."""
    last, prev = tmp_path / "last.safetensors", tmp_path / "prev.safetensors"
    for step in (1, 2):
        ckpt.save(last, *_state(step), previous=prev)
    return last, prev


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path):
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # inside the tensor data, past the JSON header
    path.write_bytes(bytes(data))


def _garble_header(path):
    data = bytearray(path.read_bytes())
    data[8:16] = b"\x00" * 8
    path.write_bytes(bytes(data))


def test_roundtrip_and_rotation(tmp_path):
    last, prev = _pair(tmp_path)
    tensors, meta = ckpt.load(last)
    assert meta == {"step": 2} and torch.equal(tensors["w"], _state(2)[0]["w"])
    assert ckpt.load(prev)[1] == {"step": 1}
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("damage,match", [(_truncate, "truncated"), (_flip_byte, "corrupted"),
                                          (_garble_header, "cannot read")],
                         ids=["truncated", "bit-flip", "header"])
def test_damaged_file_is_refused_and_previous_used(tmp_path, damage, match):
    last, prev = _pair(tmp_path)
    damage(last)
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load(last)
    with pytest.warns(UserWarning, match=f"{match}.*using the previous checkpoint"):
        tensors, meta, used = ckpt.load_latest(last, prev)
    assert used == prev and meta == {"step": 1}
    assert torch.equal(tensors["w"], _state(1)[0]["w"])
    damage(prev)
    with pytest.raises(ckpt.CheckpointError, match="previous checkpoint is unusable too"):
        ckpt.load_latest(last, prev)


def test_missing_last_uses_previous(tmp_path):
    """A crash between the two renames of a rotating save leaves only `prev`."""
    last, prev = _pair(tmp_path)
    last.unlink()
    with pytest.warns(UserWarning, match="not found"):
        assert ckpt.load_latest(last, prev)[1] == {"step": 1}


def _half_write_then_enospc(tensors, path, metadata=None):
    """save_file that fills the disk half-way through the file."""
    save_file(tensors, path, metadata=metadata)
    _truncate(Path(path))
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _failing_replace(fail_on):
    calls = {"n": 0}
    real = os.replace

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == fail_on:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return real(src, dst)
    return replace


def _assert_previous_intact(tmp_path, last, prev):
    """Nothing half-written is visible: every file that exists loads, and the newest loadable
    state is the previous save (step 2) or its predecessor (step 1)."""
    assert not list(tmp_path.glob("*.tmp"))
    for path in (last, prev):
        if path.exists():
            ckpt.load(path)  # raises on a half-written file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, meta, _ = ckpt.load_latest(last, prev)
    assert meta["step"] in (1, 2)


@pytest.mark.parametrize("fault", ["write", "rotate", "rename"])
def test_disk_full_never_leaves_half_written_latest(tmp_path, monkeypatch, fault):
    """ENOSPC while writing the data, while moving last -> prev, or while renaming the new file
    into place: the save raises and the previous good checkpoint still loads."""
    last, prev = _pair(tmp_path)
    if fault == "write":
        monkeypatch.setattr(ckpt, "write_safetensors", _half_write_then_enospc)
    else:
        monkeypatch.setattr(ckpt.os, "replace", _failing_replace(1 if fault == "rotate" else 2))
    with pytest.raises(OSError, match="No space left"):
        ckpt.save(last, *_state(3), previous=prev)
    monkeypatch.undo()
    _assert_previous_intact(tmp_path, last, prev)
    if fault != "rename":  # nothing moved at all
        assert ckpt.load(last)[1] == {"step": 2} and ckpt.load(prev)[1] == {"step": 1}


def test_disk_full_check_catches_a_non_atomic_writer(tmp_path, monkeypatch):
    """Negative control: writing straight to `last` under the same fault leaves a half-written
    latest file, which the check above rejects."""
    last, prev = _pair(tmp_path)

    def naive_save(path, tensors, meta, previous=None):
        _half_write_then_enospc(tensors, str(path), metadata={"scorekit": "{}"})

    with pytest.raises(OSError):
        naive_save(last, *_state(3))
    with pytest.raises(ckpt.CheckpointError):
        _assert_previous_intact(tmp_path, last, prev)


def test_write_text_atomic(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    ckpt.write_text_atomic(path, '{"a": 1}')
    monkeypatch.setattr(ckpt.os, "replace", _failing_replace(1))
    with pytest.raises(OSError):
        ckpt.write_text_atomic(path, '{"a": 2}')
    assert path.read_text() == '{"a": 1}' and not list(tmp_path.glob("*.tmp"))


def test_stale_temp_files_removed(tmp_path):
    last = tmp_path / "last.safetensors"
    stale = tmp_path / ".last.safetensors.abc123.tmp"
    stale.write_bytes(b"partial")
    assert ckpt.remove_stale_temps(last) == [stale] and not stale.exists()


class _Payload:
    """An object whose unpickling would create a file: stands in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_needs_opt_in_and_never_runs_code(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    plain = tmp_path / "weights.pt"
    torch.save(sd, plain)
    with pytest.raises(ckpt.CheckpointError, match="pickle.*allow_pickle=True"):
        ckpt.load(plain)
    tensors, meta = ckpt.load(plain, allow_pickle=True)
    assert torch.equal(tensors["w"], sd["w"]) and meta == {}
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"w": sd["w"], "x": _Payload(marker)}, evil)
    with pytest.raises(ckpt.CheckpointError, match="allow_pickle"):
        ckpt.load(evil)
    with pytest.raises(ckpt.CheckpointError, match="weights_only=True"):
        ckpt.load(evil, allow_pickle=True)
    assert not marker.exists()
    torch.save({"w": sd["w"]}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(ckpt.CheckpointError, match="pickle"):
        ckpt.load(tmp_path / "legacy.pt")


def test_file_of_an_earlier_version_is_refused_then_upgraded(tmp_path):
    """A file with the earlier tensor-only checksum is refused with the upgrade hint;
    `upgrade` verifies its tensors and rewrites it with the whole-file checksum."""
    import hashlib
    import json

    tensors, meta = _state(3)
    h = hashlib.sha256()
    for name in sorted(tensors):  # the earlier checksum, written out from its definition
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    path = tmp_path / "old.safetensors"
    save_file(tensors, str(path), metadata={"scorekit": json.dumps(meta), "sha256": h.hexdigest()})
    with pytest.raises(ckpt.CheckpointError, match="earlier version.*io.upgrade"):
        ckpt.load(path)
    ckpt.upgrade(path)
    loaded, loaded_meta = ckpt.load(path)
    assert loaded_meta == meta and torch.equal(loaded["w"], tensors["w"])
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"scorekit": json.dumps(meta), "sha256": "0" * 64})
    with pytest.raises(ckpt.CheckpointError, match="corrupted"):
        ckpt.upgrade(bad)
