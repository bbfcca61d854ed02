"""Run a benchmark suite: `python scripts/benchmark.py suite=<name> [key=value ...]`.

Keys are the suite function's keyword arguments (Hydra-override style, values parsed as YAML),
e.g. `python scripts/benchmark.py suite=sudoku budget_min=30 n_puzzles=64`. `progress=false`
turns the row bars off (they show on a terminal; `progress=true` forces them), for the suite
and every command it starts. Suites write
`benchmarks/results/<name>.{json,md,png}`; `suite=all` regenerates every committed table
(`benchmarks/regenerate.py`; `quick=true`: CI-sized, into outputs/benchmarks_quick/).
`python scripts/benchmark.py` lists the suites.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scorekit._validate import ConfigError  # noqa: E402
from scorekit.cli import user_errors  # noqa: E402
from scorekit.training.signals import StopRequested  # noqa: E402

# suite name -> "module:function" under benchmarks/; add new suites here.
SUITES = {"sudoku": "benchmarks.sudoku:run", "fd_nfe": "benchmarks.fd_nfe:run",
          "hot_loop": "benchmarks.hot_loop:run", "frontier": "benchmarks.sampler_frontier:run",
          "all": "benchmarks.regenerate:run"}


def parse(argv: list[str]) -> tuple[str, dict]:
    """`suite=name key=value ...` -> (name, kwargs); raises ConfigError naming a bad argument."""
    kwargs = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(f"arguments are key=value, got {arg!r}")
        kwargs[key] = yaml.safe_load(value) if value else ""
    suite = kwargs.pop("suite", None)
    if suite not in SUITES:
        raise ConfigError(f"suite must be one of {sorted(SUITES)}, got {suite!r}")
    return suite, kwargs


def main(argv: list[str]) -> None:
    if not argv:
        print(f"usage: python scripts/benchmark.py suite=<name> [key=value ...]; suites: "
              f"{sorted(SUITES)}")
        return
    suite, kwargs = parse(argv)
    if "progress" in kwargs:
        from benchmarks._report import PROGRESS_ENV

        progress = kwargs.pop("progress")
        if not isinstance(progress, bool):
            raise ConfigError(f"progress must be true or false, got {progress!r}")
        os.environ[PROGRESS_ENV] = "1" if progress else "0"
    module, fn_name = SUITES[suite].split(":")
    fn = getattr(importlib.import_module(module), fn_name)
    valid = list(inspect.signature(fn).parameters)
    for key in kwargs:
        if key not in valid:
            raise ConfigError(f"unknown option {key!r} for suite {suite!r}; valid: {valid}")
    from benchmarks.regenerate import CommandsFailed

    try:
        fn(**kwargs)
    except StopRequested as stop:  # a suite that trains was stopped: it resumes on rerun
        print(f"{stop}; rerun the same command to resume", file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    except CommandsFailed as err:  # each failed command has printed its own error above
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    with user_errors():  # a mistyped suite or option: one line, exit 2
        main(sys.argv[1:])
