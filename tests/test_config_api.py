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
        Trainer.from_overrides(TINY + overrides, run_dir=tmp_path / "new" / "run")
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone too


def test_rejected_trainer_keeps_a_folder_it_did_not_make(tmp_path):
    """A run dir that existed stays (with its files), without the lock; a corrected trainer
    then starts there."""
    from scorekit.lock import LOCK_NAME

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="unknown grid"):
        Trainer.from_overrides(TINY + ["sampler.grid=cosinee"], run_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(ConfigError, match="needs steps >= 2"):  # a later failure: data built
        Trainer.from_overrides(TINY + ["sampler=heun", "sampler.steps=1"],
                               run_dir=tmp_path / "a" / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    Trainer.from_overrides(TINY, run_dir=tmp_path).fit()
    assert (tmp_path / "config.yaml").is_file() and not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("seed", ["abc", "1.5", "-2", "true"])
def test_bad_seed_named(seed):
    with pytest.raises(ConfigError, match="'seed'"):
        compose([f"seed={seed}"])


def test_unknown_override_named():
    with pytest.raises(ConfigError, match="sampler/nope"):
        compose(["sampler=nope"])
