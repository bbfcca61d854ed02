"""Reflected vs unconstrained diffusion on the 8x8 digits at an equal training and sampling budget.

    python benchmarks/reflected_digits.py [--quick] [--steps 6000] [--n 2000] [--seeds 3]

Trains `experiment=digits_reflected` (reflected VE on the box [0, 1]^64, reflected DSM; also with
sigma_max = 2 box widths instead of 5) and `experiment=digits` (VP on [-1, 1], DSM) with the same
network, optimiser and number of steps (resumable runs under outputs/bench/, reused when
complete), then samples each with Euler–Maruyama at each step count
of --sample-steps: folded steps for the reflected model (no clipping; denoise "mean", NFE =
steps), the project's default for VP (Tweedie step, NFE = steps + 1). Reports the Fréchet
distance on raw pixels to the held-out digits, on the [-1, 1] pixel scale for both (reflected
samples are mapped by 2x - 1), the fraction of VP samples with a pixel outside the box (and of
pixels, and how far out), and the FD of the VP samples after clipping them to the box. Seeds
vary the sampling noise only (one trained model each). Reference: train vs
held-out digits. Writes results/reflected_digits[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._report import (  # noqa: E402
    RowProgress,
    environment,
    markdown_table,
    nfe_axes,
    sample_seed,
    write,
)
from benchmarks.learned_nfe import trained  # noqa: E402
from scorekit.metrics import frechet_distance  # noqa: E402
from scorekit.provenance import describe_segments  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# label -> (experiment, overrides). "reflected_smax2": sigma_max = 2 box widths instead of the
# official 5; the marginal at T is still uniform to 5e-9, and no step is spent above sigma ~ 2,
# where the score is already ~0.
MODELS = {"reflected": ("digits_reflected", []),
          "reflected_smax2": ("digits_reflected", ["sde.sigma_max=2.0"]),
          "vp": ("digits", [])}
RUN_NAMES = {"reflected": "digits_reflected", "reflected_smax2": "digits_reflected_smax2",
             "vp": "digits"}  # run dirs outputs/bench/<name>_<steps>
HALF_LEVEL = 1 / 16  # half of one of the 16 grey-level steps, on the [-1, 1] scale


def to_pm1(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """Pixels in value_range -> the [-1, 1] scale on which both models are compared."""
    lo, hi = value_range
    return (2 * (x - lo) / (hi - lo) - 1).flatten(1).double().cpu()


def evaluate(label: str, trainer, steps: int, n: int, seed: int, test: torch.Tensor) -> dict:
    """Sample n digits with EM at `steps` and score them against the held-out set."""
    t0 = time.perf_counter()
    denoise = "tweedie" if label == "vp" else "mean"
    res = trainer.sample(n, {"method": "em", "steps": steps, "denoise": denoise},
                         seed=sample_seed(seed))
    x = to_pm1(res.x.detach(), trainer.data.value_range)
    excess = (x.abs() - 1).clamp_min(0)  # distance outside the box
    row = {"model": label, "method": res.info["method"], "denoise": denoise, "steps": steps,
           "seed": seed, "nfe": res.nfe, "fd_test": float(frechet_distance(x, test)),
           "outside_samples": float((excess > 0).any(1).double().mean()),
           "outside_pixels": float((excess > 0).double().mean()),
           "outside_pixels_far": float((excess > HALF_LEVEL).double().mean()),
           "max_outside": float(excess.max()), "time_s": time.perf_counter() - t0}
    if label == "vp":
        row["fd_test_clipped"] = float(frechet_distance(x.clamp(-1, 1), test))
    return row


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["steps"]), []).append(r)
    out = []
    for (model, steps), rs in groups.items():
        keys = [k for k in ("nfe", "fd_test", "fd_test_clipped", "outside_samples",
                            "outside_pixels", "outside_pixels_far") if k in rs[0]]
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in keys}
        mean["max_outside"] = max(r["max_outside"] for r in rs)
        spread = max(r["fd_test"] for r in rs) - min(r["fd_test"] for r in rs)
        out.append({"model": model, "method": rs[0]["method"], "denoise": rs[0]["denoise"],
                    "steps": steps, "seeds": len(rs), **mean, "fd_test_seed_spread": spread})
    return out


def plot(summary: list[dict], floor: float, path: Path, title: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.2))
    ax = fig.subplots()
    for model, key, label in (("reflected", "fd_test", "reflected (folded EM)"),
                              ("reflected_smax2", "fd_test", "reflected, sigma_max = 2"),
                              ("vp", "fd_test", "VP (EM + Tweedie)"),
                              ("vp", "fd_test_clipped", "VP, clipped to the box")):
        pts = sorted((r["nfe"], r[key]) for r in summary if r["model"] == model)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=label)
    ax.axhline(floor, color="k", ls="--", lw=1, label="train vs held-out digits")
    nfe_axes(ax, "Fréchet distance, raw pixels in [-1, 1]", title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short training, one small grid point")
    ap.add_argument("--steps", type=int, default=6000, help="training steps of both models")
    ap.add_argument("--sample-steps", default="50,100,300",
                    help="EM step counts, comma-separated")
    ap.add_argument("--n", type=int, default=2000, help="samples per run")
    ap.add_argument("--seeds", type=int, default=3, help="sampling seeds per step count")
    args = ap.parse_args()
    steps = 200 if args.quick else args.steps
    grid = [20] if args.quick else [int(s) for s in args.sample_steps.split(",")]
    suffix = "_quick" if args.quick else ""
    trainers = {}
    for label, (experiment, overrides) in MODELS.items():
        run_dir = ROOT / "outputs" / "bench" / f"{RUN_NAMES[label]}_{steps}"
        t0 = time.perf_counter()
        trainers[label] = trained(experiment, run_dir, [f"trainer.steps={steps}",
                                                        "trainer.progress=false", *overrides])
        print(f"{label}: {trainers[label].step} steps ({time.perf_counter() - t0:.0f} s)",
              flush=True)
    data = trainers["vp"].data
    test = to_pm1(data.test, data.value_range)
    floor = float(frechet_distance(to_pm1(data.train, data.value_range), test))
    rows = []
    with RowProgress(len(grid) * args.seeds * len(trainers), "reflected_digits rows") as bar:
        for n_steps in grid:
            for seed in range(args.seeds):
                for label, trainer in trainers.items():
                    rows.append(evaluate(label, trainer, n_steps, args.n, seed, test))
                    r = rows[-1]
                    bar.row(f"{label:9s} steps={n_steps:4d} seed={seed} nfe={r['nfe']:5.0f} "
                            f"fd={r['fd_test']:.3f} outside={r['outside_samples']:.3f} "
                            f"({r['time_s']:.0f} s)")
    summary = summarise(rows)
    tr = {label: {"train_steps": t.step, "train_time_s": t.train_time,
                  "final_loss": t.loss_history[-1] if t.loss_history else None,
                  "sde": repr(t.sde), "segments": t.training_segments()}
          for label, t in trainers.items()}
    payload = {"rows": rows, "summary": summary, "fd_train_vs_test": floor, "training": tr,
               "n": args.n, "env": environment()}
    cfg = trainers["vp"].cfg.trainer
    md = (f"# Reflected vs VP diffusion, 8x8 digits ({steps} training steps each, batch "
          f"{cfg.batch_size}, MLP {trainers['vp'].cfg.model.hidden}x"
          f"{trainers['vp'].cfg.model.depth}; n={args.n})\n\nenv: {payload['env']}\n\n"
          "Fréchet distance on raw pixels to the held-out digits, both on the [-1, 1] pixel scale "
          f"(train vs held-out: {floor:.3f}). `outside_samples`: share of samples with a pixel "
          "outside the box before any clipping (`outside_pixels`: share of pixels; `_far`: "
          "pixels more than half a grey level, 1/16, outside; `max_outside`: the largest "
          "excursion); the reflected sampler folds every step, so these are 0 by construction. "
          "`fd_test_clipped`: the same VP samples clipped to the box. Mean over seeds; spread = "
          "max - min.\n\n"
          + markdown_table(sorted(summary, key=lambda r: (r["steps"], r["model"])),
                           ["model", "method", "denoise", "steps", "nfe", "seeds", "fd_test",
                            "fd_test_seed_spread", "fd_test_clipped", "outside_samples",
                            "outside_pixels", "outside_pixels_far", "max_outside"])
          + "\n\nTraining: "
          + "; ".join(f"{k}: {v['train_steps']} steps, {v['train_time_s']:.0f} s, final loss "
                      f"{v['final_loss']:.4g}, {describe_segments(v['segments'])}"
                      for k, v in tr.items()) + "\n")
    js, mdp = write(f"reflected_digits{suffix}", payload, md)
    png = js.with_suffix(".png")
    plot(summary, floor, png, f"digits: reflected vs VP ({steps} training steps)")
    print(f"wrote {js}, {mdp}, {png}")


if __name__ == "__main__":
    main()
