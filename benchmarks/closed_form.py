"""Closed-form score scaling and quality: EmpiricalScore vs a naive cdist + softmax.

    python benchmarks/closed_form.py [--quick] [--device auto|cpu|cuda] [--max-n 1000000]

Scaling (benchmarks §4): wall time and peak extra memory of one score call vs the training-set
size N (query batch B, d, float32) for the naive implementation (materialises the B x N logits;
run only while its estimated peak fits --naive-max-gb) and for EmpiricalScore's fused SDPA
kernel (all keys in one call), its explicit key chunks with the log-sum-exp merge, and the
direct-distance kernel. Each point runs in a fresh process: peak RSS during the calls (VmHWM,
reset before them) minus RSS before them on CPU, torch's peak allocation on CUDA.

Quality (objectives §7): closed-form sampler on the digits (VP, 50 Euler steps + Tweedie) vs the
smoothing sigma_s as a multiple of the training set's median nearest-neighbour distance:
Fréchet distance on raw pixels to the held-out digits, memorisation rate (share of samples
closer to a training digit than 0.1x the median NN distance), and the median distance of the
samples to their nearest training digit next to that of the held-out digits (the level of a
genuinely new digit). Writes results/closed_form[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._report import (  # noqa: E402
    RESULTS,
    RowProgress,
    environment,
    markdown_table,
    write,
)

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("naive", "sdpa_fused", "sdpa_chunked", "direct")
CHUNK = 65536
LAM = 0.5  # noise level sigma/alpha of the timed calls (unit-variance data: the SDPA regime)

# One measurement in a fresh process; prints a JSON line. Peak memory excludes the data and
# EmpiricalScore's O(N) key cache (built by the one-row warm-up call), as the claim is about the
# per-call B x N term.
_PROBE = """
import json, resource, sys, time, torch
from scorekit.scores.empirical import EmpiricalScore
from scorekit.sde import VESDE
impl, n, b, d, lam, chunk, reps, device = sys.argv[1:9]
n, b, d, lam, chunk, reps = int(n), int(b), int(d), float(lam), int(chunk), int(reps)
dev = torch.device(device)
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()
def peak_rss_reset():
    try:  # clear_refs 5 resets this process's peak RSS (VmHWM), so the peak is the call's own
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
def peak_rss():
    with open("/proc/self/status") as fh:
        return next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmHWM"))
def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize()
gen = torch.Generator().manual_seed(0)
data = torch.randn(n, d, generator=gen).to(dev)
x = torch.randn(b, d, generator=gen).to(dev)
sde = VESDE(sigma_min=1e-3, sigma_max=10.0)
t = sde.t_of_noise_level(torch.full((b,), lam, dtype=torch.float64)).float().to(dev)
if impl == "naive":
    def call(x, t):
        w = torch.softmax(-torch.cdist(x, data).square() / (2 * lam**2), 1)
        return (w @ data - x) / lam**2
else:
    kernel = "direct" if impl == "direct" else "sdpa"
    score = EmpiricalScore(data, sde, kernel=kernel,
                           chunk_size=chunk if impl in ("sdpa_chunked", "direct") else None)
    call = score
with torch.no_grad():
    call(x[:1], t[:1]); sync()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss()
        peak_rss_reset()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter(); out = call(x, t); sync(); times.append(time.perf_counter() - t0)
peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
        else peak_rss())
times.sort()
print(json.dumps({"time_s": times[len(times) // 2], "extra_mb": (peak - before) / 2**20,
                  "finite": bool(torch.isfinite(out).all())}))
"""


def probe(impl: str, n: int, b: int, d: int, reps: int, device: str) -> dict:
    chunk = CHUNK if impl == "sdpa_chunked" else 4_000_000 // b
    out = subprocess.run([sys.executable, "-c", _PROBE, impl, str(n), str(b), str(d), str(LAM),
                          str(chunk), str(reps), device], capture_output=True, text=True,
                         cwd=ROOT, timeout=1800)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1][:200]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def scaling(sizes: list[int], b: int, d: int, device: str, naive_max_gb: float,
            direct_max_n: int, reps: int) -> list[dict]:
    rows = []
    with RowProgress(len(sizes) * len(IMPLS), "closed_form scaling") as bar:
        for n in sizes:
            for impl in IMPLS:
                # naive: cdist output, its square, softmax and its exp temporaries: ~4 B x N floats
                if impl == "naive" and 16 * b * n > naive_max_gb * 2**30:
                    rows.append({"impl": impl, "N": n, "B": b, "skipped": "does not fit"})
                    bar.row()
                    continue
                if impl == "direct" and n > direct_max_n:
                    rows.append({"impl": impl, "N": n, "B": b, "skipped": "slow (exact distances)"})
                    bar.row()
                    continue
                r = probe(impl, n, b, d, reps, device)
                rows.append({"impl": impl, "N": n, "B": b, "d": d, **r,
                             "naive_logits_mb": 4 * b * n / 2**20})
                bar.row(json.dumps(rows[-1]))
    return rows


def quality(factors: list[float], n_samples: int, steps: int, n_smooth: int) -> dict:
    import samplers
    from scorekit.data import make_dataset
    from scorekit.metrics import frechet_distance
    from scorekit.scores.empirical import EmpiricalScore
    from scorekit.sde import VPSDE

    data = make_dataset("digits", seed=0)
    train, test = data.train.flatten(1).float(), data.test.flatten(1).float()
    nn_train = torch.cdist(train, train).fill_diagonal_(math.inf).min(1).values
    med = float(nn_train.median())
    test_nn = float(torch.cdist(test, train).min(1).values.median())
    floor = frechet_distance(train[: len(test)].double(), test.double())
    sde = VPSDE()
    rows = []
    with RowProgress(len(factors), "closed_form quality") as bar:
        for f in factors:
            score = EmpiricalScore(data.train, sde, smoothing=f * med, n_smooth=n_smooth)
            res = samplers.sample(score, sde, (n_samples, *data.sample_shape), method="closed_form",
                                  steps=steps, generator=torch.Generator().manual_seed(1))
            x = res.x.flatten(1)
            nn = torch.cdist(x, train).min(1).values
            rows.append({"smoothing_x_median_nn": f, "smoothing": f * med,
                         "fd_test": frechet_distance(x.double(), test.double()),
                         "memorised_frac": float((nn < 0.1 * med).double().mean()),
                         "median_nn_to_train": float(nn.median()), "nfe": res.nfe,
                         "time_s": res.info["wall_time"]})
            bar.row(json.dumps(rows[-1]))
    return {"rows": rows, "median_nn_train": med, "held_out_median_nn_to_train": test_nn,
            "fd_floor_train_vs_test": floor, "n_samples": n_samples, "steps": steps,
            "n_smooth": n_smooth, "n_train": len(train), "n_test": len(test)}


def plot(scale_rows: list[dict], qual: dict, path: Path, device: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15, 4.2))
    ax_t, ax_m, ax_q = fig.subplots(1, 3)
    for impl in IMPLS:
        pts = sorted((r["N"], r["time_s"], r["extra_mb"]) for r in scale_rows
                     if r["impl"] == impl and "time_s" in r)
        if pts:
            n, tm, mb = zip(*pts, strict=True)
            ax_t.plot(n, tm, marker="o", label=impl)
            ax_m.plot(n, [max(m, 0.1) for m in mb], marker="o", label=impl)
    ns = sorted({r["N"] for r in scale_rows})
    b = scale_rows[0]["B"]
    ax_m.plot(ns, [4 * b * n / 2**20 for n in ns], "k--", lw=1, label="B x N fp32 logits")
    ax_t.set(xscale="log", yscale="log", xlabel="training points N", ylabel="seconds per call",
             title=f"score call, B={b}, {device}")
    ax_m.set(xscale="log", yscale="log", xlabel="training points N",
             ylabel="peak extra memory (MiB)", title="memory per call")
    rows = qual["rows"]
    f = [r["smoothing_x_median_nn"] for r in rows]
    ax_q.plot(f, [r["fd_test"] for r in rows], marker="o", label="FD to held-out (raw px)")
    ax_q.axhline(qual["fd_floor_train_vs_test"], color="k", ls="--", lw=1,
                 label="FD train vs held-out")
    ax2 = ax_q.twinx()
    ax2.plot(f, [r["memorised_frac"] for r in rows], marker="s", color="C3",
             label="memorised fraction")
    ax2.set(ylabel="memorised fraction", ylim=(-0.05, 1.05))
    ax_q.set(xlabel="smoothing / median NN distance", ylabel="Fréchet distance",
             title="digits: quality vs smoothing")
    for ax in (ax_t, ax_m, ax_q):
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    ax_m.legend(fontsize=8)
    ax_q.legend(fontsize=8, loc="upper center")
    ax2.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N up to 1e4, few samples")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    ap.add_argument("--max-n", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--naive-max-gb", type=float, default=4.0)
    ap.add_argument("--direct-max-n", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results/")
    ap.add_argument("--name", default=None)
    args = ap.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    max_n = min(10_000, args.max_n) if args.quick else args.max_n
    sizes = [n for n in (1_000, 10_000, 100_000, 1_000_000) if n <= max_n]
    scale_rows = scaling(sizes, args.batch, args.dim, device, args.naive_max_gb,
                         args.direct_max_n, 1 if args.quick else args.reps)
    qual = quality([0.0, 0.1, 0.15, 0.2, 0.25, 0.5, 1.0] if not args.quick else [0.0, 0.5],
                   100 if args.quick else 500, 10 if args.quick else 50, 16)
    ratio = []
    for n in sizes:
        by = {r["impl"]: r for r in scale_rows if r["N"] == n and "time_s" in r}
        if "naive" in by and "sdpa_fused" in by:
            ratio.append({"N": n, "naive_over_fused_time": by["naive"]["time_s"]
                          / by["sdpa_fused"]["time_s"],
                          "naive_over_fused_memory": by["naive"]["extra_mb"]
                          / max(by["sdpa_fused"]["extra_mb"], 1e-3)})
    payload = {"scaling": scale_rows, "ratios": ratio, "quality": qual, "device": device,
               "lam": LAM, "chunk": CHUNK, "env": environment()}
    name = args.name or ("closed_form_quick" if args.quick else "closed_form")
    md = (f"# Closed-form score: scaling and quality\n\nenv: {payload['env']}\n\n"
          f"## Time and peak extra memory per score call (B={args.batch}, d={args.dim}, "
          f"float32, {device}, noise level {LAM})\n\n"
          "`extra_mb`: peak RSS during the call (VmHWM reset before it) minus RSS before it "
          "(fresh process; data and the O(N) key cache excluded). `naive_logits_mb`: the B x N "
          "fp32 logit block alone.\n\n"
          + markdown_table(scale_rows, ["impl", "N", "time_s", "extra_mb", "naive_logits_mb",
                                        "skipped"])
          + "\n\n" + markdown_table(ratio, ["N", "naive_over_fused_time",
                                           "naive_over_fused_memory"])
          + f"\n\n## Digits: closed-form sampler vs smoothing (n={qual['n_samples']}, "
          f"{qual['steps']} Euler steps + Tweedie, M={qual['n_smooth']} smoothing draws)\n\n"
          f"median NN distance in the training set: {qual['median_nn_train']:.4g}; held-out "
          f"digits' median distance to their nearest training digit: "
          f"{qual['held_out_median_nn_to_train']:.4g}; FD train vs held-out (floor): "
          f"{qual['fd_floor_train_vs_test']:.4g}. Memorised: nearest training digit closer than "
          "0.1x the median NN distance.\n\n"
          + markdown_table(qual["rows"], ["smoothing_x_median_nn", "smoothing", "fd_test",
                                          "memorised_frac", "median_nn_to_train", "nfe",
                                          "time_s"]) + "\n")
    js, mdp = write(name, payload, md, Path(args.out_dir) if args.out_dir else RESULTS)
    png = js.with_suffix(".png")
    plot(scale_rows, qual, png, device)
    print(f"wrote {js}, {mdp}, {png}")


if __name__ == "__main__":
    main()
