"""The process group a sampling or evaluation job runs in (`torchrun`), seen from one rank.

`Ranks.current()` is this process's (rank, world size) in the default `torch.distributed`
group, or (0, 1) without one. Work is split by index (`mine`), so a job's output does not depend
on the world size, and every collective here has a bounded wait: `agree` lets every rank learn
whether any rank failed (naming the rank and its message) instead of leaving the others blocked
in a later collective, and the group's own timeout (`init_process_group(timeout=...)`,
`SCOREKIT_DIST_TIMEOUT` seconds when scorekit joins the group) bounds waiting on a rank that died.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch.distributed as dist

__all__ = ["Ranks", "RankFailed", "dist_timeout"]


def dist_timeout() -> timedelta:
    """Collective timeout: `SCOREKIT_DIST_TIMEOUT` seconds (default 600)."""
    return timedelta(seconds=float(os.environ.get("SCOREKIT_DIST_TIMEOUT", "600")))


class RankFailed(RuntimeError):
    """Another rank (or this one) failed; the message names the rank and what it raised."""


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls) -> Ranks:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def mine(self, n: int) -> range:
        """The indices 0..n-1 this rank owns: rank, rank + world, ..."""
        return range(self.rank, n, self.world_size)

    def chunk(self, n: int) -> tuple[int, int]:
        """This rank's contiguous share [lo, hi) of n items (sizes differ by at most one)."""
        return n * self.rank // self.world_size, n * (self.rank + 1) // self.world_size

    def gather(self, obj: object) -> list:
        """Every rank's `obj`, in rank order ([obj] in one process)."""
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def agree(self, error: BaseException | None, what: str) -> None:
        """Collective: every rank reports whether `what` failed on it; if any did, raise
        RankFailed on every rank naming each failed rank and its message (the failing rank's
        own exception chained). In one process the error itself is raised."""
        mine = None if error is None else f"{type(error).__name__}: {error}"
        if not self.enabled:  # one process: its own error, as it was raised
            if error is not None:
                raise error
            return
        reports: list[str | None] = [None] * self.world_size
        dist.all_gather_object(reports, mine)
        failed = [(r, m) for r, m in enumerate(reports) if m is not None]
        if failed:
            text = "; ".join(f"rank {r}: {m}" for r, m in failed)
            raise RankFailed(f"{what} failed on {len(failed)} of {self.world_size} ranks: "
                             f"{text}") from error
