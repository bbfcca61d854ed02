"""Atomic files: safetensors with a JSON header and a checksum, and text (JSON) files.

The one place that writes files that must survive a crash: training checkpoints, sample shards,
cached teleport fits and Jacobi tables, results. Tensors go into the safetensors file;
everything else is JSON in its metadata header, with one SHA-256 over the tensors and the
metadata, so that a truncated, bit-flipped or edited file is refused, not half-loaded; sizes
and the header are checked before any tensor is read.
Nothing here unpickles: a pickle checkpoint (`.pt`) loads only with `allow_pickle=True`, and then
through `torch.load(weights_only=True)`.

Writes go to a temporary file `.<name>.<random>.tmp` in the same directory, are fsynced and
renamed over the target, so a crash or a full disk leaves either the old file or the new one;
`remove_stale_temps` deletes what a killed writer left. Files follow the umask.
`save(..., previous=p)` first renames the current file to `p`, keeping the last two good
checkpoints; `load_latest` falls back to `p` (with a warning) when the newest one is missing,
unreadable or fails the caller's check.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

_META_KEY = "scorekit"
# SHA-256 over the whole file's content: every header entry but this one (the JSON metadata
# included) and every tensor's name, dtype, shape and bytes. A file without it is refused.
_DIGEST_KEY = "scorekit_sha256"
_LEGACY_KEY = "sha256"  # earlier files: a checksum over the tensors only (`upgrade` converts)
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}
# torch.save writes a zip archive (PK..) or, with the legacy format, a raw pickle stream (0x80).
_PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")
TEMP_SUFFIX = ".tmp"  # every temporary file is `.<target name>.<random>.tmp`


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


def file_digest(header: dict[str, str], tensors: dict[str, Tensor]) -> str:
    """The whole-file checksum: the string header entries (but the checksum's own) and the
    tensors."""
    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != _DIGEST_KEY},
                                  sort_keys=True).encode())
    h.update(tensor_digest(tensors).encode())
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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write, previous: Path | None = None) -> None:
    """Run `write(tmp_path)`, fsync, then rename over `path` (after moving `path` to
    `previous` if given); on any failure the temporary file is removed and `path` is intact
    (or, if only the last rename failed, `previous` holds the former `path`). The file gets
    the permissions of a plain `open(path, "w")` (0666 less the umask), not mkstemp's 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
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


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our temporary files, or one that `safetensors.save_file`
    (`.tmp` + 6 characters, used by older versions of this module) leaves when killed."""
    return (name.startswith(".") and name.endswith(TEMP_SUFFIX) and name.count(".") >= 3) or \
        (len(name) == 10 and name.startswith(".tmp"))


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted writes left in the directory `path` (or in
    the directory of the file `path`). Only call it while no other process writes there
    (e.g. holding `scorekit.lock.DirLock`)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if not folder.is_dir():
        return []
    stale = sorted(p for p in folder.iterdir() if is_temp_name(p.name) and p.is_file())
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_safetensors(tensors: dict[str, Tensor], path: str, metadata: dict[str, str]) -> None:
    """Serialise into the open temporary file `path` (no temporary file of safetensors' own)."""
    with open(path, "wb") as fh:
        fh.write(safetensors_bytes(tensors, metadata=metadata))


def save(path: str | Path, tensors: dict[str, Tensor], meta: dict[str, Any],
         previous: str | Path | None = None) -> str:
    """Write `tensors` + JSON `meta` to `path` atomically (temp file in the same dir + rename),
    with a checksum over both; returns that checksum.

    previous: where the current `path` (if any) is moved just before the new file takes its
    place, so the two newest checkpoints survive any single interrupted or failed write.
    """
    flat = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    header = {_META_KEY: json.dumps(meta)}
    header[_DIGEST_KEY] = file_digest(header, flat)
    _atomic_write(Path(path), lambda tmp: write_safetensors(flat, tmp, metadata=header),
                  None if previous is None else Path(previous))
    return header[_DIGEST_KEY]


def read_header(path: str | Path) -> dict[str, Any]:
    """The safetensors header of `path` (tensor table and `__metadata__`), read and checked
    against the file size without touching the tensor data. Raises CheckpointError."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= n <= min(_MAX_HEADER, size - 8):
            raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a "
                                  f"safetensors file?): header length {n} in a {size}-byte file")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a "
                                  f"safetensors file?): {err}") from err
    if not isinstance(header, dict):
        raise CheckpointError(f"cannot read checkpoint {path}: its header is not a JSON object")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = (int(v) for v in info["data_offsets"])
            want = _DTYPE_BYTES[info["dtype"]] * math.prod(int(s) for s in info["shape"])
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"cannot read checkpoint {path}: bad entry for tensor "
                                  f"{name!r} ({err!r})") from None
        if stop - begin != want or begin < 0:
            raise CheckpointError(f"cannot read checkpoint {path}: tensor {name!r} declares "
                                  f"{want} bytes in offsets [{begin}, {stop})")
        end = max(end, stop)
    if 8 + n + end != size:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated?): its header "
                              f"declares {8 + n + end} bytes, the file has {size}")
    return header


def digest_of(path: str | Path) -> str | None:
    """The whole-file checksum recorded in `path`'s header (None if it has none); cheap."""
    return (read_header(path).get("__metadata__") or {}).get(_DIGEST_KEY)


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


def load(path: str | Path, allow_pickle: bool = False, max_bytes: int | None = None
         ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint written by `save`: (tensors on CPU, meta).

    Raises CheckpointError for a missing, truncated or corrupted file, one whose checksum (over
    tensors and metadata) is missing or does not match, one whose tensors declare more than
    `max_bytes` (checked on the header, before any tensor is read), and for a pickle file
    unless `allow_pickle` is set.
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
    info = read_header(path)
    header = info.get("__metadata__") or {}
    if _META_KEY not in header:
        raise CheckpointError(f"{path} is a safetensors file but not a scorekit checkpoint")
    if _DIGEST_KEY not in header:
        hint = (f"; it looks like a file of an earlier version (tensor-only checksum): check "
                f"and convert it with `python -c \"from scorekit import io; "
                f"io.upgrade('{path}')\"`" if _LEGACY_KEY in header else "")
        raise CheckpointError(f"checkpoint {path} is corrupted or too old: it has no "
                              f"'{_DIGEST_KEY}' checksum over its tensors and metadata{hint}")
    declared = path.stat().st_size
    if max_bytes is not None and declared > max_bytes:
        raise CheckpointError(f"checkpoint {path} holds {declared} bytes, more than the "
                              f"{max_bytes} that this model's state can take; refusing to read it")
    try:
        with safe_open(str(path), framework="pt") as fh:
            # get_tensor maps the file; owned copies stay valid whatever happens to the file
            tensors = {k: fh.get_tensor(k).clone() for k in fh.keys()}
    except (SafetensorError, OSError, RuntimeError) as err:
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a safetensors "
                              f"file?): {err}") from err
    if file_digest(header, tensors) != header[_DIGEST_KEY]:
        raise CheckpointError(f"checkpoint {path} is corrupted: its checksum over tensors and "
                              f"metadata does not match the one recorded when it was written")
    try:
        meta = json.loads(header[_META_KEY])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has metadata that is not a JSON object")
    return tensors, meta


def upgrade(path: str | Path) -> None:
    """Rewrite a file of an earlier version (a checksum over its tensors only) with the
    whole-file checksum, after verifying its tensors against their checksum. Its metadata
    cannot be verified: only upgrade files you have not edited."""
    path = Path(path)
    header = read_header(path).get("__metadata__") or {}
    if _DIGEST_KEY in header:
        return
    if _META_KEY not in header or _LEGACY_KEY not in header:
        raise CheckpointError(f"{path} is not a scorekit file of an earlier version")
    with safe_open(str(path), framework="pt") as fh:
        tensors = {k: fh.get_tensor(k).clone() for k in fh.keys()}
    if tensor_digest(tensors) != header[_LEGACY_KEY]:
        raise CheckpointError(f"{path} is corrupted: its tensor checksum does not match")
    save(path, tensors, json.loads(header[_META_KEY]))


def load_latest(path: str | Path, previous: str | Path | None = None, allow_pickle: bool = False,
                max_bytes: int | None = None, check: Callable[[dict, dict], None] | None = None
                ) -> tuple[dict[str, Tensor], dict[str, Any], Path]:
    """`load(path)`, or, if that fails and `previous` exists, `load(previous)` with a warning
    naming the error. `check(tensors, meta)` raising CheckpointError (e.g. a metadata value of
    the wrong type) counts as a failure too. Returns (tensors, meta, the path that was read)."""
    def read(p: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
        tensors, meta = load(p, allow_pickle, max_bytes)
        if check is not None:
            check(tensors, meta)
        return tensors, meta

    path = Path(path)
    try:
        return (*read(path), path)
    except CheckpointError as err:
        if previous is None or not Path(previous).is_file():
            raise
        try:
            tensors, meta = read(Path(previous))
        except CheckpointError as err_prev:
            raise CheckpointError(f"{err}; the previous checkpoint is unusable too: "
                                  f"{err_prev}") from err_prev
        warnings.warn(f"{err}; using the previous checkpoint {previous}", stacklevel=2)
        return tensors, meta, Path(previous)
