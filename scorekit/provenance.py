"""Which code produced a result: scorekit's and torch's versions and, when scorekit runs from a
git checkout, the commit and whether tracked files differed from it.

Training records one entry per segment (the steps one process trained) in its checkpoints, so a
resumed run carries its whole history: a model trained across two commits says so. Benchmarks
record the same state next to every table (`benchmarks._report.environment`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Result tables are outputs, not code: writing one does not make the checkout dirty.
NOT_CODE = ":(exclude)benchmarks/results"


def git(root: Path, *args: str) -> str:
    """`git <args>` in `root`; "" when git is missing or fails."""
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=False,
                              cwd=root).stdout.strip()
    except OSError:
        return ""


def code_state(root: Path = ROOT) -> dict[str, Any]:
    """{"commit": short hash, "dirty": bool, and "diff_sha256" when dirty} for the checkout at
    `root` (dirty: uncommitted changes to tracked files outside benchmarks/results/, hashed
    from their `git diff HEAD`); {} when `root` is not a git checkout (an installed wheel)."""
    if not (root / ".git").exists():
        return {}
    commit = git(root, "rev-parse", "--short", "HEAD")
    if not commit:
        return {}
    dirty = bool(git(root, "status", "--porcelain", "--untracked-files=no", "--", ".", NOT_CODE))
    state: dict[str, Any] = {"commit": commit, "dirty": dirty}
    if dirty:
        diff = git(root, "diff", "HEAD", "--", ".", NOT_CODE)
        state["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()
    return state


def source_state() -> dict[str, Any]:
    """The code running now: {"scorekit": version, "torch": version, **code_state()}."""
    import torch

    try:
        version: str | None = importlib.metadata.version("scorekit")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        version = None
    return {"scorekit": version, "torch": torch.__version__, **code_state()}


def describe_segments(segments: list[dict[str, Any]]) -> str:
    """One line on which code trained a run, from its checkpoint's `segments`:
    "trained at commit 1a2b3c4 (clean) in 2 segment(s)", or every segment's steps and code when
    they differ or some steps were not recorded."""
    if not segments:
        return "training provenance not recorded"

    def code(seg: dict[str, Any]) -> str:
        src = seg.get("source")
        if not src:
            return "unrecorded code"
        if "commit" not in src:
            return f"scorekit {src.get('scorekit')} (not a git checkout)"
        return f"commit {src['commit']}" + (f" (dirty, diff {src['diff_sha256'][:12]})"
                                            if src.get("dirty") else " (clean)")

    kinds = {code(seg) for seg in segments}
    if len(kinds) == 1 and all(seg.get("source") for seg in segments):
        return f"trained at {kinds.pop()} in {len(segments)} segment(s)"
    return "trained across: " + "; ".join(
        f"steps {seg['from_step']}-{seg['to_step']} at {code(seg)}" for seg in segments)
