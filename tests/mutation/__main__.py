"""Run the mutation list: `python tests/mutation [--only a,b] [--out DIR]`.

For each mutation of `mutations.MUTATIONS`: copy the tracked tree once to a temporary
directory, write the mutated file there, run `pytest -x -m "not mutation"` (slow tests
included) on the mutation's test files in that copy (so imports resolve to the copy), restore
the file, and record whether a test failed (caught), which one, and the time taken. The
unmutated copy must pass those tests first. Writes <out>/mutation.{json,md} (default
benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mutations import MUTATIONS, check  # noqa: E402

from benchmarks._report import RESULTS, environment, markdown_table, write  # noqa: E402


def _copy_tree(dest: Path) -> None:
    cmd = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(cmd, cwd=ROOT, capture_output=True, check=True).stdout.decode()
    for rel in filter(None, files.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _pytest(copy: Path, tests: tuple[str, ...], timeout: float) -> tuple[int, str, float]:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                               "no:cacheprovider", "-m", "not mutation", *tests], cwd=copy, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timeout", time.perf_counter() - start
    failed = re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)
    first = failed[0] if failed else (proc.stdout.strip().splitlines() or [""])[-1]
    return proc.returncode, first, time.perf_counter() - start


def run(only: list[str] | None = None, out_dir: Path = RESULTS, timeout: float = 900) -> dict:
    chosen = [m for m in MUTATIONS if only is None or m.name in only]
    for m in chosen:
        check(m)
    rows = []
    with tempfile.TemporaryDirectory(prefix="scorekit-mutation-") as tmp:
        copy = Path(tmp)
        _copy_tree(copy)
        tests = tuple(sorted({t for m in chosen for t in m.tests}))
        code, first, secs = _pytest(copy, tests, timeout)
        if code != 0:
            raise SystemExit(f"the unmutated code fails its tests ({first}); fix that first")
        print(f"baseline: {len(tests)} test files pass ({secs:.0f} s)", flush=True)
        for i, m in enumerate(chosen):
            target = copy / m.path
            original = target.read_text()
            target.write_text(check(m))
            try:
                code, first, secs = _pytest(copy, m.tests, timeout)
            finally:
                target.write_text(original)
            caught = code not in (0, 5)
            rows.append({"mutation": m.name, "file": m.path, "caught": caught,
                         "by": first if caught else "", "tests": ", ".join(m.tests),
                         "seconds": round(secs, 1)})
            print(f"[{i + 1}/{len(chosen)}] {m.name}: {'caught' if caught else 'SURVIVED'} "
                  f"({secs:.0f} s) {first if caught else ''}", flush=True)
    caught = sum(r["caught"] for r in rows)
    payload = {"caught": caught, "total": len(rows), "rows": rows, "env": environment()}
    md = (f"# Mutation testing\n\nenv: {payload['env']}\n\n**{caught} of {len(rows)} mutations "
          "caught** by the default suite's tests that own the mutated code (`python "
          "tests/mutation`; each mutation is one exact snippet replaced in a copy of the tree, "
          "then `pytest -x` on the listed test files).\n\n"
          + markdown_table(rows, ["mutation", "file", "caught", "by", "seconds"]) + "\n")
    write("mutation", payload, md, out_dir)
    return payload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None, help="comma-separated mutation names")
    ap.add_argument("--out", default=None, help="results folder (default benchmarks/results/)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per test run")
    args = ap.parse_args()
    payload = run(args.only.split(",") if args.only else None,
                  Path(args.out) if args.out else RESULTS, args.timeout)
    print(f"{payload['caught']} of {payload['total']} caught")


if __name__ == "__main__":
    main()
