"""`scripts/benchmark.py suite=all`: one command per committed table, provenance on each."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import _report, regenerate
from scorekit._validate import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_every_committed_table_has_a_command():
    committed = {p.stem for p in (ROOT / "benchmarks" / "results").glob("*.json")
                 if not p.name.endswith(".partial.json") and not p.stem.startswith("regenerate")}
    assert committed <= {t.name for t in regenerate.TABLES}, committed - {
        t.name for t in regenerate.TABLES}
    for t in regenerate.TABLES:
        assert t.full and len(t.quick) == len(t.full) and t.est_min > 0
        for cmd in t.full + t.quick:
            assert (ROOT / cmd[0]).exists(), cmd  # a script, or a folder with __main__


def test_dry_run_lists_commands_and_quick_never_targets_committed_tables(tmp_path):
    out = regenerate.run(quick=True, dry_run=True, out_dir=str(tmp_path))
    assert [r["table"] for r in out["rows"]][:1] == [regenerate.TABLES[0].name]
    assert len(out["rows"]) == sum(len(t.quick) for t in regenerate.TABLES)
    assert (tmp_path / "regenerate_quick.md").is_file()
    with pytest.raises(ValueError, match="never write the committed tables"):
        regenerate.run(quick=True, dry_run=True, out_dir=str(ROOT / "benchmarks" / "results"))
    with pytest.raises(ValueError, match="unknown tables"):
        regenerate.run(quick=True, dry_run=True, only=["nope"], out_dir=str(tmp_path))


def test_environment_records_diff_hash_when_dirty(monkeypatch):
    from scorekit import provenance

    code = ("--", ".", ":(exclude)benchmarks/results")  # result tables never count as a change
    answers = {("rev-parse", "--short", "HEAD"): "abc1234",
               ("status", "--porcelain", "--untracked-files=no", *code): " M x.py",
               ("diff", "HEAD", *code): "diff --git a/x.py b/x.py\n+1\n"}
    monkeypatch.setattr(provenance, "git", lambda root, *a: answers[a])
    env = _report.environment()
    import hashlib

    assert env["commit"] == "abc1234" and env["dirty"] is True
    assert env["diff_sha256"] == \
        hashlib.sha256(answers[("diff", "HEAD", *code)].encode()).hexdigest()
    assert env["command"].startswith("python ") and "torch" in env and "versions" in env
    answers[("status", "--porcelain", "--untracked-files=no", *code)] = ""
    assert "diff_sha256" not in _report.environment()


@pytest.mark.slow
def test_quick_table_goes_to_the_quick_folder(tmp_path):
    """One real table through the suite: its results land in out_dir with provenance."""
    proc = subprocess.run([sys.executable, "scripts/benchmark.py", "suite=all", "quick=true",
                           "only=[fkc_anneal]", f"out_dir={tmp_path}"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads((tmp_path / "fkc_anneal_quick.json").read_text())
    assert payload["env"]["command"] == "python benchmarks/fkc_anneal.py --quick"
    assert (tmp_path / "fkc_anneal_quick.png").is_file()
    summary = json.loads((tmp_path / "regenerate_quick.json").read_text())
    assert [r["status"] for r in summary["rows"]] == ["ok"]


def test_benchmark_script_mistakes_are_one_line(tmp_path):
    """A mistyped suite, option or table: `error: ...` on one line, exit 2, nothing written."""
    for args, says in ((["suite=bogus"], "suite must be one of"),
                       (["suite=all", "only=[nope]", f"out_dir={tmp_path}", "quick=true"],
                        "only: unknown tables ['nope']"),
                       (["suite=frontier", "bogus=1"], "unknown option 'bogus'")):
        proc = subprocess.run([sys.executable, "scripts/benchmark.py", *args], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.splitlines() == [proc.stderr.strip()], proc.stderr
        assert proc.stderr.startswith("error: ") and says in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_failed_table_command_exits_1_after_writing_the_others(tmp_path, monkeypatch, capsys):
    """A table whose command fails does not stop the others; the suite then exits 1 with one
    line naming it (the command's own error was printed above), and the summary records it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_script", ROOT / "scripts" / "benchmark.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    fail = regenerate.Table("fails", [], [["-c", "raise SystemExit(3)"]], 1)
    works = regenerate.Table("works", [], [["-c", "print('table written')"]], 1)
    monkeypatch.setattr(regenerate, "TABLES", [fail, works])
    with pytest.raises(SystemExit) as stop:
        script.main(["suite=all", "quick=true", f"out_dir={tmp_path}"])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "error: 1 command(s) failed: fails: python -c raise SystemExit(3)" in err
    rows = json.loads((tmp_path / "regenerate_quick.json").read_text())["rows"]
    assert [(r["table"], r["status"]) for r in rows] == [("fails", "failed (exit 3)"),
                                                         ("works", "ok")]


def test_quick_command_writing_the_committed_tables_fails(tmp_path, monkeypatch):
    """A quick command that writes beside the committed tables (ignoring SCOREKIT_RESULTS_DIR)
    fails the suite, naming the file; one that leaves them alone passes."""
    committed = tmp_path / "committed"
    committed.mkdir()
    (committed / "kept.md").write_text("| a |\n")
    monkeypatch.setattr(regenerate, "COMMITTED", committed)
    leak = f"open({str(committed / 'leak.png')!r}, 'w').write('x')"
    tables = [regenerate.Table("leaks", [], [["-c", leak]], 1),
              regenerate.Table("clean", [], [["-c", "print('fine')"]], 1)]
    monkeypatch.setattr(regenerate, "TABLES", tables)
    with pytest.raises(regenerate.CommandsFailed, match="leaks"):
        regenerate.run(quick=True, out_dir=str(tmp_path / "quick"))
    rows = json.loads((tmp_path / "quick" / "regenerate_quick.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["failed (wrote into benchmarks/results: leak.png)",
                                           "ok"]


def test_jobs_run_tables_at_once_and_exclusive_ones_alone(tmp_path, monkeypatch):
    """jobs=2: the two shared tables overlap in time, each with half the cores' threads and its
    own log; the exclusive table runs before them, alone; rows keep the table order."""
    stamp = ("import json, os, sys, time; t0 = time.time(); time.sleep(1.0); "
             "print('out of', sys.argv[1]); "
             f"open({str(tmp_path / 'times.jsonl')!r}, 'a').write(json.dumps(dict(name="
             "sys.argv[1], start=t0, end=time.time(), omp=os.environ.get('OMP_NUM_THREADS')))"
             " + chr(10))")
    tables = [regenerate.Table("a", [], [["-c", stamp, "a"]], 1),
              regenerate.Table("timed", [], [["-c", stamp, "timed"]], 1, exclusive=True),
              regenerate.Table("b", [], [["-c", stamp, "b"]], 1)]
    monkeypatch.setattr(regenerate, "TABLES", tables)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(regenerate.os, "cpu_count", lambda: 4)
    out = regenerate.run(quick=True, out_dir=str(tmp_path / "q"), jobs=2)
    assert [(r["table"], r["status"]) for r in out["rows"]] == [("a", "ok"), ("timed", "ok"),
                                                                ("b", "ok")]
    runs = {r["name"]: r for r in map(json.loads, (tmp_path / "times.jsonl").read_text()
                                      .splitlines())}
    assert runs["timed"]["end"] <= min(runs["a"]["start"], runs["b"]["start"])
    assert max(runs["a"]["start"], runs["b"]["start"]) < min(runs["a"]["end"], runs["b"]["end"])
    assert runs["a"]["omp"] == runs["b"]["omp"] == "2"
    for name in ("a", "b", "timed"):
        assert f"out of {name}" in (tmp_path / "q" / "logs" / f"{name}.log").read_text()
    with pytest.raises(ConfigError, match="jobs must be a positive integer"):
        regenerate.run(quick=True, out_dir=str(tmp_path / "q"), jobs=0)
