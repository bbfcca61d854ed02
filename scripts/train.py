"""Train a score model and sample from it: `python scripts/train.py [group=option] [key=value]`.

Writes config.yaml, checkpoints/last.safetensors, metrics.json and samples.png to the Hydra run
dir. Resume a killed run with `hydra.run.dir=<its dir> trainer.resume=true`. With
`model=closed_form` (e.g. `experiment=digits_closed_form`) there is no training step: the run
caches the training data as its checkpoint and samples from the closed-form smoothed score.
`experiment=sudoku` trains a Dirichlet-diffusion Sudoku solver and reports the solved fraction.

Multi-GPU / multi-node: `torchrun --nproc_per_node=N scripts/train.py ...`; every rank uses rank
0's run dir. SIGTERM / SIGINT stop training after the current step with a checkpoint and exit
with 128 + the signal number (143 for SIGTERM), without evaluating. A config, checkpoint or
run-dir lock error prints one line (`HYDRA_FULL_ERROR=1` for the traceback), exits 2 and leaves
no new directory behind.
"""

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scorekit.cli import remove_if_empty, user_errors
from scorekit.train import trainer_class
from scorekit.training import distributed
from scorekit.training.signals import StopRequested


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    hydra_dir = HydraConfig.get().runtime.output_dir
    trainer = None
    try:
        with user_errors(hydra_dir):
            trainer = trainer_class(cfg)(cfg, run_dir=hydra_dir)
        if Path(hydra_dir).resolve() != trainer.run_dir.resolve():
            remove_if_empty(hydra_dir)  # this rank's own ${now:}-named dir
        metrics = trainer.run()
    except StopRequested as stop:
        if trainer.dist.is_main:
            print(stop, file=sys.stderr)
        raise SystemExit(stop.exit_code) from None
    finally:
        distributed.shutdown()
    if not trainer.dist.is_main:
        return
    keys = ("sliced_wasserstein", "sliced_wasserstein_floor", "sliced_wasserstein_prior",
            "solved_fraction", "per_clues", "nfe", "train_time_s", "sample_time_s")
    trainer._print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    trainer._print(f"run dir: {trainer.run_dir}  (samples.png, metrics.json, train.log, "
                   f"checkpoints/)")


if __name__ == "__main__":
    sys.argv += distributed.hydra_overrides()
    main()
