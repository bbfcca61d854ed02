"""Atomic files: safetensors with a JSON header and a checksum, and text (JSON) files.

The one place that writes files that must survive a crash: training checkpoints, sample shards,
cached teleport fits and Jacobi tables, results. Tensors go into the safetensors file;
everything else is JSON in its metadata header, with a SHA-256 of the tensor bytes so that a
truncated or bit-flipped file is refused, not half-loaded.
Nothing here unpickles: a pickle checkpoint (`.pt`) loads only with `allow_pickle=True`, and then
through `torch.load(weights_only=True)`.

Writes go to a temporary file in the same directory, are fsynced and renamed over the target, so
a crash or a full disk leaves either the old file or the new one. `save(..., previous=p)` first
renames the current file to `p`, keeping the last two good checkpoints; `load_latest` falls back
to `p` (with a warning) when the newest one is missing or unreadable.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

_META_KEY = "scorekit"
_HASH_KEY = "sha256"
# torch.save writes a zip archive (PK..) or, with the legacy format, a raw pickle stream (0x80).
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match the model it is loaded into."""


def tensor_digest(tensors: dict[str, Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of CPU-contiguous tensors (order-free)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    # Makes the renames themselves durable; not every platform can open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: Path, write, previous: Path | None = None) -> None:
    """Run `write(tmp_path)`, fsync, then rename over `path` (after moving `path` to
    `previous` if given); on any failure the temporary file is removed and `path` is intact
    (or, if only the last rename failed, `previous` holds the former `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        if previous is not None and path.exists():
            os.replace(path, previous)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace the text file `path` atomically (readers see the old or the new content)."""
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete temporary files that an interrupted `save(path, ...)` left behind."""
    path = Path(path)
    stale = list(path.parent.glob(f".{path.name}.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def save(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any],
         previous: str | Path | None = None) -> None:
    """Write `tensors` + JSON `meta` to `path` atomically (temp file in the same dir + rename).

    previous: where the current `path` (if any) is moved just before the new file takes its
    place, so the two newest checkpoints survive any single interrupted or failed write.
    """
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {_META_KEY: json.dumps(meta), _HASH_KEY: tensor_digest(flat)}
    _atomic_write(Path(path), lambda tmp: save_file(flat, tmp, metadata=header),
                  None if previous is None else Path(previous))


def is_pickle(path: str | Path) -> bool:
    """Whether `path` starts like a `torch.save` file (zip archive or raw pickle) rather than a
    safetensors one (8-byte header length, then the JSON header's "{")."""
    with open(path, "rb") as fh:
        head = fh.read(9)
    return head[8:9] != b"{" and any(head.startswith(m) for m in _PICKLE_MAGIC)


def _load_pickle(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A `torch.save`d dict of tensors, or {"tensors": {...}, "meta": {...}}; tensors only."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler raises many types
        raise CheckpointError(f"cannot read pickle checkpoint {path} with "
                              f"torch.load(weights_only=True): {err}") from err
    if isinstance(obj, dict) and set(obj) == {"tensors", "meta"}:
        tensors, meta = obj["tensors"], obj["meta"]
    else:
        tensors, meta = obj, {}
    if not (isinstance(tensors, dict) and isinstance(meta, dict)
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items())):
        raise CheckpointError(f"pickle checkpoint {path} must hold a dict of named tensors "
                              f"(a state_dict), got {type(obj).__name__}")
    return tensors, meta


def load(path: str | Path, allow_pickle: bool = False) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by `save`: (tensors on CPU, meta).

    Raises CheckpointError for a missing, truncated or corrupted file (the tensor checksum is
    verified when the file has one), and for a pickle file unless `allow_pickle` is set.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if is_pickle(path):
        if not allow_pickle:
            raise CheckpointError(
                f"{path} is a pickle (torch.save) file; unpickling can execute code, so it is "
                f"not loaded by default. Pass allow_pickle=True (Hydra: trainer.allow_pickle=true "
                f"or allow_pickle=true) to load its tensors with torch.load(weights_only=True), "
                f"or convert it to safetensors")
        return _load_pickle(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            header = fh.metadata() or {}
            # get_tensor maps the file; owned copies stay valid whatever happens to the file
            tensors = {k: fh.get_tensor(k).clone() for k in fh.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a safetensors "
                              f"file?): {err}") from err
    if _META_KEY not in header:
        raise CheckpointError(f"{path} is a safetensors file but not a scorekit checkpoint")
    if _HASH_KEY in header and tensor_digest(tensors) != header[_HASH_KEY]:
        raise CheckpointError(f"checkpoint {path} is corrupted: its tensor checksum does not "
                              f"match the one recorded when it was written")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: {err}") from err
    return tensors, meta


def load_latest(path: str | Path, previous: str | Path | None = None, allow_pickle: bool = False
                ) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """`load(path)`, or, if that fails and `previous` exists, `load(previous)` with a warning
    naming the error. Returns (tensors, meta, the path that was read)."""
    path = Path(path)
    try:
        return (*load(path, allow_pickle), path)
    except CheckpointError as err:
        if previous is None or not Path(previous).is_file():
            raise
        try:
            tensors, meta = load(previous, allow_pickle)
        except CheckpointError as err_prev:
            raise CheckpointError(f"{err}; the previous checkpoint is unusable too: "
                                  f"{err_prev}") from err_prev
        warnings.warn(f"{err}; using the previous checkpoint {previous}", stacklevel=2)
        return tensors, meta, Path(previous)
