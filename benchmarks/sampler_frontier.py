"""The sampler frontier: error vs NFE of every scorekit method and the peers' own samplers, side
by side on the same exact scores, in one process.

    python benchmarks/sampler_frontier.py [--quick] [--targets gauss16,gauss256,gmm64,ring2]
        [--sdes vp,ve,edm] [--seeds 3] [--out-dir DIR] [--jobs N]
    python scripts/benchmark.py suite=frontier [quick=true] ...

Targets (closed-form scores, float64): `gauss16` N(m, Q diag(lam) Q^T) with 16 eigenvalues
log-uniform in [0.01, 1] (n = 20000); `gauss256` the same in 256-D with eigenvalues in [1e-3, 1]
(n = 8000); `gmm64` 4 anisotropic modes in 64-D and `ring2` 8 modes on a 2-D ring (n = 20000).
Error: Gaussians, the mean over eigendirections of |sample variance / lam - 1| plus the mean's
error |u^T (mean - m)| / sqrt(lam) (its noise floor at n is printed); mixtures, |nll_gap|, the
cross-entropy of the samples under the data minus the data's entropy, in nats per dimension.
NFE grid {5, 8, 10, 15, 20, 35, 50, 100}; adaptive solvers on tolerance grids at their counted
NFE. Every method starts from the same prior draws per seed; NFE is counted per call.
Ours: every registered method that samples a linear process, with variants of grid and order
(`RUNS`), deterministic ones also started by Gaussian teleportation ("+tp", t* from the
explained-variance rule) and on grids tuned by `samplers.optimize_grid` at 5-20 NFE ("+opt",
tuned on prior draws of their own). Peers: k-diffusion's samplers on Karras and exponential
(log-uniform) sigmas (`benchmarks/_peers.py`), and diffusers' schedulers through the adapters.
The Gaussians are sampled in their eigenbasis by the fixed-step solvers (the same law, O(n d)
per call: `DiagonalGaussianScore`). Output: results/<name>.{json,md,png}: a table per target and
process, the frontier (best of ours vs best peer per NFE, with standard errors over seeds), the
tuned grids' gain over the best fixed grid and a Pareto plot. Resumable per (target, process,
seed) block (`<name>.partial.json`) while the measured code is unchanged; the table lists the
commits its blocks ran at. `--jobs N` measures N (target, process) pairs at once, each in a
spawned process with cores / N threads; the rows and their order are those of one process.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from queue import Empty

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import samplers  # noqa: E402
from benchmarks import _peers  # noqa: E402
from benchmarks import nfe_quality as nq  # noqa: E402
from benchmarks._frontier_tables import (  # noqa: E402
    adaptive_vs_em,
    frontier,
    grid_gain,
    plot,
    report,
    summarise,
)
from benchmarks._report import (  # noqa: E402
    RESULTS,
    RowProgress,
    code_fingerprint,
    environment,
    write,
)
from scorekit import io  # noqa: E402
from scorekit._validate import ConfigError, check_positive_int  # noqa: E402
from scorekit.data.synthetic import gmm_params  # noqa: E402
from scorekit.processes import Process  # noqa: E402
from scorekit.scores import GaussianScore, GMMScore  # noqa: E402
from scorekit.sde import EDMSDE, VESDE, VPSDE  # noqa: E402

F64 = torch.float64
NFE_GRID = [5, 8, 10, 15, 20, 35, 50, 100]
QUICK_NFE = [10, 20]
ODE_TOLS = [1e-2, 1e-3, 1e-4]
GGF_RTOLS = [0.1, 0.05, 0.02]
KD_RTOLS = [0.1, 0.05, 0.02]
# EM beyond the grid on the Gaussian targets (cheap in their diagonal frame), so the adaptive
# solvers' counted NFE can be set against the NFE EM needs for the same error (`adaptive_vs_em`).
EM_LONG = [200, 400, 800]
EM_LONG_TARGETS = ("gauss16", "gauss256")
# A (process, target, seed)'s blocks, in table order: "" the methods on fixed grids and the
# peers, "opt" the tuned grids, "em_long" EM beyond the grid.
PARTS = ("", "opt", "em_long")
SDES = {"vp": VPSDE, "ve": VESDE, "edm": EDMSDE}
# The 64-D mixture's exact score and the 256-D Gaussian's rotated frame (where the adaptive
# solvers run) cost O(n d^2) per call or more: 4000 draws keep a block near 5 CPU minutes. The
# error's sampling noise there: ~1/sqrt(2 d n) = 0.0014 nats/dim (mixture), 0.03 (Gaussian).
TARGET_N = {"gauss16": 20000, "ring2": 20000, "gauss256": 4000, "gmm64": 4000}
# The 256-D Gaussian's adaptive solvers (rotated frame) take ~7 CPU minutes per seed: two seeds.
MAX_SEEDS = {"gauss256": 2}

# Registered methods run here: label -> (method, fixed options, how steps follow from the NFE
# budget, family). Steps: "points" steps = NFE (multistep solvers; the last evaluation is the
# final denoise); "tweedie" steps = NFE - 1 (+ the final Tweedie); "heun" 2 steps - 1; "pc"
# 2 per step + 1; "adaptive" a tolerance grid. "fkc" samples p^beta, another target: not here.
# diffusers' schedulers (through the adapters, on a logSNR table) are peers.
RUNS = {
    "dpm_solver": ("dpm_solver", {}, "points", "ours"),
    "dpm_solver_2m": ("dpm_solver", {"order": 2}, "points", "ours"),
    "dpm_solver_3m": ("dpm_solver", {"order": 3}, "points", "ours"),
    "dpm_solver_edm": ("dpm_solver", {"grid": "edm"}, "points", "ours"),
    "unipc": ("unipc", {}, "points", "ours"),
    "unipc_2c": ("unipc", {"order": 2, "corrector": True}, "points", "ours"),
    "unipc_3c": ("unipc", {"order": 3, "corrector": True}, "points", "ours"),
    "dpm_solver_sde": ("dpm_solver_sde", {}, "points", "ours"),
    "heun_uniform": ("heun", {"grid": "uniform"}, "heun", "ours"),
    "heun_quadratic": ("heun", {"grid": "quadratic"}, "heun", "ours"),
    "heun_logsnr": ("heun", {"grid": "logsnr"}, "heun", "ours"),
    "heun_edm": ("heun", {"grid": "edm"}, "heun", "ours"),
    "em": ("em", {}, "tweedie", "ours"),
    "em_logsnr": ("em", {"grid": "logsnr"}, "tweedie", "ours"),
    "em_quadratic": ("em", {"grid": "quadratic"}, "tweedie", "ours"),
    "pc": ("pc", {}, "pc", "ours"),
    "closed_form": ("closed_form", {}, "tweedie", "ours"),
    "ode": ("ode", {}, "adaptive", "ours"),
    "ggf": ("ggf", {}, "adaptive", "ours"),
    "diffusers_dpm++2m": ("dpm_solver_diffusers", {}, "points", "peer"),
    "diffusers_unipc": ("unipc_diffusers", {}, "points", "peer"),
    "diffusers_euler": ("euler_diffusers", {}, "points", "peer"),
}
TELEPORTED = ("dpm_solver", "unipc", "heun_logsnr", "em_logsnr")
for _label in TELEPORTED:
    RUNS[f"{_label}+tp"] = (*RUNS[_label][:3], "ours")
# Grids tuned by samplers.optimize_grid at these budgets ("+opt"), against the best fixed grid.
OPT_NFE = (5, 8, 10, 15, 20)
FIXED_GRIDS = {"dpm_solver": ("dpm_solver", "dpm_solver_edm"), "unipc": ("unipc",),
               "heun": ("heun_uniform", "heun_quadratic", "heun_logsnr", "heun_edm")}
for _label, _kind in (("dpm_solver", "points"), ("unipc", "points"), ("heun", "heun")):
    RUNS[f"{_label}+opt"] = (_label, {}, _kind, "ours")
QUICK_RUNS = ("dpm_solver", "unipc", "heun_edm", "dpm_solver+opt")
# The 64-D mixture's score costs O(n K d^2) per call (no diagonal frame): there the variants of
# grid and order that the other targets rank are left out, each method runs in its defaults.
SKIP = {"gmm64": ("dpm_solver_2m", "unipc_2c", "unipc_3c", "heun_uniform", "heun_quadratic",
                  "heun_logsnr", "em_logsnr", "em_quadratic", "heun_logsnr+tp", "em_logsnr+tp",
                  "unipc+opt", "heun+opt")}


def steps_for(kind: str, nfe: int) -> int | None:
    return {"points": nfe if nfe >= 2 else None, "tweedie": nfe - 1 if nfe >= 2 else None,
            "heun": (nfe + 1) // 2 if nfe >= 3 else None,
            "pc": (nfe - 1) // 2 if nfe >= 3 else None}[kind]


class DiagonalGaussianScore:
    """The exact score of N(m, diag(lam)) noised by `sde`, O(n d) per call: the Gaussian
    targets in their eigenbasis. Every fixed-step solver (ours and the peers') is equivariant
    under rotations (a linear combination of x, the score and isotropic noise per step), so it
    samples these there at the same law as in the rotated basis; the adaptive ones (GGF,
    torchdiffeq, k-diffusion's dpm_adaptive) measure error per coordinate, which depends on the
    basis, and run on the rotated target from the same (rotated) prior draws."""

    def __init__(self, m: torch.Tensor, lam: torch.Tensor, sde):
        self.m, self.lam, self.process = m, lam, Process(sde)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        alpha, sigma = self.process.marginal(t.to(x.dtype))
        a, sg = alpha[:, None], sigma[:, None]
        return -(x - a * self.m.to(x.dtype)) / (a * a * self.lam.to(x.dtype) + sg * sg)


class Target:
    """A closed-form score with its error measure and noise floor. Gaussians have a second,
    diagonal frame (`fast`, `DiagonalGaussianScore`) for the fixed-step solvers."""

    def __init__(self, name: str, sde, n: int):
        self.name, self.sde, self.n = name, sde, n
        self.q = None
        if name.startswith("gauss"):
            d, lo = (16, 1e-2) if name == "gauss16" else (256, 1e-3)
            g = torch.Generator().manual_seed(0)
            q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
            self.lam = torch.logspace(math.log10(lo), 0.0, d, dtype=F64)
            self.m = 0.5 * torch.randn(d, generator=g, dtype=F64)
            self.q = q
            self.score = GaussianScore(self.m, q @ torch.diag(self.lam) @ q.T, sde)
            self.fast = DiagonalGaussianScore(self.m @ q, self.lam, sde)
            self.mean, self.cov = self.fast.m, torch.diag(self.lam)  # of the fast frame
        else:
            params = gmm_params(layout="ring") if name == "ring2" else nq.gmm64_params(64)
            self.score = GMMScore(*params, sde)
            self.fast = self.score
            self.mean, self.cov = nq.mixture_moments(*params)  # for the teleport's Gaussian
            big = self.score.sample_data(200_000, generator=torch.Generator().manual_seed(999))
            self.entropy = float(nq.data_nll(self.score, big).mean())
        self.dim = self.score.dim

    def frame(self, adaptive: bool, x_t: torch.Tensor) -> tuple:
        """(score, prior draws, error function) of the frame a method runs in; x_t are the
        draws in the fast frame (the rotated frame gets x_t Q^T: the same draws)."""
        if self.q is None or not adaptive:
            return self.fast, x_t, (self.error_fast if self.q is not None else self.error)
        return self.score, x_t @ self.q.T, self.error

    def error(self, x: torch.Tensor) -> float:
        x = x.double()
        if self.q is not None:
            return self.error_fast(x @ self.q)
        return abs(float(nq.data_nll(self.score, x).mean()) - self.entropy)

    def error_fast(self, y: torch.Tensor) -> float:
        """The Gaussian error in the eigenbasis: mean |var / lam - 1| + mean |mean error| /
        sqrt(lam) over the eigendirections."""
        y = y.double() - self.fast.m
        return float((y.var(0) / self.lam - 1).abs().mean()
                     + (y.mean(0) / self.lam.sqrt()).abs().mean())

    def floor(self, seed: int) -> float:
        return self.error(self.score.sample_data(self.n,
                                                 generator=torch.Generator().manual_seed(seed)))


def _registered(target: Target, label: str, nfe_grid: list[int], x_t: torch.Tensor, tp,
                t_star: float, grids: dict, seed: int) -> list[dict]:
    """One registered method (RUNS[label]) on the NFE grid (or its tolerance grid); "+opt"
    labels sample on the grids tuned for the target (`grids`: nfe -> times). The sampler's
    own noise (SDE methods, teleported draws) is seeded by `seed` as the prior draws are."""
    method, fixed, kind, family = RUNS[label]
    score, x_t, error = target.frame(kind == "adaptive", x_t)
    extra = {"teleport": tp, "t_start": t_star} if label.endswith("+tp") else {}
    if method == "pc":
        extra["snr"] = 0.01 if isinstance(target.sde, VPSDE) else 0.16
    if kind == "adaptive":
        settings = ([{"rtol": r, "atol": r} for r in ODE_TOLS] if method == "ode" else
                    [{"abs_tol": 2 / 256, "rel_tol": r} for r in GGF_RTOLS])
    elif label.endswith("+opt"):
        settings = [{"grid": grids[n]} for n in nfe_grid if n in grids]
    else:
        settings = [{"steps": s} for s in (steps_for(kind, n) for n in nfe_grid) if s]
    rows = []
    for opts in settings:
        t0 = time.perf_counter()
        res = samplers.sample(score, target.sde, tuple(x_t.shape), method=method,
                              dtype=F64, x_init=x_t,
                              generator=torch.Generator().manual_seed(7 + 1000 * seed),
                              **fixed, **extra, **opts)
        setting = (f"tuned grid, {len(opts['grid'])} points" if "grid" in opts else
                   ", ".join(f"{k}={v:g}" for k, v in opts.items()))
        rows.append({"method": label, "family": family, "nfe": res.nfe, "error": error(res.x),
                     "time_s": time.perf_counter() - t0, "setting": setting})
    return rows


def _peer_rows(target: Target, nfe_grid: list[int], x_t: torch.Tensor, seed: int,
               quick: bool) -> list[dict]:
    rows = []
    _, _, fast_error = target.frame(False, x_t)
    score, x_rot, error = target.frame(True, x_t)
    kd = _peers.k_diffusion()
    if isinstance(kd, str):
        return [{"method": "k-diffusion", "family": "peer", "status": kd}]
    names = ("dpmpp_2m", "euler") if quick else _peers.KD_SAMPLERS
    for name in names:
        for kind in _peers.SIGMAS:
            for nfe in nfe_grid:
                t0 = time.perf_counter()
                out = _peers.run_kd(name, kind, nfe, target.fast, target.sde, x_t, seed)
                if out is not None:
                    rows.append({"method": f"kd_{name}_{kind}", "family": "peer",
                                 "nfe": out[1], "error": fast_error(out[0]),
                                 "time_s": time.perf_counter() - t0, "setting": f"n={nfe}"})
    for rtol in ([] if quick else KD_RTOLS):
        x0, nfe = _peers.run_kd_adaptive(rtol, score, target.sde, x_rot, seed)
        rows.append({"method": "kd_dpm_adaptive", "family": "peer", "nfe": nfe,
                     "error": error(x0), "setting": f"rtol={rtol:g}"})
    return rows


def tuned_grids(target: Target, nfe_grid: list[int], method: str) -> dict[int, list[float]]:
    """`samplers.optimize_grid` for `method` at each budget of `OPT_NFE` in the grid, tuned
    on 512 prior draws of their own (seed 12345, none of the evaluation seeds')."""
    out = {}
    for nfe in (n for n in nfe_grid if n in OPT_NFE):
        res = samplers.optimize_grid(target.fast, target.sde, nfe, method,
                                     sample_shape=(target.dim,), n=512, seed=12345,
                                     dtype=F64, progress=False)
        out[nfe] = res["times"]
    return out


def _pair_blocks(tname: str, sde_name: str, parts: dict, todo: dict, quick: bool,
                 nfe_grid: list[int]) -> Iterator[tuple[str | None, object]]:
    """Measure one (target, process)'s missing blocks: yields (key, rows) as each block
    finishes and (None, a timing line) after each seed. The grids are tuned once per pair."""
    sde = SDES[sde_name]()
    n = 2000 if quick else TARGET_N[tname]
    target = Target(tname, sde, n)
    tp = samplers.GaussianTeleport(target.mean, target.cov, sde)
    t_star, _ = tp.suggest_t_start(target.fast, thresh=0.99,
                                   generator=torch.Generator().manual_seed(0))
    grids = ({m: tuned_grids(target, nfe_grid, m) for m in {RUNS[lb][0] for lb in parts["opt"]}}
             if any("opt" in p for p in todo.values()) else {})
    for seed, missing in todo.items():
        t0 = time.perf_counter()
        x_t = sde.prior_sample((n, target.dim), generator=torch.Generator()
                               .manual_seed(100 + seed), dtype=F64)
        base = {"target": tname, "sde": sde_name, "seed": seed}
        for part in missing:
            if part == "em_long":
                rows = _registered(target, "em", EM_LONG, x_t, tp, t_star, {}, seed)
            else:
                rows = [] if part else [{"method": "noise floor", "family": "floor",
                                         "nfe": 0.0, "error": target.floor(500 + seed)}]
                for label in parts[part]:
                    rows += _registered(target, label, nfe_grid, x_t, tp, t_star,
                                        grids.get(RUNS[label][0], {}), seed)
                if not part:
                    rows += _peer_rows(target, nfe_grid, x_t, seed, quick)
            yield _key(sde_name, tname, seed, part), [{**base, **r} for r in rows]
        if missing:
            what = ", ".join(part or "main" for part in missing)
            yield None, (f"{sde_name} {tname} seed {seed} ({what}): "
                         f"{time.perf_counter() - t0:.0f} s")


def _pair_worker(args: tuple, threads: int, queue) -> None:
    """One pair in a spawned process: its blocks go to the parent through `queue`."""
    torch.set_num_threads(threads)
    for item in _pair_blocks(*args):
        queue.put(item)


def _blocks(plan: list[tuple], jobs: int, worker: Callable = _pair_worker
            ) -> Iterator[tuple[str | None, object]]:
    """`_pair_blocks` of every plan entry, in this process, or over `jobs` spawned processes
    (`worker`, cores / jobs threads each) in the order they finish. If a pair fails, the pairs
    not yet started are cancelled, the running ones finish (their blocks are kept), then it
    raises."""
    if jobs <= 1 or len(plan) <= 1:
        for args in plan:
            yield from _pair_blocks(*args)
        return
    ctx = mp.get_context("spawn")  # no fork of a process that holds torch's thread pools
    threads = max(1, torch.get_num_threads() // jobs)
    with ctx.Manager() as manager, ProcessPoolExecutor(jobs, mp_context=ctx) as pool:
        queue = manager.Queue()
        futures = [pool.submit(worker, args, threads, queue) for args in plan]
        while True:
            try:
                yield queue.get(timeout=1.0)
                continue
            except Empty:
                pass
            if any(f.done() and not f.cancelled() and f.exception() for f in futures):
                for f in futures:
                    f.cancel()
            if all(f.done() for f in futures):
                break
        while True:  # what the last workers put after the final wait timed out
            try:
                yield queue.get_nowait()
            except Empty:
                break
        for f in futures:
            if not f.cancelled():
                f.result()


def run(quick: bool = False, targets: list[str] | None = None, sdes: list[str] | None = None,
        seeds: int = 3, out_dir: str | None = None, name: str | None = None,
        jobs: int = 1) -> dict:
    """Measure every (target, process, method, NFE) and write results/<name>.{json,md,png}.

    Each (process, target, seed) block is kept in <out_dir>/<name>.partial.json as it
    finishes: rerunning the same command after an interruption does only the missing blocks
    (delete that file to start over). jobs > 1 measures that many (target, process) pairs at
    once in separate processes; the rows are the same."""
    check_positive_int(jobs, "jobs", ConfigError)
    for what, given, known in (("targets", targets, TARGET_N), ("sdes", sdes, SDES)):
        if unknown := sorted(set(given or ()) - set(known)):
            raise ConfigError(f"{what}: unknown {unknown}; valid: {sorted(known)}")
    targets = targets or (["gauss16"] if quick else list(TARGET_N))
    sdes = sdes or (["vp"] if quick else list(SDES))
    nfe_grid = QUICK_NFE if quick else NFE_GRID
    seeds = 1 if quick else seeds
    labels = list(QUICK_RUNS if quick else RUNS)
    name = name or ("sampler_frontier_quick" if quick else "sampler_frontier")
    out = Path(out_dir) if out_dir else RESULTS
    partial = out / f"{name}.partial.json"
    # Blocks are kept only while the measured code is the same (`code_fingerprint`): a rerun
    # after a commit that leaves samplers/, scorekit/ and benchmarks/ alone finishes the
    # table; any change to them starts over. Each block records the commit it ran at.
    config = {"quick": quick, "nfe_grid": nfe_grid, "labels": labels,
              "code": code_fingerprint()}
    done = json.loads(partial.read_text()) if partial.is_file() else {}
    if done.get("config") != config:
        done = {"config": config, "blocks": {}, "commits": {}}
    commit = environment()["commit"]
    plan = []  # _pair_blocks' arguments per (target, process) with blocks still missing
    for tname in targets:
        for sde_name in sdes:
            run_labels = [lb for lb in labels if lb not in SKIP.get(tname, ())]
            # A block per (process, target, seed) and part (`PARTS`).
            parts = {"": [lb for lb in run_labels if not lb.endswith("+opt")],
                     "opt": [lb for lb in run_labels if lb.endswith("+opt")],
                     "em_long": ["em"] if not quick and tname in EM_LONG_TARGETS else []}
            todo = {seed: [part for part, lbs in parts.items()
                           if (lbs or not part) and _key(sde_name, tname, seed, part)
                           not in done["blocks"]]
                    for seed in range(min(seeds, MAX_SEEDS.get(tname, seeds)))}
            if any(todo.values()):
                plan.append((tname, sde_name, parts, todo, quick, nfe_grid))
    with RowProgress(sum(len(m) for _, _, _, todo, *_ in plan for m in todo.values()),
                     "frontier blocks", unit="block") as bar:
        for key, rows in _blocks(plan, jobs):
            if key is None:
                bar.say(rows)
                continue
            done["blocks"][key] = rows
            done["commits"][key] = commit
            out.mkdir(parents=True, exist_ok=True)
            io.write_text_atomic(partial, json.dumps(done))
            bar.row()
    # One order whatever order the blocks finished in (resumes, jobs): targets, processes,
    # seeds, parts as listed.
    keys = {key: _split_key(key) for key in done["blocks"]}
    used = sorted((key for key, (sde_name, tname, seed, _) in keys.items()
                   if sde_name in sdes and tname in targets and seed < seeds),
                  key=lambda k: (targets.index(keys[k][1]), sdes.index(keys[k][0]), keys[k][2],
                                 PARTS.index(keys[k][3])))
    rows = [r for key in used for r in done["blocks"][key]]
    payload = {"quick": quick, "targets": targets, "sdes": sdes, "seeds": seeds,
               "nfe_grid": nfe_grid, "rows": rows, "env": environment(),
               "code_fingerprint": config["code"],
               "block_commits": sorted({done["commits"][key] for key in used}),
               "k_diffusion": _peers.kd_version()}
    payload["summary"] = summarise(rows)
    payload["frontier"] = frontier(payload["summary"], nfe_grid)
    payload["grid_gain"] = grid_gain(payload["summary"], FIXED_GRIDS)
    payload["adaptive_vs_em"] = adaptive_vs_em(payload["summary"])
    write(name, payload, report(payload, MAX_SEEDS), out)
    plot(payload, out / f"{name}.png")
    return payload


def _key(sde_name: str, tname: str, seed: int, part: str) -> str:
    return f"{sde_name}/{tname}/{seed}" + (f"/{part}" if part else "")


def _split_key(key: str) -> tuple[str, str, int, str]:
    """`_key`'s inverse: (process, target, seed, part)."""
    sde_name, tname, seed, *part = key.split("/")
    return sde_name, tname, int(seed), part[0] if part else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--targets", default=None, help="comma list of " + ",".join(TARGET_N))
    ap.add_argument("--sdes", default=None, help="comma list of " + ",".join(SDES))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out-dir", default=None, help="default benchmarks/results/")
    ap.add_argument("--name", default=None)
    ap.add_argument("--jobs", type=int, default=1,
                    help="(target, process) pairs measured at once, each in its own process")
    args = ap.parse_args()
    split = lambda v: v.split(",") if v else None  # noqa: E731
    run(args.quick, split(args.targets), split(args.sdes), args.seeds, args.out_dir, args.name,
        args.jobs)


if __name__ == "__main__":
    main()
