"""Fréchet distance vs counted NFE for every registered sampler on a trained image model.

    python scripts/benchmark.py suite=fd_nfe ckpt=<run dir or checkpoint> [features=auto]
        [n=500] [seeds=2] [methods=[em,heun,ode]] [max_nfe=200] [quick=true] [wandb=offline]

Loads the run (`Trainer.from_run_dir`), samples `n` images per setting with each sampler on its
NFE grid (ode and ggf on tolerance grids; "+tp" = started at t* by Gaussian teleportation;
"+opt" = on the grid `Trainer.optimize_grid` tunes to the run at 5, 8 and 10 NFE on 256 prior
draws and 120 evaluations, cached in `<run dir>/grids/`), and k-diffusion's samplers
("kd_<sampler>_<karras|exponential>", through `benchmarks/_peers.py`) on the same model from
the same prior draws, clips them to the data's range as saved images would be, and measures FD
against the held-out images in the chosen feature space: "classifier" (the project's digits
CNN; the default for 8x8 grey images), "inception" (FID; `weights=` or $SCOREKIT_INCEPTION; the
default for other images when the file is set), or "raw" pixels. The reference level is the
data's own FD: `n` training images vs the same held-out set. The equal-n check: the run's own
sampler at n = the held-out size, FD to the training images, next to the held-out images' FD to
them (both sides unseen by a feature network trained on the training split, as the digits
classifier is). Each finished row is cached in `<run dir>/fd_nfe/rows.json`, so a killed
benchmark resumes where it stopped. Under `torchrun --nproc_per_node=K scripts/benchmark.py
suite=fd_nfe ...` each rank samples a contiguous share of every setting's n samples (sample i
of repetition r from the per-sample seed `sample_seed(r) + i`, so the set does not depend on K,
and repetitions share no sample), the float64 feature statistics are merged over the ranks,
and rank 0 alone writes the row cache, the tables and the plot.
Writes <name>.{json,md,png} (name defaults to `fd_nfe_<run name>`) into the run's `fd_nfe/`
folder, or into benchmarks/results/ only with `committed=true` (or SCOREKIT_RESULTS_DIR);
`wandb=offline|online` also logs the rows, the table and the plot.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from benchmarks import _peers
from benchmarks import learned_nfe as ln
from benchmarks import nfe_quality as nq
from benchmarks._peers import KD_SAMPLERS, SIGMAS
from benchmarks._report import (
    COMMITTED,
    RESULTS,
    RowProgress,
    code_fingerprint,
    environment,
    markdown_table,
    sample_seed,
    setting_label,
    write,
)
from scorekit._validate import ConfigError
from scorekit.provenance import describe_segments
from scorekit.ranks import Ranks
from scorekit.rng import SampleStreams

DEFAULT_METHODS = ["em", "pc", "ode", "heun", "dpm_solver", "unipc", "ggf", "em+tp", "heun+tp",
                   "dpm_solver+tp", "dpm_solver+opt", "heun+opt",
                   *(f"kd_{name}_{kind}" for name in KD_SAMPLERS for kind in SIGMAS)]
NFE_GRID = [10, 20, 35, 50, 100, 200]
QUICK_GRID = [10, 35]
# The few-step methods (ours and the peers') also at 5, 8 and 15 NFE.
FAST_GRID = [5, 8, 10, 15, 20, 35, 50, 100]
FAST = ("dpm_solver", "unipc", "heun")
# Grids tuned to the run by Trainer.optimize_grid at these budgets ("<method>+opt"), cached in
# <run dir>/grids/. A UNet's tuning costs n x NFE x max_evals evaluations (~6 CPU min each at
# 10 NFE), hence fewer draws and evaluations than the library's defaults (512, 400).
OPT_NFE = [5, 8, 10]
OPT_N, OPT_EVALS = 256, 120
# quick=true exercises the same path at one budget on a small tuning set (it is CI's longest
# step otherwise: 3 budgets x 2 methods x 120 trial grids).
QUICK_OPT_NFE, QUICK_OPT_N, QUICK_OPT_EVALS = [5], 64, 30
EXTRA = {"dpm_solver+opt": ("dpm_solver", {}), "heun+opt": ("heun", {})}
QUICK_TOLS = {"ode": [{"rtol": 1e-2, "atol": 1e-2}],
              "ggf": [{"abs_tol": 2 / 256, "rel_tol": 0.1}]}
# Tolerance grids of the adaptive samplers, cut where their NFE passes ~500 on an image model.
TOLS = {"ode": [{"rtol": tol, "atol": tol} for tol in (1e-2, 1e-3, 1e-4)],
        "ggf": [{"abs_tol": 2 / 256, "rel_tol": r} for r in (0.1, 0.05, 0.02)]}
# Candidate -> baseline pairs compared at equal FD (teleportation against the same sampler).
PAIRS = [("ggf", "em"), ("em+tp", "em"), ("heun+tp", "heun"), ("dpm_solver+tp", "dpm_solver"),
         ("dpm_solver+opt", "dpm_solver"), ("heun+opt", "heun"),
         ("dpm_solver", "kd_dpmpp_2m_exponential"), ("dpm_solver", "kd_dpmpp_2m_karras"),
         ("heun", "kd_heun_karras")]


def feature_kind(features: str, sample_shape: tuple[int, ...], weights: str | None) -> str:
    """"auto" -> classifier for 8x8 grey images, inception when its weights are given, else raw."""
    if features != "auto":
        return features
    if tuple(sample_shape) == (1, 8, 8):
        return "classifier"
    if weights is not None or os.environ.get("SCOREKIT_INCEPTION"):
        return "inception"
    print("fd_nfe: no Inception weights (weights=... or $SCOREKIT_INCEPTION); using raw pixels")
    return "raw"


def grid(method: str, quick: bool, max_nfe: int, sde_name: str) -> list[dict]:
    """Sampler options per point: tolerances for ode/ggf, else steps matching each NFE (the
    few-step methods on `FAST_GRID`)."""
    if method in TOLS:
        return (QUICK_TOLS if quick else TOLS)[method]
    nfes = QUICK_GRID if quick else FAST_GRID if method in FAST else NFE_GRID
    nfes = [n for n in nfes if n <= max_nfe]
    points = [c for c in (nq.settings(method, n) for n in nfes) if c is not None]
    if sde_name == "edm" and method in ("em", "pc"):
        # Their default grid is uniform in t, i.e. in sigma for EDM: from sigma = 80 nearly every
        # step lands at high noise and the last one jumps from sigma ~ 80/steps to sigma_min.
        # Karras' rho = 7 grid is what an EDM user would pick (Heun's default for EDM).
        points = [{**p, "grid": "edm"} for p in points]
    return points


class _RowCache:
    """Finished rows keyed by everything that determines them; rewritten atomically per row."""

    def __init__(self, path: Path, identity: dict[str, Any]):
        from scorekit.io import write_text_atomic

        self.path, self.identity, self._write = path, identity, write_text_atomic
        self.rows: dict[str, dict] = {}
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("identity") == identity:
                self.rows = saved["rows"]

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def put(self, key: str, row: dict) -> None:
        """Every rank keeps the row (they computed it together); rank 0 writes the file."""
        self.rows[key] = row
        if Ranks.current().is_main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write(self.path, json.dumps({"identity": self.identity, "rows": self.rows}))


class _Scorer:
    """Samples of a section, clipped to the data range, scored by FD against the held-out and
    the training images' feature statistics."""

    def __init__(self, trainer, fe):
        self.trainer, self.fe = trainer, fe
        self.range = trainer.data.value_range or (-1.0, 1.0)
        self.test, self.train = fe.stats(trainer.data.test), fe.stats(trainer.data.train)

    def __call__(self, section: dict, n: int, seed: int) -> dict:
        """Repetition `seed` of the n samples: sample i from the per-sample seed
        `sample_seed(seed) + i`. Under torchrun each rank samples its contiguous share (the
        same streams as in one process) and the feature statistics are merged over ranks."""
        from scorekit.metrics import frechet_distance

        ranks = Ranks.current()
        lo_i, hi_i = ranks.chunk(n)
        t0 = time.perf_counter()
        tr = self.trainer
        if "peer" in section:
            # k-diffusion's sampler on the same model from the very prior draws ours start
            # from (sample i's stream, first draw): a paired comparison, free of the FD noise
            # of two different sets of n draws.
            streams = SampleStreams(sample_seed(seed) + lo_i, hi_i - lo_i, device=tr.device)
            x_t = tr.sde.prior_sample((hi_i - lo_i, *tr.data.sample_shape), device=tr.device,
                                      dtype=tr.dtype, generator=streams)
            tr.ema.eval()
            x, nfe = _peers.run_kd(*section["peer"], section["nfe"], tr.ema, tr.sde, x_t, seed)
            counts = torch.full((x.shape[0],), float(nfe), dtype=torch.float64)
        else:
            res = tr.sample(hi_i - lo_i, section, seed=sample_seed(seed) + lo_i)
            x, counts = res.x, res.nfe_per_sample.double().cpu()
        stats = self.fe.stats(x.detach().float().clamp(*self.range).cpu()).gathered(ranks)
        counts = torch.cat(ranks.gather(counts))
        wall = max(ranks.gather(time.perf_counter() - t0))
        return {"seed": seed, "nfe": float(counts.mean()), "nfe_min": int(counts.min()),
                "nfe_max": int(counts.max()), "fd_test": frechet_distance(stats, self.test),
                "fd_train": frechet_distance(stats, self.train), "time_s": wall}


def measure(trainer, methods: list[str], score: _Scorer, n: int, seeds: int, quick: bool,
            max_nfe: int, cache: _RowCache, logger=None) -> dict:
    """Rows of (method, setting, seed, nfe, fd_test, fd_train) plus the data's own level."""
    from scorekit.metrics import frechet_distance

    n_ref = min(n, trainer.data.train.shape[0])
    rows = []
    for seed in range(seeds):  # the floor: n training images vs the held-out ones
        gen = torch.Generator().manual_seed(seed)
        sub = trainer.data.train[torch.randperm(trainer.data.train.shape[0], generator=gen)[:n_ref]]
        rows.append({"method": "data: train vs held-out", "setting": f"n={n_ref}", "seed": seed,
                     "nfe": 0.0, "fd_test": frechet_distance(score.fe.stats(sub), score.test),
                     "fd_train": 0.0, "time_s": 0.0})
    t_star = None
    if any("+tp" in m for m in methods):
        probe = trainer.teleport_options(trainer.ema, {"teleport": True, "t_start": "auto",
                                                       "teleport_thresh": nq.TP_THRESH})
        t_star = probe["t_start"]
        print(f"teleport t* = {t_star:.4f} (EV >= {nq.TP_THRESH})", flush=True)
    # Every point first (tuned grids are tuned here, each with its own bar), then the rows.
    plan = [(label, opts, section) for label in methods
            for opts, section in _sections(trainer, label, quick, max_nfe, t_star)]
    main = Ranks.current().is_main
    with RowProgress(len(plan) * seeds, "fd_nfe rows", show=main) as bar:
        for label, opts, section in plan:
            setting = setting_label(opts)
            for seed in range(seeds):
                key = f"{label}|{setting}|{seed}"
                row = cache.get(key)
                if row is None:
                    row = {"method": label, "setting": setting, **score(section, n, seed)}
                    cache.put(key, row)
                rows.append(row)
                if main:
                    bar.row(f"{label:14s} {row['setting']:34s} seed={seed} "
                            f"nfe={row['nfe']:7.1f} fd_test={row['fd_test']:.4g} "
                            f"({row['time_s']:.1f} s)")
                if logger is not None:
                    logger.log({f"fd/{label}": row["fd_test"], f"nfe/{label}": row["nfe"]},
                               step=len(rows))
    return {"rows": rows, "t_star": t_star}


def _sections(trainer, label: str, quick: bool, max_nfe: int, t_star: float | None
              ) -> list[tuple[dict, dict]]:
    """(options shown in the table, what `_Scorer` runs) per point of `label`'s grid."""
    if label.startswith("kd_"):
        name, kind = label[3:].rsplit("_", 1)
        nfes = [n for n in (QUICK_GRID if quick else FAST_GRID) if n <= max_nfe]
        return [({"n": n}, {"peer": (name, kind), "nfe": n}) for n in nfes]
    if label.endswith("+opt"):
        method, fixed = EXTRA[label]
        out = []
        budgets, n_opt, evals = ((QUICK_OPT_NFE, QUICK_OPT_N, QUICK_OPT_EVALS) if quick
                                 else (OPT_NFE, OPT_N, OPT_EVALS))
        for nfe in (n for n in budgets if n <= max_nfe):
            path = trainer.run_dir / "grids" / f"{method}_nfe{nfe}.json"
            ranks = Ranks.current()
            if ranks.is_main and not path.is_file():  # tuned once per run and budget
                trainer.optimize_grid(nfe, {"method": method, **fixed}, n=n_opt,
                                      max_evals=evals, path=path)
            ranks.barrier()  # the other ranks read rank 0's grid
            out.append(({"nfe": nfe, "grid": "tuned"},
                        {"method": method, **fixed, "steps": None, "grid": str(path)}))
        return out
    method, fixed = nq.METHODS[label]
    out = []
    for opts in grid(method, quick, max_nfe, trainer.cfg.sde.name):
        section = {"method": method, **fixed, **opts}
        if fixed.get("teleport"):
            section["t_start"] = t_star
        out.append((opts, section))
    return out


def matched(trainer, score: _Scorer, seeds: int, cache: _RowCache) -> dict:
    """The run's own sampler section at n = the held-out size, FD against the training images,
    next to the held-out images' FD against them: the real-vs-real split at equal n, with both
    sides unseen by a feature network trained on the training split (the classifier is)."""
    from scorekit.metrics import frechet_distance

    n = trainer.data.test.shape[0]
    section = OmegaConf.to_container(trainer.cfg.sampler)
    rows = []
    for seed in range(seeds):
        row = cache.get(f"matched|{seed}")
        if row is None:
            row = score(section, n, seed)
            cache.put(f"matched|{seed}", row)
        rows.append(row)
    fds = [r["fd_train"] for r in rows]
    floor = frechet_distance(score.test, score.train)
    return {"sampler": section, "n": n, "nfe": rows[0]["nfe"], "fd_train": fds,
            "fd_train_mean": sum(fds) / len(fds), "data_fd_train": floor,
            "ratio": sum(fds) / len(fds) / floor}


def run(ckpt: str, features: str = "auto", weights: str | None = None, n: int = 500,
        seeds: int = 2, methods: list[str] | None = None, max_nfe: int = 200,
        quick: bool = False, name: str | None = None, wandb: str = "disabled",
        device: str = "cpu", out_dir: str | None = None, committed: bool = False) -> dict:
    """Benchmark the trained run at `ckpt`; returns the payload written to <name>.json in
    `out_dir`, by default the run's own `fd_nfe/` folder (`committed=true`: the committed
    tables in benchmarks/results/, as `suite=all` does through SCOREKIT_RESULTS_DIR)."""
    from scorekit.evaluation.features import FeatureExtractor
    from scorekit.train import Trainer
    from scorekit.training import distributed
    from scorekit.training.loggers import WandbLogger

    methods = list(methods or DEFAULT_METHODS)
    valid = {*nq.METHODS, *DEFAULT_METHODS}
    if unknown := sorted(set(methods) - valid):
        raise ConfigError(f"methods: unknown {unknown}; valid: {sorted(valid)}")
    if isinstance(kd := _peers.k_diffusion(), str):
        print(f"fd_nfe: k-diffusion {kd}: its samplers are left out")
        methods = [m for m in methods if not m.startswith("kd_")]
    path = Path(ckpt)
    run_dir = path if path.is_dir() else path.parent.parent
    trainer = Trainer.from_run_dir(run_dir, checkpoint=None if path.is_dir() else path,
                                   device=device)
    if len(trainer.data.sample_shape) != 3:
        raise ConfigError(f"fd_nfe needs an image model, {run_dir} has samples of shape "
                          f"{trainer.data.sample_shape}")
    kind = feature_kind(features, trainer.data.sample_shape, weights)
    fe = FeatureExtractor(kind, weights=weights if kind == "inception" else None)
    identity = {"checkpoint_step": trainer.step, "features": fe.info.get("sha256", kind),
                "n": n, "max_nfe": max_nfe, "quick": quick, "code": code_fingerprint()}
    cache = _RowCache(run_dir / "fd_nfe" / "rows.json", identity)
    name = name or f"fd_nfe_{trainer.cfg.name}{'_quick' if quick else ''}"
    main = trainer.dist.is_main  # under torchrun: every rank samples, rank 0 writes
    logger = WandbLogger(wandb if main else "disabled", "scorekit-benchmarks",
                         run_dir / "fd_nfe", name=name, config={"ckpt": str(ckpt), **identity})
    try:
        score = _Scorer(trainer, fe)
        payload = measure(trainer, methods, score, n, seeds, quick, max_nfe, cache, logger)
        payload["matched"] = matched(trainer, score, seeds, cache)
        info = dict(fe.info)
        if "weights" in info:  # the file's name and hash identify it; its location is local
            info["weights"] = Path(info["weights"]).name
        payload.update(run=str(run_dir.name), experiment=trainer.cfg.name,
                       train_steps=trainer.step, train_time_s=trainer.train_time,
                       training_segments=trainer.training_segments(), n=n,
                       seeds=seeds, features=info, env=environment())
        payload["summary"] = summary = ln.summarise(payload["rows"])
        payload["versus"] = ln.versus(summary, PAIRS)
        if main:
            js, md, png = report(payload, name, _destination(out_dir, committed, run_dir))
            logger.log_table("fd_vs_nfe", summary)
            logger.log_image("fd_vs_nfe_plot", png)
            print(f"wrote {js}, {md}, {png}")
    finally:
        logger.finish()
        distributed.shutdown()
    return payload


def _destination(out_dir: str | None, committed: bool, run_dir: Path) -> Path:
    """Where the tables go: `out_dir`, the committed results (asked for explicitly, or by
    SCOREKIT_RESULTS_DIR), else beside the run's row cache."""
    if out_dir:
        return Path(out_dir)
    if committed:
        return COMMITTED
    if os.environ.get("SCOREKIT_RESULTS_DIR"):
        return RESULTS
    return run_dir / "fd_nfe"


def report(payload: dict, name: str, out_dir: Path) -> tuple[Path, Path, Path]:
    """Markdown (table + equal-FD comparison), JSON and the FD-vs-NFE plot."""
    summary, kind = payload["summary"], payload["features"]["kind"]
    floor = next(r for r in summary if r["nfe"] == 0)
    best = min((r for r in summary if r["nfe"] > 0), key=lambda r: r["fd_test"])
    m = payload["matched"]
    sampler = ", ".join(f"{k}={v}" for k, v in m["sampler"].items() if v is not None)
    md = (f"# FD vs NFE: {payload['experiment']} ({payload['train_steps']} training steps, "
          f"{payload['train_time_s'] / 60:.1f} min of training)\n\nenv: {payload['env']}\n\n"
          f"Model {describe_segments(payload.get('training_segments', []))}.\n\n"
          f"Features: {payload['features']}.\n\n"
          "## Against the data's own FD (real vs real split, equal n)\n\n"
          f"The run's sampler ({sampler}; NFE {m['nfe']:.0f}), n={m['n']} samples per seed, FD "
          f"to the training images: {', '.join(f'{v:.4g}' for v in m['fd_train'])} (mean "
          f"{m['fd_train_mean']:.4g}). The {m['n']} held-out images' FD to the training images: "
          f"{m['data_fd_train']:.4g}. Ratio **{m['ratio']:.2f}x**.\n\n"
          "## All samplers\n\n"
          f"n={payload['n']} samples per setting, clipped to the data range; `fd_test`: FD to "
          f"the held-out images, mean over {payload['seeds']} seed(s), `fd_test_seed_spread` = "
          "max - min over seeds; `fd_train`: the same samples vs the training images. The row "
          f"`data: train vs held-out` ({floor['setting']} training images vs held-out, "
          f"{floor['fd_test']:.4g}) is the data's level in the fd_test column only when the "
          "feature network never saw the training images; the digits classifier was trained on "
          "them, which sets its features of those images apart from unseen ones, so generated "
          "images can score below it there (the equal-n check above has both sides unseen). "
          f"Lowest fd_test: {best['method']} {best['setting']} at NFE {best['nfe']:.0f}, "
          f"{best['fd_test']:.4g}.\n\n"
          + markdown_table(sorted(summary, key=lambda r: (r["method"], r["nfe"])),
                           ["method", "setting", "nfe", "nfe_range", "fd_test",
                            "fd_test_seed_spread", "fd_train"]) + "\n")
    if payload["versus"]:
        md += ("\n## At equal held-out FD: candidate vs baseline\n\n"
               + (f"Teleport start t* = {payload['t_star']:.4f}.\n\n" if payload["t_star"]
                  else "")
               + "`baseline_nfe_same_fd`: log-log interpolated on the baseline's grid (nan: no "
               "tested baseline setting gets there).\n\n"
               + markdown_table(payload["versus"], ["method", "baseline", "setting", "nfe",
                                                    "fd_test", "baseline_nfe_same_fd",
                                                    "nfe_ratio"]) + "\n")
    js, mdp = write(name, payload, md, out_dir)
    png = js.with_suffix(".png")
    ln.plot(summary, png, f"{payload['experiment']}: FD vs NFE", f"FD, {kind} features")
    return js, mdp, png
