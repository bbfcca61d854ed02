"""Training: config -> data, process, objective, network -> fitted, checkpointed model.

- `trainer`: `Trainer` (build from a validated config, fit, checkpoint, resume, evaluate) and
  `trainer_class` (the task trainer a config asks for).
- `step`: one optimizer step (chunked batches, gradient accumulation, mixed precision, EMA).
- `sudoku`: the Sudoku task (`SudokuTrainer`: its batches and its puzzle-solving evaluation).
- `checkpoint`: model, EMA and optimizer state as checkpoint tensors (files: `scorekit.io`).
- `config`: the schema and validation of the Hydra configuration.
- `distributed`: torchrun / DDP ranks; `signals`: SIGTERM/SIGINT -> checkpoint and stop;
  `loggers`: wandb (disabled or offline by default).
"""

from scorekit.training.sudoku import SudokuTrainer
from scorekit.training.trainer import Trainer, trainer_class

__all__ = ["Trainer", "SudokuTrainer", "trainer_class"]
