"""Sudoku by Dirichlet diffusion: fraction of held-out puzzles solved vs clues and sampler.

    python scripts/benchmark.py suite=sudoku budget_min=30 [n_puzzles=64] [quick=true]

Trains `experiment=sudoku` into `run_dir` for a wall-clock budget of training time (resumable:
rerunning continues a killed run until the budget is spent; a finished run is reused), then
solves unique-solution puzzles made from held-out grids. A puzzle counts as solved when every
row, column and 3x3 box is valid and the givens are kept; the rows-and-columns-only fraction (a
checker that ignores boxes) is reported next to it. Writes results/sudoku[_quick].{json,md,png}.

By default the learning rate is constant (the budget decides where training stops). The
committed table trains `experiment=sudoku`'s cosine schedule to its end instead, the step count
deciding and the budget only a cap (so a busy machine trains the same model, later):
    python scripts/benchmark.py suite=sudoku budget_min=300 \
        "overrides=trainer.lr_schedule=cosine trainer.steps=11000"
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from benchmarks._report import RowProgress, environment, markdown_table, write
from scorekit.provenance import describe_segments

ROOT = Path(__file__).resolve().parents[1]
CLUES = [25, 30, 35, 40, 45]
# Time dilation (c sub-steps per step, each advancing the process by a full step) is the main
# lever on a small model: MAIN is run at every clue count.
MAIN = {"steps": 50, "time_dilation": 8}
# At SWEEP_CLUES, two ways to spend 4x MAIN's NFE: dilation 32, or 4 candidate fills per
# puzzle (the one violating the fewest units kept).
SWEEP = [{"steps": 50, "time_dilation": 32}, {"steps": 50, "time_dilation": 8, "candidates": 4}]
SWEEP_CLUES = [30, 35]


def _trainer(run_dir: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from scorekit.training.sudoku import SudokuTrainer

    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", ["experiment=sudoku", "trainer.resume=true", "logger=disabled",
                                 "trainer.lr_schedule=constant", "trainer.steps=100000000",
                                 "trainer.progress=false",
                                 *overrides])
    return SudokuTrainer(cfg, run_dir=run_dir)


def run(budget_min: float = 30.0, run_dir: str = "outputs/bench/sudoku", n_puzzles: int = 64,
        quick: bool = False, seed: int = 0, overrides: str = "", clues: list[int] | None = None,
        main: dict | None = None, sweep: list[dict] | None = None,
        sweep_clues: list[int] | None = None, name: str = "sudoku") -> dict[str, Any]:
    """Train for `budget_min` minutes of training time (total over resumes), then evaluate.

    `overrides`: space-separated Hydra overrides for the training config (model size etc.).
    `clues`, `main`, `sweep`, `sweep_clues` replace CLUES, MAIN, SWEEP, SWEEP_CLUES (e.g. to
    re-evaluate a trained run with other samplers); results go to results/<name>.*.
    """
    env = environment()   # at launch: the commit that trains and evaluates
    extra = overrides.split() if overrides else []
    if quick:
        budget_min = min(budget_min, 0.5)
        n_puzzles = min(n_puzzles, 8)
        extra = ["model.width=32", "model.depth=2", "trainer.batch_size=16",
                 "data.n_train=50", "data.n_test=16", *extra]
    trainer = _trainer(ROOT / run_dir, extra)
    trainer.fit(max_time_s=budget_min * 60)
    main = dict(main or MAIN)
    clues = clues or ([30, 40] if quick else CLUES)
    sweep = sweep if sweep is not None else (SWEEP[:2] if quick else SWEEP)
    sweep_clues = sweep_clues if sweep_clues is not None else SWEEP_CLUES
    rows = []
    with RowProgress(sum(1 + (len(sweep) if c in sweep_clues else 0) for c in clues),
                     "sudoku rows") as bar:
        for n_clues in clues:
            settings = [main] + (sweep if n_clues in sweep_clues else [])
            puzzles = trainer.puzzles(n_clues, n_puzzles, seed=seed)
            for opts in settings:
                start = time.perf_counter()
                sampler = {k: v for k, v in opts.items() if k != "candidates"}
                pred, info = trainer.solve(puzzles, {"method": "jacobi", **sampler}, seed=seed + 1,
                                           candidates=opts.get("candidates", 1))
                row = {"clues": n_clues, "time_dilation_start": None, "candidates": 1, **opts,
                       "nfe": info["nfe"], **trainer.score_solutions(pred, puzzles),
                       "single_fill_solved": info["candidate_solved"],
                       "sample_s": time.perf_counter() - start}
                rows.append(row)
                bar.row(markdown_table([row], list(row)).splitlines()[-1])
    payload = {
        "suite": "sudoku", "env": env, "budget_min": budget_min,
        "train_time_s": trainer.train_time, "train_steps": trainer.step,
        "training_segments": trainer.training_segments(),
        "batch_size": trainer.cfg.trainer.batch_size, "n_puzzles": n_puzzles, "seed": seed,
        "config": {k: dict(trainer.cfg[k]) for k in ("model", "sde", "objective", "trainer")},
        "overrides": extra, "main": main, "rows": rows,
    }
    name = f"{name}_quick" if quick else name
    js, _ = write(name, payload, _markdown(payload))
    _plot(rows, main, js.with_suffix(".png"))  # beside its tables (SCOREKIT_RESULTS_DIR too)
    return payload


def _markdown(p: dict[str, Any]) -> str:
    env = p["env"]
    head = (f"# Sudoku by Dirichlet diffusion\n\nTraining: {p['train_time_s'] / 60:.1f} min "
            f"({p['train_steps']} steps of {p['batch_size']} boards) on {env['device']} "
            f"({env['threads']} threads), budget {p['budget_min']} min, commit {env['commit']}, "
            f"torch {env['torch']}; model "
            f"{describe_segments(p.get('training_segments', []))}.\n"
            f"{p['n_puzzles']} held-out unique-solution puzzles per "
            "clue count. `solved`: all rows, columns and boxes valid and the givens kept; "
            "`rows_cols_only`: the same without the boxes (what a checker that ignores boxes "
            "would report); `blank_acc`: cells equal to the generating grid. `candidates` = k: k "
            "independent fills per puzzle, the one violating the fewest units kept (NFE is per "
            "puzzle, k times the sampler's); `single_fill_solved`: the fraction of single fills "
            "that solve their puzzle (the k = 1 rate, measured on all k draws).\n\n")
    cols = ["clues", "steps", "time_dilation", "time_dilation_start", "candidates", "nfe",
            "solved_fraction", "single_fill_solved", "rows_cols_only_fraction",
            "blank_cell_accuracy", "sample_s"]
    return head + markdown_table(p["rows"], cols) + "\n" + _pooled(p["rows"])


def _pooled(rows: list[dict[str, Any]], min_clues: int = 30) -> str:
    """Solved fraction over all puzzles with >= min_clues clues, per sampler setting run at
    every such clue count (equal puzzles per count)."""
    counts = sorted({r["clues"] for r in rows if r["clues"] >= min_clues})
    settings: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r["clues"] >= min_clues:
            key = (r["steps"], r["time_dilation"], r["time_dilation_start"],
                   r.get("candidates", 1), r["nfe"])
            settings.setdefault(key, {})[r["clues"]] = r["solved_fraction"]
    lines = [f"- {s} steps x dilation {d}{'' if t is None else f' below t={t}'}"
             f"{'' if k == 1 else f', {k} candidates'} ({nfe:g} NFE): "
             f"{sum(by.values()) / len(by):.4f}"
             for (s, d, t, k, nfe), by in settings.items() if sorted(by) == counts]
    if not counts or not lines:
        return ""
    return (f"\nSolved, pooled over the puzzles with {min_clues}+ clues "
            f"({', '.join(map(str, counts))}):\n" + "\n".join(lines) + "\n")


def _plot(rows: list[dict[str, Any]], main: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    mains = [r for r in rows if r["steps"] == main["steps"] and r["time_dilation_start"] is None
             and r["time_dilation"] == main.get("time_dilation", 1)
             and r.get("candidates", 1) == main.get("candidates", 1)]
    left.plot([r["clues"] for r in mains], [r["solved_fraction"] for r in mains], "o-",
              label="solved (rows, cols, boxes)")
    left.plot([r["clues"] for r in mains], [r["rows_cols_only_fraction"] for r in mains], "s--",
              label="rows + cols only")
    others: dict[tuple, list] = {}
    for r in rows:
        if r not in mains and r["time_dilation_start"] is None:
            key = (r["steps"], r["time_dilation"], r.get("candidates", 1))
            others.setdefault(key, []).append((r["clues"], r["solved_fraction"]))
    for (steps, dil, k), pts in sorted(others.items()):
        left.plot(*zip(*sorted(pts), strict=True), "^:" if k == 1 else "*:",
                  label=f"{steps} x {dil}" + ("" if k == 1 else f", {k} candidates"))
    left.set(xlabel="clues", ylabel="fraction of puzzles", ylim=(0, 1.02),
             title=f"{main['steps']} steps x dilation {main.get('time_dilation', 1)}")
    left.legend(fontsize=8)
    for idx, n_clues in enumerate(sorted({r["clues"] for r in rows})):
        color = f"C{idx}"
        single = [r for r in rows if r["clues"] == n_clues and r.get("candidates", 1) == 1]
        plain = sorted((r["nfe"], r["solved_fraction"]) for r in single
                       if r["time_dilation"] == 1)
        dilated = sorted((r["nfe"], r["solved_fraction"]) for r in single
                         if r["steps"] == main["steps"] and r["time_dilation_start"] is None)
        if len(plain) > 1:
            right.plot(*zip(*plain, strict=True), "o-", color=color,
                       label=f"{n_clues} clues, plain steps")
        picked = sorted((r["nfe"], r["solved_fraction"]) for r in rows
                        if r["clues"] == n_clues and r.get("candidates", 1) > 1)
        if picked:
            right.plot(*zip(*picked, strict=True), "*", ms=10, color=color,
                       label=f"{n_clues} clues, candidate fills")
        if len(dilated) > 1:
            right.plot(*zip(*dilated, strict=True), "^--", color=color,
                       label=f"{n_clues} clues, {main['steps']} steps x dilation")
    right.set(xscale="log", xlabel="NFE per puzzle", ylabel="solved fraction",
              ylim=(0, 1.02), title="steps vs time dilation at equal NFE")
    right.xaxis.set_major_formatter(ScalarFormatter())
    right.xaxis.set_minor_formatter(NullFormatter())
    if right.get_legend_handles_labels()[0]:
        right.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
