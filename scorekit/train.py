"""The trainer under its original import path (`scorekit.train.Trainer`).

The code lives in `scorekit.training`; this module only re-exports it.
"""

from scorekit.training import SudokuTrainer, Trainer, trainer_class

__all__ = ["Trainer", "SudokuTrainer", "trainer_class"]
