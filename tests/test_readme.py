"""The README's Python sampling tour runs as written."""

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
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


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_training_objectives_and_dirichlet_blocks_run(tmp_path, monkeypatch):
    """The other Python blocks, verbatim: training from Python (500 digits steps, its metrics
    and reload), the objectives beyond DSM and the Dirichlet/Sudoku block (NFE = 400)."""
    monkeypatch.chdir(tmp_path)
    python = _blocks("python")
    train = next(b for b in python if "from scorekit.config import compose" in b)
    ns: dict = {}
    exec(compile(train, "README.md", "exec"), ns)  # noqa: S102 - our own documentation
    assert ns["metrics"]["train_steps"] == 500 and ns["trainer"].step == 500
    assert (tmp_path / "outputs" / "mine" / "metrics.json").is_file()
    objectives = next(b for b in python if "LocalDSM" in b)
    ns = {}
    exec(compile(objectives, "README.md", "exec"), ns)  # noqa: S102
    assert ns["loss"].dim() == 0 and torch.isfinite(ns["loss"])
    dirichlet = next(b for b in python if "JacobiDiffusion" in b)
    ns = {}
    exec(compile(dirichlet, "README.md", "exec"), ns)  # noqa: S102
    assert ns["res"].nfe == 400 and ns["res"].x.shape == (8, 81, 9)
    assert ns["x_t"].shape == (8, 81, 9) and torch.isfinite(ns["loss"])


# Tour commands, as written but shorter: (pattern, replacement) applied to each, then the
# overrides appended where the command trains or samples.
_SHORTER = {"train.py": ["trainer.steps=20", "eval.n_samples=200", "trainer.progress=false",
                         "trainer.ckpt_every=10"],
            "sample.py": ["progress=false"], "fkc_example.py": []}
_REPLACE = [(r"trainer\.steps=\d+ ?", ""), (r"sampler\.steps=200", "sampler.steps=20"),
            (r"sampler\.steps=100", "sampler.steps=20"), (r"n=2000\b", "n=200"),
            (r"n=1000000 batch=10000", "n=2000 batch=500"),
            (r"sampler\.beta=2", "sampler.beta=2 sampler.steps=50 n=500"),
            (r"sampler\.teleport=true", "sampler.teleport=true n=500"),
            (r"out_dir=outputs/fkc", "out_dir=outputs/fkc train_steps=50 n=300 steps=50")]
# Not run: a local CIFAR-10 export, ~20-minute UNet / Sudoku trainings (tests/
# test_experiments_images.py and test_train_sudoku.py run them small) and the benchmarks.
_SKIP = ("cifar10", "digits_edm", "digits_vp", "patches_edm", "sudoku", "benchmark.py")


@pytest.mark.slow
def test_readme_tour_commands_run(tmp_path):
    """Every Tour command that finishes in under a minute, in README order (the resume line
    creates outputs/run1 for the sampling lines), with fewer steps and samples."""
    import os
    import subprocess
    import sys

    bash = next(b for b in _blocks("bash") if "python scripts/sample.py run_dir=outputs/run1" in b)
    root = README.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    ran = 0
    for line in bash.splitlines():
        cmd = line.split("#")[0].strip()
        if not cmd.startswith("python scripts/") or any(k in cmd for k in _SKIP):
            continue
        for pat, rep in _REPLACE:
            cmd = re.sub(pat, rep, cmd)
        words = cmd.split()
        script = words[1].split("/")[-1]
        args = words[2:] + _SHORTER[script]
        if script == "train.py" and not any(a.startswith("hydra.run.dir") for a in args):
            args.append(f"hydra.run.dir=outputs/t{ran}")
        proc = subprocess.run([sys.executable, str(root / words[1]), *args], cwd=tmp_path,
                              env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, (cmd, proc.stderr[-2000:])
        ran += 1
    assert ran >= 12
    assert (tmp_path / "outputs" / "run1" / "big" / "manifest.json").is_file()
    assert (tmp_path / "outputs" / "fkc" / "fkc_anneal.png").is_file()
