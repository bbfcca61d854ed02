"""Sample from a trained run with any registered sampler and report NFE and metrics.

    python scripts/sample.py run_dir=outputs/default/<stamp> sampler=pc sampler.steps=200
    python scripts/sample.py run_dir=... n=1000000 batch=10000 out=samples/   # shards to disk

With `out=` the samples are streamed to disk in shards (bounded memory); rerunning the same
command after an interruption completes the missing shards only. Several processes or nodes:
`torchrun --nproc_per_node=K scripts/sample.py run_dir=... out=...` splits the shards over the
ranks by index (sample i always comes from seed + i, so the files do not depend on K).
"""

import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from scorekit.cli import remove_if_empty, require_args, user_errors
from scorekit.config import ConfigError
from scorekit.train import Trainer  # from_run_dir picks SudokuTrainer for Sudoku runs
from scorekit.training import distributed


@hydra.main(config_path="../configs", config_name="sample", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        _main(cfg)
    finally:
        distributed.shutdown()


def _main(cfg: DictConfig) -> None:
    out_dir = HydraConfig.get().runtime.output_dir
    with user_errors(out_dir):
        trainer = Trainer.from_run_dir(cfg.run_dir, checkpoint=cfg.ckpt,
                                       eval={"n_samples": cfg.n, "use_ema": cfg.use_ema,
                                             "seed": cfg.seed, "plot": cfg.plot},
                                       trainer={"allow_pickle": cfg.allow_pickle,
                                                "progress": cfg.progress})
        _run(cfg, trainer, out_dir)


def _run(cfg: DictConfig, trainer: Trainer, out_dir: str) -> None:
    sampler = cfg.get("sampler") or trainer.cfg.sampler
    if cfg.out is not None:
        shards = -(-cfg.n // cfg.batch)
        trainer._print(f"streaming {cfg.n} samples in {shards} shards of {cfg.batch} into "
                       f"{cfg.out} (shards already there are kept)")
        res = trainer.sample_to_disk(cfg.out, n=cfg.n, batch_size=cfg.batch, sampler=sampler,
                                     use_ema=cfg.use_ema, seed=cfg.seed, progress=cfg.progress)
        if trainer.dist.is_main:
            print(f"{res.n} samples in {res.shards} shards under {res.out_dir} "
                  f"({len(res.written)} written now by rank 0, {len(res.skipped)} already "
                  f"there; {trainer.dist.world_size} rank(s))")
        remove_if_empty(out_dir, stop=cfg.run_dir)  # the samples went to out=
        return
    if trainer.dist.enabled:
        raise ConfigError("under torchrun, scripts/sample.py streams to disk: pass out=<dir>")
    trainer.log_path = Path(out_dir) / "sample.log"
    metrics = trainer.evaluate(sampler=sampler, out_dir=out_dir)
    trainer._print(f"sampler: {OmegaConf.to_container(sampler)}")
    trainer._print(f"NFE per sample: {metrics['nfe']:.1f}")
    keys = ("sliced_wasserstein", "sliced_wasserstein_floor", "mode_weight_tv",
            "mode_std_ratio_mean", "off_mode_fraction", "solved_fraction", "per_clues",
            "sample_time_s")
    trainer._print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    trainer._print(f"wrote {out_dir}/metrics.json, samples.png and sample.log")


if __name__ == "__main__":
    require_args("run_dir", example="python scripts/sample.py run_dir=outputs/default/<stamp>")
    sys.argv += distributed.hydra_overrides()
    main()
