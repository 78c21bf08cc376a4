"""Benchmark areas of `python -m jobs.benchmark`: each module exposes `run(quick) -> list[dict]` (and may `plot`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from typing import Any, Callable, Iterator


@contextlib.contextmanager
def private_weights_cache() -> Iterator[str]:
    """A fresh INSTRUMENTGEN_CACHE for a block: the tiny models are built there, not in the user's cache."""
    old = os.environ.get("INSTRUMENTGEN_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["INSTRUMENTGEN_CACHE"] = cache
        try:
            yield cache
        finally:
            if old is None:
                os.environ.pop("INSTRUMENTGEN_CACHE")
            else:
                os.environ["INSTRUMENTGEN_CACHE"] = old


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(seconds `fn()` took on the wall clock, what it returned)."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def row(
    benchmark: str,
    baseline: str,
    ours: str,
    baseline_s: float,
    ours_s: float,
    goal: float | str | None = None,
    note: str = "",
) -> dict:
    """One row of docs/benchmarks.md: what was measured, the baseline and ours with their seconds,
    the ratio baseline / ours (> 1: ours is faster), the goal for that ratio (None: reported only)."""
    return {
        "benchmark": benchmark,
        "baseline": baseline,
        "ours": ours,
        "baseline_s": baseline_s,
        "ours_s": ours_s,
        "ratio": baseline_s / ours_s,
        "goal": goal,
        "note": note,
    }
