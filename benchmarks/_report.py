"""Shared output of every benchmark: environment record, JSON, Markdown table, PNG path."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

import torch

from scorekit.provenance import NOT_CODE, code_state, git

ROOT = Path(__file__).resolve().parents[1]
# Where tables go: benchmarks/results/ (committed), or SCOREKIT_RESULTS_DIR (`suite=all` sets it
# for quick runs, so they never overwrite the committed tables).
COMMITTED = ROOT / "benchmarks" / "results"
RESULTS = Path(os.environ.get("SCOREKIT_RESULTS_DIR") or COMMITTED)
VERSIONED = ("numpy", "scipy", "diffusers", "torchdiffeq", "k-diffusion", "triton",
             "safetensors", "hydra-core")


def _git(*args: str) -> str:
    return git(ROOT, *args)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _command() -> str:
    """The command as typed from the repository root: python, then paths relative to it."""
    parts = []
    for arg in sys.argv:
        path = Path(arg)
        if path.is_absolute() and path.is_relative_to(ROOT):
            arg = str(path.relative_to(ROOT))
        parts.append(arg)
    return " ".join(["python", *parts])


def environment() -> dict[str, Any]:
    """Device, versions, commit (with a dirty flag: uncommitted changes to tracked files outside
    benchmarks/results/, and then the sha256 of their `git diff HEAD`) and the exact command,
    recorded next to every number."""
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor()
    # Code and configs only: result tables written by an earlier benchmark of the same
    # `suite=all` run do not make the next one dirty.
    state = code_state(ROOT)
    env = {"device": dev or platform.machine(), "torch": torch.__version__,
           "python": platform.python_version(), "commit": state.get("commit", "unknown"),
           "dirty": state.get("dirty", False), "command": _command(),
           "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "versions": _versions()}
    if "diff_sha256" in state:
        env["diff_sha256"] = state["diff_sha256"]
    return env


MEASURED = ("samplers", "scorekit", "benchmarks", NOT_CODE)
# Per-sample seeds give sample i of `seed=s` the stream s + i, so repetitions seeded 0, 1, 2
# would share all but one of their samples. Repetition r starts at r * SEED_STRIDE instead:
# disjoint streams for any n below 2^32.
SEED_STRIDE = 2**32


def sample_seed(rep: int) -> int:
    """The `seed=` of a benchmark's repetition `rep` (0, 1, ...): disjoint per-sample streams."""
    return rep * SEED_STRIDE


def code_fingerprint() -> str:
    """A hash of the code a benchmark measures: the blob ids of every tracked file under
    samplers/, scorekit/ and benchmarks/ (results excluded), the uncommitted diff of
    those paths and the versions of torch and the peers. Equal fingerprints at two commits mean
    that the same code ran: a long benchmark may then keep blocks measured at the earlier
    commit (recording which). "unknown" outside a git checkout: nothing is reused then."""
    tree = _git("ls-files", "--stage", "--", *MEASURED)
    if not tree:
        return "unknown"
    diff = _git("diff", "HEAD", "--", *MEASURED)
    parts = [tree, diff, torch.__version__, json.dumps(_versions(), sort_keys=True)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


PROGRESS_ENV = "SCOREKIT_PROGRESS"


def progress_enabled() -> bool:
    """Bars on a terminal; SCOREKIT_PROGRESS=1 forces them, =0 turns them off (`progress=false`
    of scripts/benchmark.py sets it for every command it starts)."""
    value = os.environ.get(PROGRESS_ENV, "auto").strip().lower()
    if value in ("1", "true", "on", "yes"):
        return True
    if value in ("0", "false", "off", "no"):
        return False
    return sys.stderr.isatty()


class RowProgress:
    """A benchmark's progress: a tqdm bar over its rows (on stderr, with an ETA) when bars are
    on, and the per-row result lines on stdout either way (above the bar, so logs keep them).

        with RowProgress(len(plan), "fd_nfe") as bar:
            for ...:
                bar.row(f"em steps=9 fd=98.7")
    """

    def __init__(self, total: int | None, desc: str, unit: str = "row", show: bool = True
                 ) -> None:
        from tqdm.auto import tqdm

        self._tqdm = tqdm
        self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True,
                        disable=not (show and progress_enabled()))

    def say(self, line: str) -> None:
        """Print a line without breaking the bar."""
        self._tqdm.write(line)
        sys.stdout.flush()

    def row(self, line: str | None = None, n: int = 1) -> None:
        """One (or n) rows done; `line` their result."""
        if line is not None:
            self.say(line)
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> RowProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def setting_label(opts: dict[str, Any]) -> str:
    """A row's sampler options as shown in the tables: "steps=9, rel_tol=0.05"."""
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in opts.items())


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write(name: str, payload: dict[str, Any], markdown: str,
          out_dir: Path = RESULTS) -> tuple[Path, Path]:
    """Write <out_dir>/<name>.json and .md (default benchmarks/results/); returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{name}.json", out_dir / f"{name}.md"
    js.write_text(json.dumps(payload, indent=2))
    md.write_text(markdown)
    return js, md


def nfe_at(base: list[dict[str, Any]], target: float, key: str) -> float | None:
    """NFE at which a baseline's |row[key]| first falls to `target`, log-log interpolated along
    its NFE grid (rows with "nfe" and `key`); None when no tested setting gets there."""
    pts = sorted((r["nfe"], abs(r[key])) for r in base)
    if pts[0][1] <= target:
        return pts[0][0]
    for (n0, e0), (n1, e1) in zip(pts, pts[1:], strict=False):
        if e1 <= target:
            if e1 <= 0 or e0 <= e1:
                return n1
            frac = math.log(e0 / target) / math.log(e0 / e1)
            return math.exp(math.log(n0) + frac * math.log(n1 / n0))
    return None


def nfe_axes(ax, ylabel: str, title: str) -> None:
    """Log-log axes of a quality-vs-NFE plot: labels, title, grid and legend."""
    ax.set(xscale="log", yscale="log", xlabel="NFE per sample (counted)", ylabel=ylabel,
           title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
