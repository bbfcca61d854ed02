"""The command line's config from Python (`scorekit.config.compose`, `Trainer.from_overrides`),
and mistakes found before the first training step."""

import pytest
from _config import compose_config

from scorekit.config import ConfigError, compose, validate
from scorekit.train import Trainer

TINY = ["model.hidden=16", "model.depth=1", "trainer.steps=3", "trainer.batch_size=8",
        "trainer.progress=false", "data.n_train=64", "data.n_test=16", "eval.plot=false",
        "eval.n_samples=8", "sampler=em", "sampler.steps=4"]


def test_compose_equals_the_command_lines_config():
    for overrides in ([], ["experiment=digits", "trainer.steps=7"], ["sampler=heun", "seed=3"]):
        assert compose(overrides) == validate(compose_config(overrides))
    assert compose(["trainer.steps=7"], experiment="digits").data.name == "digits"


def test_from_overrides_trains(tmp_path):
    tr = Trainer.from_overrides(TINY, run_dir=tmp_path)
    tr.fit()
    assert tr.step == 3 and (tmp_path / "config.yaml").is_file()


@pytest.mark.parametrize("overrides,match", [
    (["sampler.grid=cosinee"], "unknown grid 'cosinee'"),
    (["+sampler.snrr=0.1"], "unknown option .snrr."),
    (["sampler=heun", "sampler.steps=1"], "heun needs steps >= 2"),
])
def test_bad_sampler_values_fail_before_training(overrides, match, tmp_path):
    """Refused when the trainer is built: nothing is trained and nothing written."""
    with pytest.raises(ConfigError, match=match):
        Trainer.from_overrides(TINY + overrides, run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


@pytest.mark.parametrize("seed", ["abc", "1.5", "-2", "true"])
def test_bad_seed_named(seed):
    with pytest.raises(ConfigError, match="'seed'"):
        compose([f"seed={seed}"])


def test_unknown_override_named():
    with pytest.raises(ConfigError, match="sampler/nope"):
        compose(["sampler=nope"])
