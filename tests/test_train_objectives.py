"""Hydra wiring of the TSM, local-DSM and reflected-DSM objectives and their experiment configs."""


import pytest
import torch
from _config import compose_config as _cfg

from scorekit.config import ConfigError
from scorekit.objectives import TSM, LocalDSM, ReflectedDSM
from scorekit.reflected import ReflectedSDE
from scorekit.sde import DoubleWellSDE
from scorekit.train import Trainer

SMALL = ["trainer.steps=20", "trainer.ckpt_every=20", "trainer.batch_size=64",
         "trainer.log_every=10", "trainer.progress=false", "model.hidden=32", "model.depth=2",
         "data.n_train=2000", "data.n_test=500", "eval.n_samples=200", "eval.n_proj=16",
         "eval.plot=false", "sampler.steps=20"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment,objective", [("tsm_banana", TSM),
                                                  ("local_dsm_nonlinear", LocalDSM)])
def test_experiment_trains_and_samples(experiment, objective, tmp_path):
    """Each experiment config builds its objective, trains 20 steps and samples finite points
    (the non-linear one by reverse EM without a Tweedie step: NFE = steps)."""
    tr = Trainer(_cfg([f"experiment={experiment}", *SMALL]), run_dir=tmp_path)
    assert isinstance(tr.objective, objective)
    tr.fit()
    metrics = tr.evaluate()
    assert metrics["nonfinite_samples"] == 0 and metrics["nfe"] >= 20
    assert (tmp_path / "metrics.json").exists()
    if experiment == "local_dsm_nonlinear":
        assert isinstance(tr.sde, DoubleWellSDE) and metrics["nfe"] == 20  # no Tweedie step


@pytest.mark.parametrize("data", ["gmm", "double_well"])
def test_tsm_objective_with_clean_score_datasets(data, tmp_path):
    tr = Trainer(_cfg(["objective=tsm", f"data={data}", *SMALL]), run_dir=tmp_path)
    x0 = tr.train_x[:8]
    torch.testing.assert_close(tr.objective.clean_score(x0), tr.data.score(x0))


def test_tsm_needs_a_clean_score(tmp_path):
    with pytest.raises(ValueError, match="objective 'tsm' needs the clean data score"):
        Trainer(_cfg(["objective=tsm", "data=moons", *SMALL]), run_dir=tmp_path)


def test_local_dsm_on_linear_process(tmp_path):
    tr = Trainer(_cfg(["objective=local_dsm", *SMALL]), run_dir=tmp_path)
    assert tr.objective.kernel_name == "exact"
    tr.fit()


DIGITS_SMALL = [o for o in SMALL if not o.startswith("data.")]  # digits: a fixed set


@pytest.mark.slow
def test_digits_reflected_trains_and_samples_in_the_box(tmp_path):
    """experiment=digits_reflected: digits in [0, 1], reflected DSM, 20 training steps, then the
    folded sampler: every sample in [0, 1] (nothing clipped), NFE = steps."""
    tr = Trainer(_cfg(["experiment=digits_reflected", *DIGITS_SMALL]), run_dir=tmp_path)
    assert isinstance(tr.sde, ReflectedSDE) and isinstance(tr.objective, ReflectedDSM)
    assert float(tr.train_x.min()) == 0.0 and float(tr.train_x.max()) == 1.0
    tr.fit()
    metrics = tr.evaluate()
    assert metrics["nfe"] == 20 and metrics["nonfinite_samples"] == 0
    assert metrics["out_of_range_fraction"] == 0.0
    x = tr.sample(50, {"method": "em", "steps": 5, "denoise": "none"}).x
    assert tr.sde.contains(x).all()


def test_data_outside_the_box_is_rejected(tmp_path):
    with pytest.raises(ConfigError, match=r"spans \[-1, 1\], outside the box \[0, 1\]"):
        Trainer(_cfg(["experiment=digits_reflected", "data.low=-1.0", *DIGITS_SMALL]),
                run_dir=tmp_path)
