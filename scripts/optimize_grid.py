"""Tune a deterministic sampler's time grid to a trained run at a fixed NFE budget and write it
next to the run, for `scripts/sample.py ... sampler.grid=<file>`.

    python scripts/optimize_grid.py run_dir=outputs/digits_edm/<stamp> nfe=10 [sampler=unipc]
    python scripts/sample.py run_dir=... sampler=dpm_solver sampler.steps=null \
        sampler.grid=<run_dir>/grids/dpm_solver_nfe10.json

The grid minimises the distance of the NFE-budget solve to a fine solve of the same prior
draws (`samplers.optimize_grid`); the run's sampler section is used when its method is
deterministic (dpm_solver, unipc, heun, closed_form), dpm_solver otherwise.
"""

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import samplers
from scorekit.cli import require_args, user_errors
from scorekit.train import Trainer


@hydra.main(config_path="../configs", config_name="optimize_grid", version_base="1.3")
def main(cfg: DictConfig) -> None:
    # Hydra's run dir is run_dir itself: one it had to create (a mistyped path) is removed.
    with user_errors(HydraConfig.get().runtime.output_dir):
        trainer = Trainer.from_run_dir(cfg.run_dir, checkpoint=cfg.ckpt,
                                       trainer={"allow_pickle": cfg.allow_pickle})
        sampler = cfg.get("sampler") or trainer.cfg.sampler
        if sampler.method not in samplers.grid_opt.DETERMINISTIC:
            print(f"the run's sampler {sampler.method!r} is not deterministic: tuning "
                  "dpm_solver")
            sampler = OmegaConf.create({"method": "dpm_solver"})
        res = trainer.optimize_grid(cfg.nfe, sampler=sampler, use_ema=cfg.use_ema, n=cfg.n,
                                    max_evals=cfg.max_evals, path=cfg.out)
    print(f"{res['method']} at {cfg.nfe} NFE: distance to the fine solve "
          f"{res['error_uniform']:.3g} (logSNR-uniform grid) -> {res['error']:.3g} "
          f"({res['gain']:.1f}x) after {res['evaluations']} trial grids")
    print(f"wrote {res['path']}; sample with: python scripts/sample.py run_dir={cfg.run_dir} "
          f"sampler={res['method']} sampler.steps=null sampler.grid={res['path']}")


if __name__ == "__main__":
    require_args("run_dir", example="python scripts/optimize_grid.py "
                 "run_dir=outputs/default/<stamp> nfe=10")
    main()
