"""scorekit: score-based diffusion models. Data flows one way, and so do the imports:

    processes -> scores -> data / objectives / nets -> (samplers) -> evaluation -> training

- `scorekit.processes`: forward processes (VP, sub-VP, VE, EDM, reflected, non-linear,
  Dirichlet) and the prediction conversions (score, epsilon, x0, Tweedie).
- `scorekit.scores`: closed-form scores (Gaussian, mixture, empirical).
- `scorekit.data`, `scorekit.objectives`, `scorekit.nets`: datasets, training losses, score
  networks.
- `samplers` (a top-level package): every sampler, driven by a score and a process.
- `scorekit.evaluation`: metrics, feature extractors, plots, evaluation of a trained run.
- `scorekit.training`: the Hydra-configured trainer, checkpoints, distributed training.
- `scorekit.io`: atomic safetensors / JSON files, used by training and samplers alike.

`scorekit.sde`, `scorekit.reflected`, `scorekit.dirichlet`, `scorekit.train`,
`scorekit.metrics` and `scorekit.config` keep the original import paths as re-exports.
Nothing is imported here: `import scorekit` stays cheap.
"""

__version__ = "0.1.0"
