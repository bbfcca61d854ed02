"""The code base passes the project's ruff configuration (pyproject.toml)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_clean():
    ruff = shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it comes with the [dev] extra)")
    proc = subprocess.run(
        [ruff, "check", "--output-format", "concise",
         "scorekit", "samplers", "scripts", "tests", "benchmarks"],
        cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
