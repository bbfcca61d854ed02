"""Sample from a trained run with any registered sampler and report NFE and metrics.

    python scripts/sample.py run_dir=outputs/default/<stamp> sampler=pc sampler.steps=200
    python scripts/sample.py run_dir=... n=1000000 batch=10000 out=samples/   # shards to disk

With `out=` the samples are streamed to disk in shards (bounded memory); rerunning the same
command after an interruption completes the missing shards only. Several processes or nodes:
`torchrun --nproc_per_node=K scripts/sample.py run_dir=... out=...` splits the shards over the
ranks by index (sample i always comes from seed + i, so the files do not depend on K).
"""

import contextlib
import json
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

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
    trainer = Trainer.from_run_dir(cfg.run_dir, checkpoint=cfg.ckpt,
                                   eval={"n_samples": cfg.n, "use_ema": cfg.use_ema,
                                         "seed": cfg.seed, "plot": cfg.plot},
                                   trainer={"allow_pickle": cfg.allow_pickle})
    sampler = cfg.get("sampler") or trainer.cfg.sampler
    if cfg.out is not None:
        res = trainer.sample_to_disk(cfg.out, n=cfg.n, batch_size=cfg.batch, sampler=sampler,
                                     use_ema=cfg.use_ema, seed=cfg.seed, progress=cfg.progress)
        if trainer.dist.is_main:
            print(f"{res.n} samples in {res.shards} shards under {res.out_dir} "
                  f"({len(res.written)} written now by rank 0, {len(res.skipped)} already "
                  f"there; {trainer.dist.world_size} rank(s))")
        _remove_if_unused(Path(out_dir))
        return
    if trainer.dist.enabled:
        raise SystemExit("under torchrun, scripts/sample.py streams to disk: pass out=<dir>")
    metrics = trainer.evaluate(sampler=sampler, out_dir=out_dir)
    print(f"sampler: {OmegaConf.to_container(sampler)}")
    print(f"NFE per sample: {metrics['nfe']:.1f}")
    keys = ("sliced_wasserstein", "sliced_wasserstein_floor", "mode_weight_tv",
            "mode_std_ratio_mean", "off_mode_fraction", "solved_fraction", "per_clues",
            "sample_time_s")
    print(json.dumps({k: metrics[k] for k in keys if k in metrics}, indent=2))
    print(f"wrote {out_dir}/metrics.json and samples.png")


def _remove_if_unused(hydra_dir: Path) -> None:
    """Hydra's ${now:}-named dir of a streaming call holds nothing but an empty job log: the
    samples went to out=, so do not leave it (nor an emptied samples/) behind."""
    log = hydra_dir / "sample.log"
    with contextlib.suppress(OSError):
        if log.is_file() and log.stat().st_size == 0:
            log.unlink()
        hydra_dir.rmdir()
        hydra_dir.parent.rmdir()  # <run_dir>/samples/, if nothing else is in it


if __name__ == "__main__":
    sys.argv += distributed.hydra_overrides()
    main()
