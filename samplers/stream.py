"""Sampling many points to disk in shards: bounded memory, atomic shards, exact resume.

`sample_to_disk` draws n samples as ceil(n / batch_size) shards. Shard k holds rows
[k B, min((k + 1) B, n)), and row i is drawn from the per-sample stream of seed `seed + i`
(`samplers.sample(seeds=...)`), so each shard can be computed on its own and the samples do
not depend on the batch size: a rerun after a crash keeps the shards already on disk (each
written atomically, with a tensor checksum) and recomputes only the others, giving the same
files as an uninterrupted run. Memory is that of one batch, whatever n is. `manifest.json`
records the parameters and `source` (what the score is: e.g. the checkpoint's checksum and
whether its EMA weights were used); a rerun into the same directory with other ones is refused
naming the field. One call at a time writes a directory (`scorekit.lock.DirLock`); temporary
files that a killed call left are removed by the next one.

Layout: `<out>/manifest.json`, `<out>/shard-000000.safetensors` ... (tensor "x": (rows, *D)).
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from samplers.api import sample
from samplers.inputs import check_shape
from scorekit import io, rng
from scorekit._validate import check_positive_int
from scorekit.lock import DirLock, LockHeld
from scorekit.processes import SDE, Score
from scorekit.ranks import Ranks

FORMAT = "scorekit-samples-1"
MANIFEST = "manifest.json"


@dataclass
class StreamResult:
    """Where the shards are, which were written by this call and which were already there."""

    out_dir: Path
    n: int
    shards: int
    written: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    wall_time: float = 0.0


def shard_path(out_dir: str | Path, k: int) -> Path:
    return Path(out_dir) / f"shard-{k:06d}.safetensors"


def _manifest(n: int, batch_size: int, sample_shape: tuple[int, ...], seed: int, method: str,
              steps: int | None, dtype: torch.dtype, sde: SDE, options: dict[str, Any],
              source: dict[str, Any] | None) -> dict[str, Any]:
    return {"format": FORMAT, "n": n, "batch_size": batch_size,
            "sample_shape": list(sample_shape), "seed": seed, "method": method, "steps": steps,
            "dtype": str(dtype).removeprefix("torch."), "sde": repr(sde),
            "options": {k: repr(v) for k, v in sorted(options.items())},
            "source": json.loads(json.dumps(source, default=repr)),
            "shards": -(-n // batch_size)}


def _check_manifest(out: Path, want: dict[str, Any]) -> None:
    path = out / MANIFEST
    if not path.is_file():
        io.write_text_atomic(path, json.dumps(want, indent=2))
        return
    try:
        have = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not readable JSON ({err}); remove the directory to "
                         f"start over") from err
    have.pop("complete", None)
    if "source" not in have and want.get("source") is not None:  # written by an earlier version
        raise ValueError(
            f"{path} does not record which model drew its samples (written before manifests "
            f"had a 'source'), so its shards cannot be checked against this one; use another "
            f"out_dir, or, if they came from this model, add \"source\": "
            f"{json.dumps(want['source'])} to it and rerun")
    diffs = [f"{k}: on disk {have.get(k)!r} vs now {v!r}" for k, v in want.items()
             if have.get(k) != v]
    if diffs:
        raise ValueError(f"{out} holds samples drawn with other parameters ("
                         + "; ".join(diffs[:4]) + "); rerun with those, or use another out_dir")


def _shard_ok(path: Path, k: int, start: int, rows: int) -> bool:
    if not path.is_file():
        return False
    try:
        tensors, meta = io.load(path)
    except io.CheckpointError as err:
        warnings.warn(f"recomputing shard {k}: {err}", stacklevel=3)
        return False
    good = (meta.get("shard"), meta.get("start"), meta.get("rows")) == (k, start, rows)
    return good and "x" in tensors and tensors["x"].shape[0] == rows


def sample_to_disk(score: Score, sde: SDE, out_dir: str | Path, n: int,
                   sample_shape: int | tuple[int, ...], batch_size: int = 10_000, seed: int = 0,
                   method: str = "em", steps: int | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype = torch.float32,
                   progress: bool = False, source: dict[str, Any] | None = None,
                   **options: Any) -> StreamResult:
    """Draw n samples of shape `sample_shape` with `samplers.sample(method=..., **options)` in
    shards of `batch_size`, written to `out_dir`; shards already there are kept (resume).

    Sample i uses the per-sample stream of seed `seed + i`: for the methods that treat samples
    independently (all but "fkc", adaptive "ode" and "pc" with snr_norm="batch_mean") row i is
    the same whatever `batch_size`, and the files never depend on how often the run was
    interrupted.

    Under `torchrun` (a default `torch.distributed` group) every rank calls this with the same
    arguments: rank r computes shards r, r + W, ... of the W ranks, so the files are the same
    for any world size, and a rerun with another world size completes only what is missing.
    Rank 0 writes the manifest; a rank that raises ends the call on every rank with
    `scorekit.ranks.RankFailed` naming the rank, the shard and the error. `progress`: a tqdm bar
    on rank 0 counting the shards on disk (all ranks'). `source`: JSON-able facts about the
    score (`Trainer.sample_to_disk` passes the checkpoint's checksum, step and `use_ema`),
    recorded in the manifest and checked on rerun like the other parameters.
    """
    ranks = Ranks.current()
    n = check_positive_int(n, "n")
    seed = rng.check_seed(seed)
    if seed + n - 1 > rng.MAX_SEED:
        raise ValueError(f"seed + n - 1 = {seed + n - 1} exceeds {rng.MAX_SEED}")
    batch_size = check_positive_int(batch_size, "batch_size")
    dims = (sample_shape,) if isinstance(sample_shape, int) else tuple(sample_shape)
    sample_shape = check_shape((1, *dims))[1:]
    device = torch.device("cpu" if device is None else device)
    out = Path(out_dir)
    want = _manifest(n, batch_size, sample_shape, seed, method, steps, dtype, sde, options,
                     source)
    error, lock = None, DirLock(out, "sample dir")
    if ranks.is_main:  # one writer for the manifest and the clean-up
        try:
            lock.acquire()
            _check_manifest(out, want)
            io.remove_stale_temps(out)  # left by a process killed mid-write
        except (OSError, ValueError, LockHeld) as err:
            lock.release()
            error = err
    ranks.agree(error, f"sample_to_disk into {out}")
    try:
        return _fill(score, sde, out, n, batch_size, sample_shape, seed, method, steps, device,
                     dtype, progress, ranks, options)
    finally:
        lock.release()


def _fill(score: Score, sde: SDE, out: Path, n: int, batch_size: int,
          sample_shape: tuple[int, ...], seed: int, method: str, steps: int | None,
          device: torch.device, dtype: torch.dtype, progress: bool, ranks: Ranks,
          options: dict[str, Any]) -> StreamResult:
    """The shards not on disk yet (this rank's), then the manifest marked complete."""
    error = None
    n_shards = -(-n // batch_size)
    res = StreamResult(out, n, n_shards)
    start_time = time.perf_counter()
    on_disk = lambda: sum(shard_path(out, k).is_file() for k in range(n_shards))  # noqa: E731
    show = progress and ranks.is_main
    bar = tqdm(total=n_shards, initial=on_disk() if show else 0, desc="shards", unit="shard",
               disable=not show)
    try:
        for k in ranks.mine(n_shards):
            start = k * batch_size
            rows = min(batch_size, n - start)
            path = shard_path(out, k)
            if _shard_ok(path, k, start, rows):
                res.skipped.append(k)
                continue
            seeds = torch.arange(start, start + rows, dtype=torch.int64) + seed
            try:
                r = sample(score, sde, (rows, *sample_shape), method=method, steps=steps,
                           seeds=seeds, device=device, dtype=dtype, **options)
                io.save(path, {"x": r.x.detach().cpu()},
                        {"shard": k, "start": start, "rows": rows, "seed": seed + start,
                         "nfe": r.nfe})
            except Exception as err:  # named, then reported to every rank by `agree`
                raise _with_shard(err, f"shard {k} (rows {start}..{start + rows - 1})") \
                    from err
            res.written.append(k)
            del r
            if show:  # every rank's shards: those on disk
                bar.n = on_disk()
                bar.refresh()
    except Exception as err:
        error = err
    bar.close()
    ranks.agree(error, f"sample_to_disk into {out}")
    if ranks.is_main:
        missing = [k for k in range(n_shards) if not shard_path(out, k).is_file()]
        if missing:
            error = RuntimeError(f"shards {missing[:8]} missing after every rank finished")
        else:
            manifest = json.loads((out / MANIFEST).read_text())
            io.write_text_atomic(out / MANIFEST, json.dumps({**manifest, "complete": True},
                                                            indent=2))
    ranks.agree(error, f"sample_to_disk into {out}")  # the manifest is final before returning
    res.wall_time = time.perf_counter() - start_time
    return res


def _with_shard(err: Exception, where: str) -> Exception:
    """`err` with `where` in front of its message, of the same type when that type takes a
    message (so callers' `except ValueError` still applies), else a RuntimeError."""
    try:
        named = type(err)(f"{where}: {err}")
    except Exception:  # noqa: BLE001 - a constructor that needs other arguments
        return RuntimeError(f"{where}: {type(err).__name__}: {err}")
    return named if str(named) == f"{where}: {err}" else \
        RuntimeError(f"{where}: {type(err).__name__}: {err}")


def load_samples(out_dir: str | Path) -> Tensor:
    """All rows of a finished `sample_to_disk` directory, in order: (n, *D). Raises ValueError
    if a shard is missing, unreadable or out of place."""
    out = Path(out_dir)
    manifest = json.loads((out / MANIFEST).read_text())
    parts, start = [], 0
    for k in range(manifest["shards"]):
        path = shard_path(out, k)
        try:
            tensors, meta = io.load(path)
        except io.CheckpointError as err:
            raise ValueError(f"shard {k} of {out}: {err}") from err
        if meta.get("start") != start or tensors["x"].shape[0] != meta.get("rows"):
            raise ValueError(f"shard {k} of {out} starts at row {meta.get('start')} with "
                             f"{tensors['x'].shape[0]} rows; expected row {start}")
        parts.append(tensors["x"])
        start += tensors["x"].shape[0]
    if start != manifest["n"]:
        raise ValueError(f"{out} holds {start} rows, its manifest says n={manifest['n']}")
    return torch.cat(parts)
