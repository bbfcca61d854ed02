"""Benchmarks show a row bar (with an ETA) on a terminal, keep their per-row lines in logs, and
`progress=false` / SCOREKIT_PROGRESS turns the bars off or on."""

from __future__ import annotations

import re
import sys
import textwrap

import pytest

from benchmarks import _report, nfe_quality

ENV = "SCOREKIT_PROGRESS"


@pytest.mark.parametrize(("value", "tty", "shown"), [
    ("1", False, True), ("true", False, True), ("0", True, False), ("off", True, False),
    (None, False, False), (None, True, True),
])
def test_progress_enabled(monkeypatch, value, tty, shown):
    if value is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, value)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty, raising=False)
    assert _report.progress_enabled() is shown


def _final_count(err: str) -> tuple[int, int]:
    """The last `done/total` a tqdm bar drew."""
    counts = re.findall(r"(\d+)/(\d+) \[", err)
    assert counts, err
    done, total = counts[-1]
    return int(done), int(total)


def test_row_lines_on_stdout_bar_on_stderr(monkeypatch, capsys):
    monkeypatch.setenv(ENV, "1")
    with _report.RowProgress(3, "demo") as bar:
        for i in range(3):
            bar.row(f"row {i} fd=0.{i}")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["row 0 fd=0.0", "row 1 fd=0.1", "row 2 fd=0.2"]
    assert "demo" in err and _final_count(err) == (3, 3)

    monkeypatch.setenv(ENV, "0")
    with _report.RowProgress(2, "demo") as bar:
        bar.row("a")
        bar.row("b")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["a", "b"] and err == ""


def test_nfe_quality_bar_counts_every_row(monkeypatch, capsys):
    """The bar's total is the number of rows the benchmark measures (no ETA off by a factor)."""
    monkeypatch.setenv(ENV, "1")
    payload = nfe_quality.run(quick=True, sde_name="vp", seeds=2, n=64, dims=[2],
                              methods=["em", "dpm_solver"], max_nfe=20)
    measured = [r for r in payload["rows"] if r["method"] != "noise floor"]
    _, err = capsys.readouterr()
    assert _final_count(err) == (len(measured), len(measured))
    assert len(measured) == 2 * (len(nfe_quality.configs("em", True, 20))
                                 + len(nfe_quality.configs("dpm_solver", True, 20)))


def test_benchmark_script_progress_key(monkeypatch, tmp_path, capsys):
    """`progress=` is taken by scripts/benchmark.py (not passed to the suite), sets the bars for
    the suite and the commands it starts, and a non-boolean value is refused by name."""
    import importlib.util

    from benchmarks._report import ROOT

    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "probe_suite.py").write_text(textwrap.dedent("""
        import os

        def run(n: int = 1):
            print("suite saw", n, os.environ.get("SCOREKIT_PROGRESS"))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(script.SUITES, "probe", "probe_suite:run")
    monkeypatch.setenv(ENV, "auto")  # main() sets it: restored after the test
    script.main(["suite=probe", "n=3", "progress=false"])
    assert capsys.readouterr().out.strip() == "suite saw 3 0"
    script.main(["suite=probe", "progress=true"])
    assert capsys.readouterr().out.strip() == "suite saw 1 1"
    with pytest.raises(ValueError, match="progress must be true or false, got 'maybe'"):
        script.main(["suite=probe", "progress=maybe"])
