"""Fault injection on run and sample directories: what survives, and whether anything loads wrong.

    python benchmarks/faults.py            # benchmarks/results/faults.{json,md}
    python benchmarks/faults.py --quick    # fewer trials (CI)

Faults: SIGKILL at random points of training (checkpoints every 2 steps, so kills land inside
checkpoint writes) and of a sample stream; a full disk (ENOSPC) while writing, rotating and
renaming a checkpoint; random bit flips in the tensor data and in the JSON header; random
truncation; edited metadata values (step, Adam's beta2) and a renamed checksum key; two
trainings started at once on one run dir; a run dir locked by a live process. The outcome of
each trial is one of: `identical` (the resumed run or completed stream equals the
uninterrupted one bit for bit), `refused` (the damaged file is refused, and the intact `prev`
loads), `refused-no-fallback`, `locked-out` (the second writer stops naming the holder) and the
failures `lost` (no checkpoint loads) or `silent` (a damaged or foreign state loaded without an
error). The table counts them per fault.
"""

from __future__ import annotations

import argparse
import errno
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks import _report  # noqa: E402
from scorekit import io  # noqa: E402
from scorekit.config import compose  # noqa: E402
from scorekit.lock import LockHeld  # noqa: E402
from scorekit.train import Trainer  # noqa: E402

TINY = ["trainer.steps=200", "trainer.ckpt_every=2", "trainer.log_every=5",
        "trainer.batch_size=64", "trainer.progress=false", "model.hidden=32", "model.depth=2",
        "data.n_train=2000", "data.n_test=500", "eval.n_samples=200", "eval.plot=false",
        "sampler.steps=10"]


def _state(path: Path) -> tuple[dict, dict]:
    tensors, meta = io.load(path)
    for key in ("train_time", "run_config", "segments"):  # how it ran, not what it learned
        meta.pop(key, None)
    return tensors, meta


def _same(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
    (ta, ma), (tb, mb) = a, b
    return ma == mb and set(ta) == set(tb) and all(torch.equal(ta[k], tb[k]) for k in ta)


def _train(run_dir: Path, overrides: list[str] = (), until: int | None = None) -> Trainer:
    tr = Trainer(compose(TINY + list(overrides)), run_dir=run_dir)
    tr.fit(until=until)
    return tr


def _child(run_dir: Path) -> None:
    torch.set_num_threads(1)
    _train(run_dir)


def _resumed(run_dir: Path) -> Trainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _train(run_dir, ["trainer.resume=true"])


DETAIL: dict[str, str] = {}  # fault -> where the faults landed


def _newest_step(run: Path) -> int:
    last = run / "checkpoints" / "last.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return io.load_latest(last, last.with_name("prev.safetensors"))[1]["step"]
        except io.CheckpointError:
            return 0


def _resume_outcome(run: Path, ref: tuple) -> str:
    """Resume the run to its end: `identical` to the uninterrupted state, `silent` if not,
    `lost` if no checkpoint loads."""
    try:
        _resumed(run)
    except io.CheckpointError:
        return "lost"
    return "identical" if _same(_state(run / "checkpoints" / "last.safetensors"), ref) \
        else "silent"


def sigkill_training(root: Path, trials: int, ref: tuple, rng: random.Random) -> list[str]:
    """Kill after a uniform fraction of the wall time of an uninterrupted child's run."""
    ctx = multiprocessing.get_context("fork")
    start = time.perf_counter()
    proc = ctx.Process(target=_child, args=(root / "timed",))
    proc.start()
    proc.join()
    duration = time.perf_counter() - start
    out, steps = [], []
    for i in range(trials):
        run = root / f"kill{i}"
        proc = ctx.Process(target=_child, args=(run,))
        proc.start()
        time.sleep(rng.uniform(0.05, 0.95) * duration)
        os.kill(proc.pid, 9)
        proc.join()
        steps.append(_newest_step(run))
        out.append(_resume_outcome(run, ref))
    DETAIL["sigkill_training"] = f"newest checkpoint at the kill: step {sorted(steps)} of 200"
    return out


STREAM_N = 40_000


def _stream_child(run: Path, out: Path) -> None:
    torch.set_num_threads(1)
    Trainer.from_run_dir(run).sample_to_disk(out, n=STREAM_N, batch_size=STREAM_N // 40,
                                             seed=3)


def sigkill_stream(root: Path, run: Path, trials: int, rng: random.Random) -> list[str]:
    from samplers.stream import load_samples

    ref_dir = root / "stream_ref"
    start = time.perf_counter()
    Trainer.from_run_dir(run).sample_to_disk(ref_dir, n=STREAM_N, batch_size=STREAM_N // 40,
                                             seed=3)
    duration = time.perf_counter() - start
    ref = load_samples(ref_dir)
    ctx = multiprocessing.get_context("fork")
    out, done = [], []
    for i in range(trials):
        dest = root / f"stream{i}"
        proc = ctx.Process(target=_stream_child, args=(run, dest))
        proc.start()
        time.sleep(rng.uniform(0.05, 0.95) * duration)
        os.kill(proc.pid, 9)
        proc.join()
        done.append(len(list(dest.glob("shard-*.safetensors"))) if dest.is_dir() else 0)
        Trainer.from_run_dir(run).sample_to_disk(dest, n=STREAM_N, batch_size=STREAM_N // 40,
                                                 seed=3)
        leftover = [p.name for p in dest.iterdir() if io.is_temp_name(p.name)]
        out.append("identical" if torch.equal(load_samples(dest), ref) and not leftover
                   else "silent")
    DETAIL["sigkill_stream"] = f"shards on disk at the kill: {sorted(done)} of 40"
    return out


def _enospc_on(target, calls_until_fail: int):
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls_until_fail:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return target(*args, **kwargs)
    return failing


def disk_full(root: Path, ref: tuple) -> list[str]:
    """ENOSPC in the data write, the last -> prev rotation and the final rename of the
    checkpoint at step 100; the run is then resumed to the end."""
    out = []
    for name, (obj, attr, n) in {"write": (io, "write_safetensors", 1),
                                 "rotate": (io.os, "replace", 1),
                                 "rename": (io.os, "replace", 2)}.items():
        run = root / f"enospc_{name}"
        tr = _train(run, until=98)
        real = getattr(obj, attr)
        setattr(obj, attr, _enospc_on(real, n))
        try:
            tr.fit(until=100)
        except OSError:
            pass
        finally:
            setattr(obj, attr, real)
        out.append(_resume_outcome(run, ref))
    return out


def _outcome_of_damage(run: Path, damage) -> str:
    """Damage `last` with `damage(path)`; resume must refuse it and continue from `prev`."""
    last = run / "checkpoints" / "last.safetensors"
    prev_step = io.load(last.with_name("prev.safetensors"))[1]["step"]
    damage(last)
    try:
        io.load(last)
        return "silent"
    except io.CheckpointError:
        pass
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            tr = Trainer(compose(TINY + ["trainer.resume=true"]), run_dir=run)
        except io.CheckpointError:
            return "refused-no-fallback"
    used_prev = any("using the previous checkpoint" in str(w.message) for w in caught)
    return "refused" if used_prev and tr.step == prev_step else "silent"


def damaged_files(root: Path, base: Path, trials: int, rng: random.Random) -> dict[str, list]:
    size = (base / "checkpoints" / "last.safetensors").stat().st_size
    header_len = 8 + int.from_bytes((base / "checkpoints" / "last.safetensors").read_bytes()[:8],
                                    "little")

    def flip(lo: int, hi: int):
        def damage(path: Path) -> None:
            data = bytearray(path.read_bytes())
            data[rng.randrange(lo, hi)] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(data))
        return damage

    def truncate(path: Path) -> None:
        data = path.read_bytes()
        path.write_bytes(data[:rng.randrange(0, len(data))])

    def edit(fn):
        def damage(path: Path) -> None:
            data = path.read_bytes()
            n = int.from_bytes(data[:8], "little")
            header = json.loads(data[8:8 + n])
            fn(header["__metadata__"])
            raw = json.dumps(header).encode()
            raw += b" " * (-len(raw) % 8)
            path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n:])
        return damage

    def meta_edit(fn):
        def inner(md: dict) -> None:
            meta = json.loads(md["scorekit"])
            fn(meta)
            md["scorekit"] = json.dumps(meta)
        return edit(inner)

    faults = {
        "bit flip in tensor data": [flip(header_len, size)] * trials,
        "bit flip in the JSON header": [flip(8, header_len)] * trials,
        "truncation at a random length": [truncate] * trials,
        "edited metadata (step, Adam beta2) or renamed checksum key": [
            meta_edit(lambda m: m.update(step=m["step"] - 2)),
            meta_edit(lambda m: m["optim"]["param_groups"][0]["betas"].__setitem__(1, 0.099)),
            edit(lambda md: md.update(sha256=md.pop("scorekit_sha256")))],
    }
    out = {}
    for fault, damages in faults.items():
        results = []
        for i, damage in enumerate(damages):
            run = root / f"damage_{len(out)}_{i}"
            _copytree(base, run)
            results.append(_outcome_of_damage(run, damage))
        out[fault] = results
    return out


def _copytree(src: Path, dest: Path) -> None:
    for p in src.rglob("*"):
        if p.is_file() and p.name != ".scorekit.lock":
            (dest / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dest / p.relative_to(src)).write_bytes(p.read_bytes())


def two_writers(root: Path, trials: int, ref: tuple) -> list[str]:
    """Two processes start the same fresh run at once; one trains, the other is locked out
    (or, if they did not overlap, finds the finished run)."""
    out = []
    code = ("import sys; from scorekit.config import compose; from scorekit.train import "
            "Trainer; Trainer(compose(sys.argv[2:]), run_dir=sys.argv[1]).fit()")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(_report.ROOT)}
    for i in range(trials):
        run = root / f"two{i}"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(run), *TINY], env=env,
                                  stderr=subprocess.PIPE, text=True) for _ in range(2)]
        res = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
        codes = sorted(rc for rc, _ in res)
        locked = any("LockHeld" in err for _, err in res)
        same = _same(_state(run / "checkpoints" / "last.safetensors"), ref)
        if codes[0] != 0 or not same:
            out.append("silent" if codes[0] == 0 else "lost")
        else:
            out.append("locked-out" if codes[1] != 0 and locked else "identical")
    return out


def live_lock(root: Path, base: Path) -> list[str]:
    run = root / "live_lock"
    _copytree(base, run)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (run / ".scorekit.lock").write_text(json.dumps(
            {"pid": holder.pid, "host": os.uname().nodename, "start": None}))
        before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
        try:
            Trainer(compose(TINY + ["trainer.resume=true"]), run_dir=run)
            return ["silent"]
        except LockHeld:
            after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
            return ["locked-out" if after == before else "silent"]
    finally:
        holder.kill()
        holder.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="faults")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    n = 3 if args.quick else 10
    start = time.perf_counter()
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        ref = _state(_train(root / "ref").ckpt_path)
        faults = {"SIGKILL during training (checkpoint every 2 steps)":
                  sigkill_training(root, n, ref, rng),
                  "SIGKILL during a sample stream (40 shards)":
                  sigkill_stream(root, root / "ref", max(2, n // 2), rng),
                  "ENOSPC in checkpoint write / rotate / rename": disk_full(root, ref)}
        faults.update(damaged_files(root, root / "ref", 2 * n, rng))
        faults["two trainings started at once on one run dir"] = two_writers(
            root, max(1, n // 5), ref)
        faults["run dir locked by a live process"] = live_lock(root, root / "ref")
    keys = {"SIGKILL during training (checkpoint every 2 steps)": "sigkill_training",
            "SIGKILL during a sample stream (40 shards)": "sigkill_stream"}
    rows = []
    for fault, outcomes in faults.items():
        counts = Counter(outcomes)
        rows.append({"fault": fault, "trials": len(outcomes),
                     "outcome": ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
                     "lost": counts["lost"], "silent": counts["silent"],
                     "where": DETAIL.get(keys.get(fault, ""), "")})
    payload = {"env": _report.environment(), "rows": rows,
               "wall_time_s": time.perf_counter() - start}
    md = ("# Fault injection\n\n`python " + " ".join(sys.argv) + "`\n\n"
          + _report.markdown_table(rows, ["fault", "trials", "outcome", "lost", "silent",
                                          "where"])
          + "\n\nOutcomes: identical = resumed / completed bit for bit as the uninterrupted run; "
          "refused = the damaged file is refused and the intact prev loads; locked-out = the "
          "second writer stops naming the holder, nothing written. lost / silent are failures."
          "\n")
    paths = _report.write(args.name, payload, md)
    print(md)
    print(f"wrote {paths[0]} and {paths[1]}")
    if any(r["lost"] or r["silent"] for r in rows):
        raise SystemExit("faults: some trial lost state or loaded a wrong one silently")


if __name__ == "__main__":
    main()
