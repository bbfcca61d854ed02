"""The README's Python sampling tour runs as written."""

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_sampling_tour_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tour writes its tuned grid to grid8.json
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    tour = next(b for b in blocks if "samplers.sample(" in b)
    ns: dict = {}
    exec(compile(tour, "README.md", "exec"), ns)  # noqa: S102 - our own documentation
    assert ns["res"].x.shape == (2000, 2)
    assert torch.equal(ns["a"][:8], ns["b"])  # the per-sample seeds paragraph's claim
    tele = ns["res_tp"]  # the teleport example: heun's 2 x 12 - 1 + the probe's share
    assert tele.info["t_start_probe_evals"] == 16 * 512
    assert tele.nfe == 2 * 12 - 1 + 16 * 512 / 2000
    assert ns["nll"].shape == (2000,) and ns["nll"].isfinite().all()
    assert (tmp_path / "grid8.json").is_file() and ns["g"]["gain"] > 1


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
