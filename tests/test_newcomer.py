"""The commands a new user types, as they type them: one-line errors and no directories left by
a rejected command, a run log that holds the run, the wandb location and t_start printed,
progress bars, a loss plot in training steps, fd_nfe tables beside the run, and fkc_example
refusing models trained with other settings."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _config import compose_config as _cfg

from scorekit.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["trainer.steps=10", "trainer.log_every=5", "trainer.batch_size=32", "model.hidden=16",
         "model.depth=1", "data.n_train=400", "data.n_test=100", "eval.n_samples=50",
         "sampler.steps=5"]


def _script(name, *args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_mistyped_sampler_option_one_line_no_directory(tmp_path):
    proc = _script("train.py", "sampler.grid=cosinee", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: sampler section") and "cosinee" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no outputs/default/<stamp>/


def test_unknown_key_one_line_no_directory(tmp_path):
    proc = _script("train.py", "+trainer.stepz=3", cwd=tmp_path)
    assert proc.returncode == 2 and "trainer.stepz" in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


def test_sample_without_run_dir_one_line(tmp_path):
    proc = _script("sample.py", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: run_dir=... is required, e.g. python scripts/sample.py "
        "run_dir=outputs/default/<stamp>"]
    assert list(tmp_path.iterdir()) == []


def test_sample_with_bad_run_dir_leaves_nothing(tmp_path):
    proc = _script("sample.py", "run_dir=outputs/does_not_exist", cwd=tmp_path)
    assert proc.returncode == 2 and "no config.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


def test_optimize_grid_user_errors_one_line_and_leave_nothing(tmp_path):
    proc = _script("optimize_grid.py", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: run_dir=...")
    proc = _script("optimize_grid.py", "run_dir=outputs/does_not_exist", cwd=tmp_path)
    assert proc.returncode == 2 and "no config.yaml" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # Hydra's run dir (run_dir itself) is removed


def test_full_error_still_available(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"),
                           "sampler.grid=cosinee"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode != 0 and "Traceback" in proc.stderr


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """A small run through scripts/train.py with wandb offline."""
    cwd = tmp_path_factory.mktemp("cli")
    proc = _script("train.py", *SMALL, "logger.mode=offline", "hydra.run.dir=run", cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return cwd / "run", proc


def test_train_log_holds_the_console_lines(cli_run):
    run, proc = cli_run
    log = (run / "train.log").read_text()
    assert "step 5/10  loss" in log and "step 10/10  loss" in log
    assert '"sliced_wasserstein"' in log and "run dir:" in log
    for line in ("step 10/10  loss", "run dir:"):  # what the console showed (no TTY: no bar)
        assert line in proc.stdout


def test_wandb_location_printed(cli_run):
    run, proc = cli_run
    line = next(x for x in proc.stdout.splitlines() if x.startswith("wandb (offline): "))
    folder = Path(line.split(": ", 1)[1].split(";")[0])
    assert folder.is_dir() and folder.parent == (run / "wandb").resolve()
    assert "wandb sync" in line


def test_teleport_t_start_printed(tmp_path, capsys):
    tr = Trainer(_cfg(SMALL + ["sampler.teleport=true", "trainer.progress=false"]),
                 run_dir=tmp_path / "run")
    tr.fit()
    metrics = tr.evaluate()
    out = capsys.readouterr().out
    assert f"teleported to t_start={metrics['t_start']:.4g}" in out
    assert f"t_start={metrics['t_start']:.4g}" in (tmp_path / "run" / "train.log").read_text()


def test_evaluation_sampling_shows_a_bar(tmp_path, capsys):
    tr = Trainer(_cfg(SMALL + ["trainer.progress=false"]), run_dir=tmp_path / "run")
    tr.sample(8, progress=True)
    assert "em:" in capsys.readouterr().err  # the per-step bar, named after the method
    tr.sample(8)  # trainer.progress=false (and no terminal): no bar
    assert "em:" not in capsys.readouterr().err


def test_loss_plot_is_in_training_steps(tmp_path):
    from matplotlib.figure import Figure

    from scorekit.evaluation.plotting import _loss_panel

    ax = Figure().subplots()
    _loss_panel(ax, [3.0, 2.0, 1.5, 1.2], log_every=50)
    assert ax.get_xlabel() == "training step"
    assert list(ax.lines[0].get_xdata()) == [50, 100, 150, 200]
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_fd_nfe_tables_default_to_the_run_dir(tmp_path, monkeypatch):
    sys.path.insert(0, str(ROOT))
    from benchmarks import _report, fd_nfe

    monkeypatch.delenv("SCOREKIT_RESULTS_DIR", raising=False)
    assert fd_nfe._destination(None, False, tmp_path) == tmp_path / "fd_nfe"
    assert fd_nfe._destination(None, True, tmp_path) == _report.COMMITTED
    assert fd_nfe._destination(str(tmp_path / "x"), True, tmp_path) == tmp_path / "x"


def test_fkc_example_refuses_models_trained_otherwise(tmp_path):
    sys.path.insert(0, str(ROOT))
    from scripts import fkc_example

    run = tmp_path / "ring4"
    run.mkdir()
    cfg = _cfg(fkc_example.overrides("ring4", 7))
    (run / "config.yaml").write_text(json.dumps(cfg))  # YAML is a superset of JSON
    with pytest.raises(SystemExit, match="trainer.steps: 7 there, 600 now"):
        fkc_example._trainer("ring4", tmp_path, 600)


def test_optimize_grid_script_writes_a_grid_the_sampler_reads(cli_run):
    """The script's own path end to end: a tuned grid beside the run, then sampled with."""
    run, _ = cli_run
    proc = _script("optimize_grid.py", f"run_dir={run}", "nfe=4", "n=32", "max_evals=6",
                   cwd=run.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    grid = run / "grids" / "dpm_solver_nfe4.json"  # the run's em is not deterministic
    assert "not deterministic: tuning dpm_solver" in proc.stdout and grid.is_file()
    assert f"sampler.grid={grid}" in proc.stdout
    res = Trainer.from_run_dir(run).sample(8, {"method": "dpm_solver", "steps": None,
                                               "grid": str(grid)}, seed=0)
    assert res.nfe == 4
