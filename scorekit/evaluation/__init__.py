"""Evaluation: how good are samples, and pictures of them.

- `metrics`: Fréchet distance, sliced Wasserstein, MMD, per-mode metrics of mixtures.
- `features`: feature extractors for Fréchet distances (FID's InceptionV3 from a local weights
  file, a project-trained digits classifier, raw pixels) and streaming feature statistics.
- `plotting`: sample grids, 2-D scatter plots, Sudoku boards, loss curves.
- `sampling`: sampling a trained run and writing its `metrics.json` and `samples.png`
  (`SamplingMixin`, part of `scorekit.training.Trainer`).
"""
