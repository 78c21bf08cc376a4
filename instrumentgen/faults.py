"""Fault injection for tests, the one mechanism: production code names its failure points, a test arms one.

A job takes an optional `Fault` and calls `fault_point(fault, point, count, rank)` at each point
where a crash would hurt most (after a training step, between a shard's files and its marker,
after an instrument's notes and before its manifest, ...). When the armed fault's `point`, `at`
and `rank` match, it fires once: its `marker` URL is written first, so a restarted worker or a
re-submitted job that passes the same point again carries on. `kill` SIGKILLs the process (a
crashed worker or driver); `raise` raises `InjectedFault` (a failed task). Without a fault the
call does nothing.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

from instrumentgen import storage

ACTIONS = ("kill", "raise")


class InjectedFault(RuntimeError):
    """The failure a test asked for (never raised unless a `Fault` is armed)."""


@dataclass(frozen=True)
class Fault:
    """Fail once at `point` when its counter equals `at` on worker `rank`; `marker`: URL written before failing."""

    point: str  # e.g. "train.step", "preprocess.unit", "render.instrument"
    at: int
    marker: str
    action: str = "kill"
    rank: int = 0

    def __post_init__(self):
        if self.action not in ACTIONS:
            raise ValueError(f"action={self.action!r} is not allowed; allowed: {', '.join(ACTIONS)}")


def fault_point(fault: Fault | None, point: str, count: int, rank: int = 0) -> None:
    """Fire `fault` here if it is armed for this `point`, `count` and `rank` and has not fired yet."""
    if fault is None or (fault.point, fault.at, fault.rank) != (point, count, rank) or storage.exists(fault.marker):
        return
    storage.write_bytes(fault.marker, f"{point}={count}".encode())
    if fault.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise InjectedFault(f"injected failure at {point}={count} (rank {rank})")
