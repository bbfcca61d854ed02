"""Stopping a training run on SIGTERM or SIGINT: finish the step, checkpoint, then stop.

Schedulers (SLURM, Kubernetes, torchrun's agent) send SIGTERM some seconds before they kill a
job. While `SignalFlag` is active such a signal only records itself; the trainer checks the
flag after each optimizer step (under torchrun, agreed over ranks), writes a checkpoint and
raises `StopRequested`, which `scripts/train.py` turns into exit code 128 + signal number.
"""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequested(Exception):
    """Training stopped on a signal after writing a checkpoint at `step`."""

    def __init__(self, signum: int, step: int, checkpoint: Path):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        super().__init__(f"{signal.Signals(signum).name} received: stopped after step {step} "
                         f"with a checkpoint at {checkpoint}; continue with "
                         f"trainer.resume=true in the same run dir")

    @property
    def exit_code(self) -> int:
        """The shell's convention for a process ended by this signal."""
        return 128 + self.signum


class SignalFlag:
    """While active, SIGTERM / SIGINT set `signum` instead of ending the process; a second
    one stops at once (SIGINT: KeyboardInterrupt; SIGTERM: exit code 143). The previous
    handlers come back on exit. Handlers can only be installed from the main thread:
    elsewhere the flag stays 0."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalFlag:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum:
            message = (f"second signal ({signal.Signals(signum).name}): stopped without a "
                       f"checkpoint")
            if signum == signal.SIGINT:
                raise KeyboardInterrupt(message)
            print(message, file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)  # 143 for SIGTERM, as schedulers expect
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            # None: a handler installed outside Python, which cannot be put back; use the default
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        self._previous = {}
