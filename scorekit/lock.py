"""One writer per directory: an exclusive lock file that names its holder.

`DirLock(folder).acquire()` creates `<folder>/.scorekit.lock` with O_EXCL and writes the
holder's pid, host, process start time and command into it; `release()` (also run at
interpreter exit) removes it. A lock whose holder is gone (same host, pid no longer running, or
the pid now belongs to a process started later) is stale: it is taken over with a warning. A
live holder, or one on another host whose liveness cannot be checked, makes `acquire` raise
`LockHeld` naming it. The same process may take the lock of a folder it already holds (e.g. a
second `Trainer` on the same run dir in a notebook); the file goes when the last one releases.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

LOCK_NAME = ".scorekit.lock"
_EMPTY_GRACE_S = 10.0  # a lock file still empty after this long was left by a killed writer

# In-process holders per lock file: the file goes when the last of them releases.
_holders: dict[Path, int] = {}
_holders_guard = threading.Lock()


class LockHeld(RuntimeError):
    """Another process holds the directory's lock."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (Linux /proc), to tell a reused pid from its owner."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's live process
    now = _start_time(pid)
    return start is None or now is None or now == start


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid()),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:400]}


class DirLock:
    """The lock of one directory; `what` names it in messages ("run dir", "sample dir")."""

    def __init__(self, folder: str | Path, what: str = "directory"):
        self.folder = Path(folder)
        self.path = (self.folder / LOCK_NAME).absolute()
        self.what = what
        self.held = False
        self._finalizer: weakref.finalize | None = None

    def _read(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _describe(self, holder: dict[str, Any]) -> str:
        return (f"pid {holder.get('pid')} on host {holder.get('host')!r} since "
                f"{holder.get('since')} ({holder.get('command') or '?'})")

    def acquire(self) -> DirLock:
        """Take the lock or raise LockHeld naming the holder; returns self."""
        if self.held:
            return self
        self.folder.mkdir(parents=True, exist_ok=True)
        me = _me()
        with _holders_guard:
            if _holders.get(self.path, 0) > 0:  # this process holds it already
                _holders[self.path] += 1
                return self._taken()
            for _ in range(20):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
                except FileExistsError:
                    self._check_holder(me)
                    continue
                with os.fdopen(fd, "w") as fh:
                    json.dump(me, fh)
                _holders[self.path] = 1
                return self._taken()
        raise LockHeld(f"could not take the lock {self.path} (it keeps reappearing)")

    def _taken(self) -> DirLock:
        self.held = True
        self._finalizer = weakref.finalize(self, _release, self.path)
        return self

    def _check_holder(self, me: dict[str, Any]) -> None:
        """Return if the existing lock file was stale and is gone; raise if it is held."""
        holder = self._read()
        if holder is None:  # being written right now, or left empty by a killed writer
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return
            if age < _EMPTY_GRACE_S:
                time.sleep(0.05)
                return
            warnings.warn(f"removing the unreadable lock {self.path} ({age:.0f} s old)",
                          stacklevel=4)
        elif holder.get("host") == me["host"]:
            pid = int(holder.get("pid", -1))
            # Our own pid without an in-process holder: an earlier process that had this pid.
            if pid != me["pid"] and _alive(pid, holder.get("start")):
                raise LockHeld(
                    f"{self.folder} ({self.what}) is in use by {self._describe(holder)}; wait "
                    f"for it to finish or stop it, or use another {self.what}")
            warnings.warn(f"taking over the stale lock of {self.folder}: its holder "
                          f"{self._describe(holder)} is gone", stacklevel=4)
        else:
            raise LockHeld(
                f"{self.folder} ({self.what}) is in use by {self._describe(holder)}, which "
                f"cannot be checked from {me['host']!r}; if that process is gone (e.g. its "
                f"machine crashed), delete {self.path}")
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held and self._finalizer is not None:
            self._finalizer()
        self.held = False

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _release(path: Path) -> None:
    with _holders_guard:
        left = _holders.get(path, 0) - 1
        if left > 0:
            _holders[path] = left
            return
        _holders.pop(path, None)
        try:
            holder = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        if isinstance(holder, dict) and holder.get("pid") == os.getpid():
            path.unlink(missing_ok=True)
