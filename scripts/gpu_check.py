"""Check every GPU path in one command (run through `scripts/gpu_check.sh`).

    python scripts/gpu_check.py OUT_DIR [--dry-run] [--budget-min 8]

Parts, each in its own process with a time limit, its log in OUT_DIR/<part>.log:
  gpu_tests    the `gpu`-marked tests (fused kernels vs PyTorch, CUDA graphs, compile, bf16)
  hot_loop     benchmarks/hot_loop.py on the reduced CUDA grid (the issue's targets: MLP at
               batch >= 4096 against the fastest peer, the UNet's overhead)
  closed_form  benchmarks/closed_form.py, the closed-form score's speed table on CUDA
  digits_edm   a short experiment=digits_edm training on CUDA, then one fd_nfe row
OUT_DIR/summary.{md,json}: pass / fail / timeout per part with its time, the device, torch and
triton versions. --dry-run runs the same plan on the CPU with tiny sizes (CI runs it). Exit 0
only when every part passed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def plan(out: Path, dry: bool) -> list[tuple[str, float, list[list[str]]]]:
    """(part, share of the time budget, commands) in order."""
    dev = "cpu" if dry else "cuda"
    run_dir = out / "run_digits_edm"
    steps = 20 if dry else 600
    train = [PY, "scripts/train.py", "experiment=digits_edm", f"device={dev}",
             f"trainer.steps={steps}", "trainer.ckpt_every=100000", "trainer.progress=false",
             "eval.n_samples=64", "eval.plot=false", f"hydra.run.dir={run_dir}",
             "trainer.resume=true"]  # a rerun into the same folder continues, not retrains
    if dry:
        train += ["model.channels=[16,32]", "model.attention_head_dim=16",
                  "trainer.batch_size=16"]
    fd = [PY, "scripts/benchmark.py", "suite=fd_nfe", f"ckpt={run_dir}", f"device={dev}",
          "quick=true", "seeds=1", f"n={64 if dry else 500}", "methods=[heun]",
          f"max_nfe={10 if dry else 35}", f"out_dir={out}", f"name=fd_nfe_{dev}"]
    return [
        ("gpu_tests", 0.30, [[PY, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                              "tests/"]]),
        ("hot_loop", 0.30, [[PY, "benchmarks/hot_loop.py", "--device", dev, "--grid",
                             "dry" if dry else "gpu_check", "--reps", "1" if dry else "3",
                             "--out-dir", str(out), "--name", f"hot_loop_{dev}"]]),
        ("closed_form", 0.15, [[PY, "benchmarks/closed_form.py", "--device", dev, "--quick",
                                "--max-n", "1000" if dry else "1000000", "--reps", "1",
                                "--out-dir", str(out), "--name", f"closed_form_{dev}"]]),
        ("digits_edm", 0.25, [train, fd]),
    ]


def environment(dry: bool) -> dict:
    import torch

    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "dry_run": dry,
           "device": (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")}
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def run_part(name: str, commands: list[list[str]], limit: float, out: Path) -> dict:
    start, status = time.perf_counter(), "pass"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]), "PYTHONUNBUFFERED": "1"}
    with open(out / f"{name}.log", "w") as log:
        for cmd in commands:
            left = limit - (time.perf_counter() - start)
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            try:
                proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log,
                                      stderr=subprocess.STDOUT, timeout=max(left, 1.0))
            except subprocess.TimeoutExpired:
                status = "timeout"
                break
            if proc.returncode != 0:
                status = f"fail (exit {proc.returncode})"
                break
    return {"part": name, "status": status, "seconds": round(time.perf_counter() - start, 1),
            "log": f"{name}.log"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="the same plan on the CPU, tiny")
    ap.add_argument("--budget-min", type=float, default=8.0, help="wall time for all parts")
    args = ap.parse_args(argv)
    out = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = environment(args.dry_run)
    if not args.dry_run and env["device"] == "cpu":
        print("gpu_check: no CUDA device (use --dry-run to rehearse on the CPU)",
              file=sys.stderr)
        return 2
    rows = []
    for name, share, commands in plan(out, args.dry_run):
        rows.append(run_part(name, commands, share * args.budget_min * 60, out))
        print(f"{name}: {rows[-1]['status']} in {rows[-1]['seconds']} s", flush=True)
    ok = all(r["status"] == "pass" for r in rows)
    (out / "summary.json").write_text(json.dumps({"env": env, "parts": rows, "ok": ok},
                                                 indent=2))
    lines = [f"# GPU check{' (dry run, CPU)' if args.dry_run else ''}: "
             f"{'all parts passed' if ok else 'FAILED'}", "",
             f"device: {env['device']}; torch {env['torch']} (CUDA {env['cuda']}); "
             f"triton {env['triton']}", "", "| part | status | seconds | log |",
             "|---|---|---|---|"]
    lines += [f"| {r['part']} | {r['status']} | {r['seconds']} | {r['log']} |" for r in rows]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'summary.md'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
