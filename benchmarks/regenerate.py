"""Regenerate every committed result table from one command.

    python scripts/benchmark.py suite=all                # every table in benchmarks/results/
    python scripts/benchmark.py suite=all quick=true     # the same scripts, CI-sized, elsewhere
    python scripts/benchmark.py suite=all only=[fkc_anneal,hot_loop_cpu]

`TABLES` maps each committed table to the commands that produce it (a table that needs a
trained model first trains it; training resumes where an earlier call stopped). Each command
runs in its own process, one after the other, with `SCOREKIT_RESULTS_DIR` pointing at the
output folder: `benchmarks/results/` for the full run (the committed tables), and for quick
runs `outputs/benchmarks_quick/` (never the committed tables). Every results JSON records its
commit, dirty flag (and the hash of the diff when dirty), exact command, package versions and
device (`benchmarks._report.environment`). `regenerate.{json,md}` in the output folder lists
each table's commands, outcome and wall time (a call with `only=` keeps the other tables' rows
from earlier calls); `est_min` is the full run's wall time on a 2-core CPU: measured for the
tables regenerated so far (closed_form, fkc_anneal, sample_ranks, nfe_quality_vp,
nfe_quality_ve, nfe_quality_vp_ggf, nfe_quality_vp_teleport, nfe_quality_vp_ggf_d256,
learned_nfe_digits, reflected_digits, fd_nfe_digits_edm, mutation, faults), an
estimate for the others (the sum is the time to budget for `suite=all`: about 12 hours, most
of it the frontier, the Sudoku training and the nfe_quality grids).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._report import COMMITTED, ROOT, environment, markdown_table
from scorekit._validate import ConfigError

QUICK_DIR = ROOT / "outputs" / "benchmarks_quick"
PY = "python"  # recorded in the table; the commands run with this interpreter


class CommandsFailed(RuntimeError):
    """Some tables' commands failed (each printed its own error); the others were written."""


@dataclass(frozen=True)
class Table:
    """One committed table: its commands (full and quick) and the full run's wall time."""

    name: str
    full: list[list[str]]
    quick: list[list[str]]
    est_min: float
    note: str = ""


def _nq(*args: str, name: str) -> list[str]:
    return ["benchmarks/nfe_quality.py", *args, "--name", name]


_DIGITS_EDM = "outputs/bench/digits_edm"
TABLES = [
    Table("closed_form", [["benchmarks/closed_form.py"]],
          [["benchmarks/closed_form.py", "--quick", "--name", "closed_form"]], 2),
    Table("fkc_anneal", [["benchmarks/fkc_anneal.py"]], [["benchmarks/fkc_anneal.py", "--quick"]],
          5),
    Table("hot_loop_cpu", [["benchmarks/hot_loop.py", "--device", "cpu", "--reps", "9"]],
          [["benchmarks/hot_loop.py", "--device", "cpu", "--quick", "--name", "hot_loop_cpu"]],
          10),
    Table("sample_ranks", [["benchmarks/sample_ranks.py"]],
          [["benchmarks/sample_ranks.py", "--quick"]], 3,
          "torchrun: 2 ranks of 1 thread vs 1 rank of 1 thread, digits MLP"),
    Table("nfe_quality_vp", [_nq("--sde", "vp", name="nfe_quality_vp")],
          [_nq("--sde", "vp", "--quick", name="nfe_quality_vp")], 43),
    Table("nfe_quality_ve", [_nq("--sde", "ve", name="nfe_quality_ve")],
          [_nq("--sde", "ve", "--quick", name="nfe_quality_ve")], 58),
    Table("nfe_quality_vp_ggf",
          [_nq("--sde", "vp", "--seeds", "3", "--methods", "em,ggf,ggf_fresh",
               name="nfe_quality_vp_ggf")],
          [_nq("--sde", "vp", "--quick", "--methods", "em,ggf,ggf_fresh",
               name="nfe_quality_vp_ggf")], 40),
    Table("nfe_quality_vp_ggf_d256",
          [_nq("--sde", "vp", "--dims", "256", "--n", "1000", "--methods", "em,ggf,ggf_bridge",
               name="nfe_quality_vp_ggf_d256")],
          [_nq("--sde", "vp", "--quick", "--dims", "256", "--n", "200", "--methods",
               "em,ggf", name="nfe_quality_vp_ggf_d256")], 8),
    Table("nfe_quality_vp_teleport",
          [_nq("--sde", "vp", "--dims", "64", "--n", "4000", "--max-nfe", "200", "--methods",
               "em,em+tp,heun_edm,heun_edm+tp,dpm_solver,dpm_solver+tp",
               name="nfe_quality_vp_teleport")],
          [_nq("--sde", "vp", "--quick", "--dims", "64", "--n", "500", "--methods",
               "em,em+tp,dpm_solver,dpm_solver+tp", name="nfe_quality_vp_teleport")], 8),
    Table("learned_nfe_digits", [["benchmarks/learned_nfe.py", "--experiment", "digits"]],
          [["benchmarks/learned_nfe.py", "--experiment", "digits", "--quick", "--n", "200",
            "--seeds", "1"]], 61, "trains experiment=digits once (outputs/bench/digits; 10 min)"),
    Table("reflected_digits", [["benchmarks/reflected_digits.py"]],
          [["benchmarks/reflected_digits.py", "--quick", "--n", "200", "--seeds", "1"]], 49,
          "trains three digits models"),
    Table("sampler_frontier", [["benchmarks/sampler_frontier.py", "--seeds", "3"]],
          [["benchmarks/sampler_frontier.py", "--quick", "--targets", "gauss16", "--sdes", "vp",
            "--seeds", "1", "--name", "sampler_frontier"]], 240,
          "4 targets x VP/VE/EDM against k-diffusion and diffusers"),
    Table("fd_nfe_digits_edm",
          [["scripts/train.py", "experiment=digits_edm", f"hydra.run.dir={_DIGITS_EDM}",
            "trainer.resume=true"],
           ["scripts/benchmark.py", "suite=fd_nfe", f"ckpt={_DIGITS_EDM}"]],
          [["scripts/train.py", "experiment=digits_edm", f"hydra.run.dir={_DIGITS_EDM}_quick",
            "trainer.resume=true", "trainer.steps=30", "eval.n_samples=50", "eval.plot=false",
            "trainer.progress=false"],
           ["scripts/benchmark.py", "suite=fd_nfe", f"ckpt={_DIGITS_EDM}_quick", "quick=true",
            "n=100", "seeds=1", "name=fd_nfe_digits_edm"]], 150,
          "5000 training steps (12 min on an idle core, 51 on a busy one), then every sampler's "
          "FD vs NFE (98 min)"),
    Table("faults", [["benchmarks/faults.py"]], [["benchmarks/faults.py", "--quick"]], 2,
          "SIGKILL, ENOSPC, bit flips, truncation, edited metadata, two writers"),
    Table("mutation", [["tests/mutation"]],
          [["tests/mutation", "--only", "nfe_counter_bypassed,seed_streams_shared_counter"]], 6,
          "40 deliberate bugs, each against the tests that own the code"),
    Table("sudoku", [["scripts/benchmark.py", "suite=sudoku", "budget_min=300",
                      "overrides='trainer.lr_schedule=cosine trainer.steps=11000'"]],
          [["scripts/benchmark.py", "suite=sudoku", "quick=true", "name=sudoku"]], 110,
          "11000 training steps (96 min on an idle core; the budget only caps them; resumable), "
          "then solved fraction vs clues and steps"),
]


def _select(only: list[str] | str | None) -> list[Table]:
    if only is None:
        return TABLES
    names = [only] if isinstance(only, str) else list(only)
    known = {t.name for t in TABLES}
    if unknown := sorted(set(names) - known):
        raise ConfigError(f"only: unknown tables {unknown}; valid: {sorted(known)}")
    return [t for t in TABLES if t.name in names]


def _files(folder: Path) -> dict[str, tuple[int, int]]:
    """Name -> (size, mtime) of the files in `folder`."""
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()
            if p.is_file()}


def run(quick: bool = False, only: list[str] | str | None = None, out_dir: str | None = None,
        dry_run: bool = False, keep_going: bool = True) -> dict:
    """Run the commands of every (or `only` the named) table; writes regenerate.{json,md}."""
    tables = _select(only)
    out = Path(out_dir) if out_dir else (QUICK_DIR if quick else COMMITTED)
    if quick and out.resolve() == COMMITTED.resolve():
        raise ConfigError("quick runs never write the committed tables: pick another out_dir")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCOREKIT_RESULTS_DIR": str(out.resolve()), "PYTHONPATH": str(ROOT)}
    rows, total, stop = [], 0.0, False
    for i, table in enumerate(tables):
        if stop:
            break
        for cmd in (table.quick if quick else table.full):
            shown = " ".join([PY, *cmd])
            print(f"[{i + 1}/{len(tables)}] {table.name}: {shown}", flush=True)
            if dry_run:
                rows.append({"table": table.name, "command": shown, "status": "dry run"})
                continue
            before = _files(COMMITTED)
            start = time.perf_counter()
            proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, check=False)
            wall = time.perf_counter() - start
            total += wall
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
            touched = sorted(k for k, v in _files(COMMITTED).items() if before.get(k) != v)
            if quick and touched:  # a script that ignores SCOREKIT_RESULTS_DIR
                status = f"failed (wrote into benchmarks/results: {', '.join(touched)})"
            rows.append({"table": table.name, "command": shown, "status": status,
                         "wall_min": wall / 60, "est_min": table.est_min})
            if status != "ok":  # the table's later commands need this one
                print(f"{table.name}: {shown} {status}", file=sys.stderr, flush=True)
                stop = not keep_going
                break
    name = "regenerate_quick" if quick else "regenerate"
    done = {t.name for t in tables}
    if not dry_run and (out / f"{name}.json").is_file():  # an earlier call's other tables
        earlier = json.loads((out / f"{name}.json").read_text())
        rows = [r for r in earlier.get("rows", []) if r["table"] not in done] + rows
    payload = {"quick": quick, "tables": [t.name for t in tables], "rows": rows,
               "total_wall_min": total / 60, "est_total_min": sum(t.est_min for t in tables),
               "env": environment()}
    md = (f"# Regeneration of the result tables{' (quick)' if quick else ''}\n\n"
          f"env: {payload['env']}\n\nTotal wall time {total / 60:.1f} min (full-run estimate "
          f"{payload['est_total_min']:.0f} min on a 2-core CPU).\n\n"
          + markdown_table(rows, ["table", "command", "status", "wall_min", "est_min"]) + "\n")
    (out / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (out / f"{name}.md").write_text(md)
    failed = [r for r in rows if r["status"].startswith("failed")]
    if failed:
        raise CommandsFailed(f"{len(failed)} command(s) failed: "
                             + "; ".join(f"{r['table']}: {r['command']}" for r in failed))
    return payload
