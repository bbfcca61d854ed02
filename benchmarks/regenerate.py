"""Regenerate every committed result table from one command.

    python scripts/benchmark.py suite=all                # every table in benchmarks/results/
    python scripts/benchmark.py suite=all quick=true     # the same scripts, CI-sized, elsewhere
    python scripts/benchmark.py suite=all only=[fkc_anneal,hot_loop_cpu]

`TABLES` maps each committed table to the commands that produce it (a table that needs a
trained model first trains it; training resumes where an earlier call stopped). Each command
runs in its own process, one after the other, with `SCOREKIT_RESULTS_DIR` pointing at the
output folder: `benchmarks/results/` for the full run (the committed tables), and for quick
runs `outputs/benchmarks_quick/` (never the committed tables; a quick command that writes
there fails). Every results JSON records its commit, dirty flag (and the hash of the diff when
dirty), exact command, package versions and device (`benchmarks._report.environment`).
`regenerate.{json,md}` in the output folder lists each table's commands, outcome and wall time
(a call with `only=` keeps the other tables' rows from earlier calls).

`jobs=2` runs two tables at once, each command with half the cores' threads and its output in
`<out>/logs/<table>.log` (the end of it printed if it fails); the tables that time things or
use every core (`exclusive`: closed_form, hot_loop_cpu, sample_ranks) run first, alone.

`est_min` is the full run's wall time on a 2-core CPU, one table at a time, measured for every
table. sampler_frontier ran as three concurrent processes: its figure is their per-block times
(385 min) scaled by an uncontended rerun of the ring2/VP blocks (0.35x; the 256-D EDM block
alone: 13 min), plus the grid tuning. The sum, about 13.5 hours, is the time to budget for
`suite=all`; most of it is the frontier (3.5 h), the Sudoku and digits-EDM tables (2.5 h each,
training included) and the nfe_quality grids.
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
    # Timed, or using every core: with `jobs` > 1 it runs alone, before the others.
    exclusive: bool = False


def _nq(*args: str, name: str) -> list[str]:
    return ["benchmarks/nfe_quality.py", *args, "--name", name]


_DIGITS_EDM = "outputs/bench/digits_edm"
TABLES = [
    Table("closed_form", [["benchmarks/closed_form.py"]],
          [["benchmarks/closed_form.py", "--quick", "--name", "closed_form"]], 2, exclusive=True),
    Table("fkc_anneal", [["benchmarks/fkc_anneal.py"]], [["benchmarks/fkc_anneal.py", "--quick"]],
          5),
    Table("hot_loop_cpu", [["benchmarks/hot_loop.py", "--device", "cpu", "--reps", "9"]],
          [["benchmarks/hot_loop.py", "--device", "cpu", "--quick", "--name", "hot_loop_cpu"]],
          10, exclusive=True),
    Table("sample_ranks", [["benchmarks/sample_ranks.py"]],
          [["benchmarks/sample_ranks.py", "--quick"]], 3,
          "torchrun: 2 ranks of 1 thread vs 1 rank of 1 thread, digits MLP", exclusive=True),
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
          [_nq("--sde", "vp", "--dims", "256", "--n", "1000", "--methods", "em,ggf,ggf_fresh",
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
            "--seeds", "1", "--name", "sampler_frontier"]], 215,
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
          [["scripts/benchmark.py", "suite=sudoku", "quick=true", "name=sudoku"]], 150,
          "11000 training steps (96 min on an idle core; the budget only caps them; resumable), "
          "then solved fraction vs clues and steps (76 min on a busy core)"),
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


def _run_table(table: Table, quick: bool, env: dict[str, str], log: Path | None,
               progress: str) -> list[dict]:
    """Run one table's commands in order (a failed one stops the table: the later ones need
    it); output to the terminal, or appended to `log`. Returns a row per command run."""
    rows = []
    for cmd in (table.quick if quick else table.full):
        shown = " ".join([PY, *cmd])
        print(f"{progress} {table.name}: {shown}" + (f" (log: {log})" if log else ""),
              flush=True)
        before = _files(COMMITTED) if quick else {}
        start = time.perf_counter()
        if log is None:
            proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, check=False)
        else:
            with open(log, "a") as sink:
                sink.write(f"$ {shown}\n")
                sink.flush()
                proc = subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env, check=False,
                                      stdout=sink, stderr=subprocess.STDOUT)
        wall = time.perf_counter() - start
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        touched = (sorted(k for k, v in _files(COMMITTED).items() if before.get(k) != v)
                   if quick else [])
        if touched:  # a script that ignores SCOREKIT_RESULTS_DIR
            status = f"failed (wrote into benchmarks/results: {', '.join(touched)})"
        rows.append({"table": table.name, "command": shown, "status": status,
                     "wall_min": wall / 60, "est_min": table.est_min})
        if log is not None or status != "ok":
            tail = ""
            if log is not None and status != "ok":  # the error, without opening the log
                tail = "".join(f"    {line}" for line in log.read_text().splitlines(True)[-20:])
                tail = f"; the end of {log}:\n{tail}"
            print(f"{table.name}: {status} after {wall / 60:.1f} min{tail}",
                  file=sys.stderr if status != "ok" else sys.stdout, flush=True)
        if status != "ok":
            break
    return rows


def run(quick: bool = False, only: list[str] | str | None = None, out_dir: str | None = None,
        dry_run: bool = False, keep_going: bool = True, jobs: int = 1) -> dict:
    """Run the commands of every (or `only` the named) table; writes regenerate.{json,md}.

    `jobs` > 1 runs that many tables at once, each command with OMP_NUM_THREADS = cores / jobs
    (unless set), its output in <out>/logs/<table>.log; the `exclusive` tables (they time
    things, or use every core) run first, alone, one after the other."""
    tables = _select(only)
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    out = Path(out_dir) if out_dir else (QUICK_DIR if quick else COMMITTED)
    if quick and out.resolve() == COMMITTED.resolve():
        raise ConfigError("quick runs never write the committed tables: pick another out_dir")
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SCOREKIT_RESULTS_DIR": str(out.resolve()), "PYTHONPATH": str(ROOT)}
    count, begun = len(tables), time.perf_counter()
    if dry_run:
        rows = []
        for i, t in enumerate(tables):
            for cmd in (t.quick if quick else t.full):
                shown = " ".join([PY, *cmd])
                print(f"[{i + 1}/{count}] {t.name}: {shown}", flush=True)
                rows.append({"table": t.name, "command": shown, "status": "dry run"})
    elif jobs == 1:
        rows = []
        for i, table in enumerate(tables):
            rows += _run_table(table, quick, env, None, f"[{i + 1}/{count}]")
            if not keep_going and rows[-1]["status"] != "ok":
                break
    else:
        rows = _run_parallel(tables, quick, env, out / "logs", jobs, keep_going)
    total = 0.0 if dry_run else time.perf_counter() - begun
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


def _run_parallel(tables: list[Table], quick: bool, env: dict[str, str], logs: Path,
                  jobs: int, keep_going: bool) -> list[dict]:
    """The exclusive tables alone, then the others `jobs` at a time; rows in table order."""
    from concurrent.futures import ThreadPoolExecutor

    logs.mkdir(parents=True, exist_ok=True)
    for table in tables:  # each call's logs start empty
        (logs / f"{table.name}.log").unlink(missing_ok=True)
    label = {t.name: f"[{i + 1}/{len(tables)}]" for i, t in enumerate(tables)}
    by_table: dict[str, list[dict]] = {}
    failed = False
    for table in (t for t in tables if t.exclusive):
        by_table[table.name] = _run_table(table, quick, env, logs / f"{table.name}.log",
                                          label[table.name])
        failed |= by_table[table.name][-1]["status"] != "ok"
    shared = [t for t in tables if not t.exclusive]
    if shared and (keep_going or not failed):
        threads = str(max(1, (os.cpu_count() or 1) // jobs))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **env}
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            futures = {t.name: pool.submit(_run_table, t, quick, env,
                                           logs / f"{t.name}.log", label[t.name])
                       for t in shared}
            for name, future in futures.items():
                by_table[name] = future.result()
    return [r for t in tables for r in by_table.get(t.name, [])]
