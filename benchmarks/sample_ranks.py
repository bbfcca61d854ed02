"""Sampling throughput over torchrun ranks: K processes of one thread vs one process of one thread.

    python benchmarks/sample_ranks.py [--quick] [--ranks 1,2] [--n 20000] [--batch 1000]

Trains (once, resumable; training quality does not matter for throughput) the digits MLP of
`experiment=digits` for a few steps under `outputs/bench/sample_ranks_run`, then streams n
samples to disk with `torchrun --nproc_per_node=K scripts/sample.py run_dir=... out=...`
(sampler: EM, --steps steps) for each K, every process at OMP_NUM_THREADS=1, alternating the
world sizes for --reps rounds and keeping each one's fastest wall time (process start and model
load included). The samples of every K are compared bit for bit with K=1's (each shard is the
same batch whichever rank computes it). Writes results/sample_ranks.{json,md,png}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._report import RowProgress, environment, markdown_table, write  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def train(run_dir: Path, steps: int) -> None:
    if (run_dir / "checkpoints" / "last.safetensors").is_file():
        return
    subprocess.run([sys.executable, "scripts/train.py", "experiment=digits",
                    f"trainer.steps={steps}", "eval.n_samples=100", "eval.plot=false",
                    "trainer.progress=false", f"hydra.run.dir={run_dir}"],
                   cwd=ROOT, check=True, capture_output=True)


def stream(run_dir: Path, out: Path, k: int, n: int, batch: int, steps: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={k}", "scripts/sample.py", f"run_dir={run_dir}", f"n={n}",
           f"batch={batch}", f"out={out}", "sampler=em", f"sampler.steps={steps}",
           "progress=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="n=2000, 20 EM steps, one round")
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=100, help="EM steps per sample")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    import samplers

    n, steps, reps = (2000, 20, 1) if args.quick else (args.n, args.steps, args.reps)
    ranks = [int(k) for k in args.ranks.split(",")]
    work = ROOT / "outputs" / "bench" / "sample_ranks"
    run_dir = ROOT / "outputs" / "bench" / "sample_ranks_run"
    train(run_dir, 20)
    best: dict[int, float] = {}
    with RowProgress(reps * len(ranks), "sample_ranks streams", unit="stream") as bar:
        for _ in range(reps):
            for k in ranks:
                wall = stream(run_dir, work / f"k{k}", k, n, args.batch, steps)
                best[k] = min(best.get(k, float("inf")), wall)
                bar.row(f"{k} rank(s): {wall:.1f} s")
    ref = samplers.load_samples(work / f"k{ranks[0]}")
    rows = []
    for k in ranks:
        same = torch.equal(samplers.load_samples(work / f"k{k}"), ref)
        rows.append({"ranks": k, "threads_per_rank": 1, "wall_s": best[k],
                     "samples_per_s": n / best[k], "speedup_vs_first": best[ranks[0]] / best[k],
                     "identical_to_first": same})
    payload = {"n": n, "batch": args.batch, "em_steps": steps, "reps": reps, "rows": rows,
               "cpu_count": os.cpu_count(), "env": environment()}
    name = args.name or ("sample_ranks_quick" if args.quick else "sample_ranks")
    md = (f"# Sampling throughput over torchrun ranks (digits MLP, EM {steps} steps)\n\n"
          f"env: {payload['env']}\n\n{n} samples in shards of {args.batch} streamed to disk by "
          "`torchrun --nproc_per_node=K scripts/sample.py ... out=`, one thread per process, "
          f"fastest of {reps} alternating round(s), process start and model load included, on "
          f"{os.cpu_count()} CPU cores. `identical_to_first`: the samples equal K={ranks[0]}'s "
          "bit for bit.\n\n"
          + markdown_table(rows, ["ranks", "threads_per_rank", "wall_s", "samples_per_s",
                                  "speedup_vs_first", "identical_to_first"]) + "\n")
    js, mdp = write(name, payload, md)
    png = js.with_suffix(".png")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    ax.bar([str(r["ranks"]) for r in rows], [r["samples_per_s"] for r in rows], color="C0")
    ax.set(xlabel="ranks (1 thread each)", ylabel="samples / s",
           title=f"digits MLP, EM {steps} steps")
    for i, r in enumerate(rows):
        ax.annotate(f"{r['speedup_vs_first']:.2f}x", (i, r["samples_per_s"]), ha="center",
                    va="bottom")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"wrote {js}, {mdp}, {png}")


if __name__ == "__main__":
    main()
