"""`pytest -m mutation`: the mutation harness as a test job (deselected by default; the same as
`python tests/mutation`): every named mutation must be caught by the tests that own its code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.mutation
def test_every_mutation_is_caught(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "tests/mutation", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "mutation.json").read_text())
    survived = [r["mutation"] for r in result["rows"] if not r["caught"]]
    assert not survived, survived
