"""`scripts/gpu_check.sh --dry-run` runs its whole plan on the CPU: every part passes and writes
its table, so the GPU run on a lent machine is one prepared command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--dry-run",
                           str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] and summary["env"]["dry_run"]
    assert [p["part"] for p in summary["parts"]] == ["gpu_tests", "hot_loop", "closed_form",
                                                     "digits_edm"]
    for table in ("hot_loop_cpu", "closed_form_cpu", "fd_nfe_cpu"):
        assert (tmp_path / f"{table}.md").is_file() and (tmp_path / f"{table}.png").is_file()
    assert "all parts passed" in (tmp_path / "summary.md").read_text()


def test_gpu_check_refuses_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the real check")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"),
                           str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr
