"""The README's Python sampling tour runs as written."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs_and_states_its_values(tmp_path, monkeypatch):
    """Run the tour statement by statement; after each statement whose lines carry a comment
    `NFE = N`, the result it names has exactly that NFE; the stop, t_start and gain comments
    hold as stated."""
    import ast

    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    tour = next(b for b in blocks if "samplers.sample(" in b)
    lines = tour.splitlines()
    ns: dict = {}
    checked = 0
    for stmt in ast.parse(tour).body:
        code = ast.get_source_segment(tour, stmt)
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own documentation
        text = "\n".join(lines[stmt.lineno - 1:stmt.end_lineno])
        if "# 5, 6.0" in text:  # the callback's stop: step index and NFE
            assert (ns["res"].info["stopped_at_step"], ns["res"].nfe) == (5, 6.0)
            checked += 1
        stated = re.search(r"# NFE = (\d+)", text)
        if stated is None:
            continue
        if isinstance(stmt, ast.Assign):
            name = stmt.targets[0].id
        else:  # an expression line reading `res....` right after the call
            name = re.match(r"\s*(\w+)", code).group(1)
        assert ns[name].nfe == int(stated.group(1)), (code, ns[name].nfe)
        checked += 1
    assert checked >= 5
    assert ns["res"].x.shape == (2000, 2)
    assert torch.equal(ns["a"][:8], ns["b"])  # the per-sample seeds paragraph's claim
    tele = ns["res_tp"]  # the teleport example: heun's 2 x 12 - 1 + the probe's share
    assert tele.info["t_start_probe_evals"] == 16 * 512
    assert tele.nfe == 2 * 12 - 1 + 16 * 512 / 2000
    assert ns["nll"].shape == (2000,) and ns["nll"].isfinite().all()
    assert (tmp_path / "grid8.json").is_file()
    assert ns["seen"] and len(ns["seen"]) == 6  # stopped at step 5: six callbacks
    assert abs(ns["res_tp"].info["t_start"] - 0.42) < 0.01
    assert 2 < ns["g"]["gain"] < 8  # "~4"


def test_readme_new_solver_block_runs():
    """The Architecture section's one-function solver registers and samples as shown."""
    import samplers

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if "samplers.register(" in b)
    ns: dict = {}
    try:
        exec(compile(block, "README.md", "exec"), ns)  # noqa: S102 - our own documentation
        assert ns["res"].nfe == 50 and ns["res"].x.shape == (1000, 2)
    finally:
        samplers.api._METHODS.pop("pf_euler", None)
