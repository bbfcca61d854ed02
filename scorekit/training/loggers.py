"""Experiment logging through wandb, disabled by default and never requiring an account.

mode "disabled" imports nothing; "offline" writes runs under `<run_dir>/wandb` for a later
`wandb sync`; "online" is the user's explicit choice.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class WandbLogger:
    """Thin wrapper: `log(dict, step)`, `summary(dict)`, `finish()`; no-ops when disabled."""

    def __init__(self, mode: str = "disabled", project: str = "scorekit", run_dir: str | Path = ".",
                 config: dict[str, Any] | None = None, name: str | None = None,
                 tags: list[str] | None = None):
        self.mode = mode
        self._run = None
        if mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        self._run = wandb.init(mode=mode, project=project, dir=str(run_dir), config=config,
                               name=name, tags=tags or None, reinit="finish_previous")

    def where(self) -> str | None:
        """Where this run's wandb files go, as a line to print (None when disabled)."""
        if self._run is None:
            return None
        folder = Path(self._run.dir).parent  # .../wandb/<offline-run-...>/files -> its run
        tail = f"; upload later with `wandb sync {folder}`" if self.mode == "offline" else ""
        return f"wandb ({self.mode}): {folder}{tail}"

    def log(self, values: dict[str, float], step: int) -> None:
        if self._run is not None:
            self._run.log(values, step=step)

    def log_table(self, key: str, rows: list[dict[str, Any]]) -> None:
        """A list of flat dicts (same keys) as a wandb.Table, e.g. a benchmark's summary."""
        if self._run is not None and rows:
            import wandb

            columns = list(rows[0])
            self._run.log({key: wandb.Table(columns=columns,
                                            data=[[r.get(c) for c in columns] for r in rows])})

    def log_image(self, key: str, path: str | Path) -> None:
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Image(str(path))})

    def summary(self, values: dict[str, Any]) -> None:
        if self._run is not None:
            for k, v in values.items():
                self._run.summary[k] = v

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
