"""Quality vs counted NFE with a *learned* score: a trained digits model (8x8, 64-d).

    python benchmarks/learned_nfe.py [--quick] [--run-dir outputs/bench/digits] [--seeds 2]

Trains `experiment=digits` into --run-dir the first time (resuming if a previous training was
interrupted; later calls reuse the checkpoint), then samples with each method on its NFE or
tolerance grid. Error: Fréchet distance on raw pixels (64-d) between the samples and the held-out
digits, and the same against the training digits. Reference levels, printed with the table:
train vs held-out digits (the data's own floor at these sample sizes) and the spread between
two seeds of the same sampler. Writes results/learned_nfe_<experiment>[_quick].{json,md,png}.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import nfe_quality as nq  # noqa: E402
from benchmarks._report import (  # noqa: E402
    RowProgress,
    environment,
    markdown_table,
    nfe_at,
    nfe_axes,
    sample_seed,
    setting_label,
    write,
)
from scorekit.metrics import frechet_distance  # noqa: E402
from scorekit.provenance import describe_segments  # noqa: E402
from scorekit.train import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NFE_GRID = [10, 20, 35, 50, 100, 200, 500, 1000]
QUICK_NFE = [20, 100]
QUICK_RTOLS = [0.1]
# The exact-score benchmark's samplers ("+tp": started at t* by Gaussian teleportation).
METHODS = {k: nq.METHODS[k] for k in ("em", "ggf", "ggf_fresh", "heun_edm", "dpm_solver",
                                      "em+tp", "heun_edm+tp", "dpm_solver+tp")}
TP_THRESH = nq.TP_THRESH


def trained(experiment: str, run_dir: Path, overrides: list[str]) -> Trainer:
    """The trained run in run_dir: reused when complete, resumed when interrupted, else trained."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", [f"experiment={experiment}", "trainer.resume=true",
                                 "logger=disabled", *overrides])
    trainer = Trainer(cfg, run_dir=run_dir)
    trainer.fit()  # checkpoints every trainer.ckpt_every steps and at the end
    return trainer


def configs(method: str, quick: bool) -> list[dict]:
    """Options per point: a tolerance grid for ggf, else the step count matching each NFE."""
    if method == "ggf":
        # Digits live in [-1, 1]: one quantisation level is 2/256 (the official VP abs_tol).
        rtols = QUICK_RTOLS if quick else nq.GGF_RTOLS
        return [{"abs_tol": 2 / 256, "rel_tol": r} for r in rtols]
    grid = QUICK_NFE if quick else NFE_GRID
    return [c for c in (nq.settings(method, nfe) for nfe in grid) if c is not None]


def run(trainer: Trainer, methods: list[str], n: int, seeds: int, quick: bool) -> dict:
    test = trainer.data.test.flatten(1).double()
    train = trainer.data.train.flatten(1).double()
    fd = lambda x, ref: float(frechet_distance(x, ref))  # noqa: E731
    rows = [{"method": "data: train vs held-out", "setting": "", "seed": 0, "nfe": 0.0,
             "fd_test": fd(train, test), "fd_train": 0.0, "time_s": 0.0}]
    t_star = None
    if any(METHODS[m][1].get("teleport") for m in methods):
        # The trainer fits (and caches) the Gaussian and picks t* from the EMA model's score.
        probe = trainer.teleport_options(trainer.ema, {"teleport": True, "t_start": "auto",
                                                       "teleport_thresh": TP_THRESH})
        t_star = probe["t_start"]
        print(f"teleport t* = {t_star:.4f} (EV >= {TP_THRESH})", flush=True)
    plan = [(label, opts) for label in methods for opts in configs(METHODS[label][0], quick)]
    with RowProgress(len(plan) * seeds, "learned_nfe rows") as bar:
        for label, opts in plan:
            method, fixed = METHODS[label]
            section = {"method": method, **fixed, **opts}
            if fixed.get("teleport"):
                section["t_start"] = t_star
            setting = setting_label(opts)
            for seed in range(seeds):
                t0 = time.perf_counter()
                res = trainer.sample(n, section, seed=sample_seed(seed))
                x = res.x.detach().flatten(1).double().cpu()
                rows.append({"method": label, "setting": setting, "seed": seed, "nfe": res.nfe,
                             "nfe_min": int(res.nfe_per_sample.min()),
                             "nfe_max": int(res.nfe_per_sample.max()),
                             "fd_test": fd(x, test), "fd_train": fd(x, train),
                             "time_s": time.perf_counter() - t0})
                r = rows[-1]
                bar.row(f"{label:13s} {setting:40s} seed={seed} nfe={r['nfe']:7.1f} "
                        f"fd_test={r['fd_test']:.3f} fd_train={r['fd_train']:.3f}")
    return {"rows": rows, "t_star": t_star}


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["setting"]), []).append(r)
    out = []
    for (method, setting), rs in groups.items():
        mean = {k: sum(r[k] for r in rs) / len(rs) for k in ("nfe", "fd_test", "fd_train")}
        spread = max(r["fd_test"] for r in rs) - min(r["fd_test"] for r in rs)
        out.append({"method": method, "setting": setting, **mean, "fd_test_seed_spread": spread,
                    "nfe_range": f"{min(r.get('nfe_min', 0) for r in rs)}-"
                                 f"{max(r.get('nfe_max', 0) for r in rs)}"})
    return out


PAIRS = [("ggf", "em"), ("ggf_fresh", "em"), ("em+tp", "em"), ("heun_edm+tp", "heun_edm"),
         ("dpm_solver+tp", "dpm_solver")]


def versus(summary: list[dict], pairs: list[tuple[str, str]] = PAIRS) -> list[dict]:
    """Per candidate setting: the NFE its baseline needs for the same held-out FD (log-log
    interpolated on the baseline's grid) and the ratio."""
    out = []
    for cand, ref in pairs:
        base = [r for r in summary if r["method"] == ref]
        if not base:
            continue
        for r in sorted((r for r in summary if r["method"] == cand), key=lambda r: r["nfe"]):
            n_base = nfe_at(base, r["fd_test"], "fd_test")
            out.append({"method": cand, "baseline": ref, "setting": r["setting"],
                        "nfe": r["nfe"], "fd_test": r["fd_test"],
                        "baseline_nfe_same_fd": n_base if n_base is not None else float("nan"),
                        "nfe_ratio": n_base / r["nfe"] if n_base is not None else float("nan")})
    return out


def plot(summary: list[dict], path: Path, title: str, ylabel: str = "Fréchet distance, raw pixels"
         ) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    for ax, metric in zip(fig.subplots(1, 2), ("fd_test", "fd_train"), strict=True):
        for method in sorted({r["method"] for r in summary if r["nfe"] > 0}):
            pts = sorted((r["nfe"], r[metric]) for r in summary if r["method"] == method)
            ax.plot(*zip(*pts, strict=True), marker="o", label=method)
        floor = [r for r in summary if r["nfe"] == 0]
        if floor and metric == "fd_test":
            ax.axhline(floor[0]["fd_test"], color="k", ls="--", lw=1,
                       label="train vs held-out data")
        nfe_axes(ax, f"{ylabel} ({metric[3:]})", title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny grids and a short training")
    ap.add_argument("--experiment", default="digits")
    ap.add_argument("--run-dir", default=None,
                    help="trained run to reuse/resume (default outputs/bench/<experiment>)")
    ap.add_argument("--n", type=int, default=2000, help="samples per run")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS),
                    help=f"comma-separated subset of {', '.join(METHODS)}")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for training, key=value")
    args = ap.parse_args()
    methods = args.methods.split(",")
    if unknown := sorted(set(methods) - set(METHODS)):
        ap.error(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
    suffix = "_quick" if args.quick else ""
    run_dir = Path(args.run_dir or ROOT / "outputs" / "bench" / f"{args.experiment}{suffix}")
    overrides = list(args.overrides) + (["trainer.steps=300"] if args.quick else [])
    trainer = trained(args.experiment, run_dir, overrides)
    payload = run(trainer, methods, args.n, args.seeds, args.quick)
    payload.update({"experiment": args.experiment, "train_steps": trainer.step, "n": args.n,
                    "seeds": args.seeds, "env": environment(),
                    "training_segments": trainer.training_segments()})
    payload["summary"] = summary = summarise(payload["rows"])
    name = f"learned_nfe_{args.experiment}{suffix}"
    md = (f"# Quality vs counted NFE, learned score ({args.experiment}, {trainer.step} training "
          f"steps, n={args.n}, seeds={args.seeds})\n\nenv: {payload['env']}\n\n"
          f"Model {describe_segments(payload['training_segments'])}.\n\n"
          "Fréchet distance on raw pixels; mean over seeds, `fd_test_seed_spread` = max - min "
          "over seeds.\n\n"
          + markdown_table(sorted(summary, key=lambda r: (r["method"], r["nfe"])),
                           ["method", "setting", "nfe", "nfe_range", "fd_test",
                            "fd_test_seed_spread", "fd_train"]) + "\n")
    payload["versus"] = table = versus(summary)
    if table:
        md += ("\n## At equal held-out FD: candidate vs baseline\n\n"
               + (f"Teleport start t* = {payload['t_star']:.4f} (EV >= {TP_THRESH}, EMA model "
                  "on noised training digits).\n\n" if payload.get("t_star") else "")
               + "`baseline_nfe_same_fd`: log-log interpolated on the baseline's NFE grid (nan: "
               "no tested baseline setting gets there). Differences below the seed spread are "
               "noise.\n\n"
               + markdown_table(table, ["method", "baseline", "setting", "nfe", "fd_test",
                                        "baseline_nfe_same_fd", "nfe_ratio"]) + "\n")
    js, mdp = write(name, payload, md)
    png = js.with_suffix(".png")
    plot(summary, png, f"{args.experiment}: FD vs NFE")
    print(f"wrote {js}, {mdp}, {png}")


if __name__ == "__main__":
    main()
