"""Train a score model and sample from it: `python scripts/train.py [group=option] [key=value]`.

Writes config.yaml, checkpoints/last.safetensors, metrics.json and samples.png to the Hydra run
dir. Resume a killed run with `hydra.run.dir=<its dir> trainer.resume=true`. With
`model=closed_form` (e.g. `experiment=digits_closed_form`) there is no training step: the run
caches the training data as its checkpoint and samples from the closed-form smoothed score.
`experiment=sudoku` trains a Dirichlet-diffusion Sudoku solver and reports the solved fraction.
"""

import json

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from scorekit.train import trainer_class


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = HydraConfig.get().runtime.output_dir
    metrics = trainer_class(cfg)(cfg, run_dir=run_dir).run()
    keys = ("sliced_wasserstein", "sliced_wasserstein_floor", "sliced_wasserstein_prior",
            "solved_fraction", "per_clues", "nfe", "train_time_s", "sample_time_s")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    print(f"run dir: {run_dir}  (samples.png, metrics.json, checkpoints/)")


if __name__ == "__main__":
    main()
