"""What the command-line scripts share: one-line errors for user mistakes, and no directories
left behind by a command that failed before writing anything.

`user_errors(out_dir)` wraps a script's body: a config, checkpoint, lock or missing-file error
prints `error: <message>` on stderr and exits with status 2 (no traceback; set
`HYDRA_FULL_ERROR=1` for one), and on any failure the Hydra output dir is removed if the
command left it empty (with its empty parents, up to the working directory).
`require_args(...)` checks mandatory `key=value` arguments before Hydra resolves a run dir that
interpolates them.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from scorekit._validate import ConfigError
from scorekit.io import CheckpointError
from scorekit.lock import LockHeld

USER_ERRORS = (ConfigError, CheckpointError, LockHeld, FileNotFoundError)


def remove_if_empty(folder: str | Path, stop: str | Path | None = None) -> None:
    """Remove `folder` and then each parent while it is empty, never `stop` (default: the
    working directory) or anything above it."""
    folder = Path(folder).absolute()
    stop = Path(stop if stop is not None else Path.cwd()).absolute()
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:  # not empty, or gone
            if folder.exists():
                return
        folder = folder.parent


@contextlib.contextmanager
def user_errors(out_dir: str | Path | None = None) -> Iterator[None]:
    """Exit 2 with a one-line message on a user error; clean up an unused `out_dir`."""
    try:
        yield
    except USER_ERRORS as err:
        if out_dir is not None:
            remove_if_empty(out_dir)
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except BaseException:
        if out_dir is not None:
            remove_if_empty(out_dir)
        raise


def require_args(*keys: str, example: str) -> None:
    """Exit 2 naming the first of `keys` missing from the `key=value` arguments."""
    if any(a in ("--help", "-h", "--info", "--cfg", "-c") for a in sys.argv[1:]):
        return
    given = {a.split("=", 1)[0].lstrip("+~") for a in sys.argv[1:] if "=" in a}
    for key in keys:
        if key not in given:
            print(f"error: {key}=... is required, e.g. {example}", file=sys.stderr)
            raise SystemExit(2)
