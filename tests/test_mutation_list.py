"""The mutation list stays applicable: every snippet is in its file exactly once, the mutated
file compiles, and every listed test file exists (the harness itself: `python
tests/mutation`)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "mutation"))

from mutations import MUTATIONS, check  # noqa: E402


def test_at_least_30_named_mutations():
    assert len(MUTATIONS) >= 30 and len({m.name for m in MUTATIONS}) == len(MUTATIONS)


@pytest.mark.parametrize("m", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_mutation_applies(m):
    mutated = check(m)
    assert mutated != (ROOT / m.path).read_text()
    for t in m.tests:
        assert (ROOT / t).is_file(), t
