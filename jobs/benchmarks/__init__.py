"""Benchmark areas of `python -m jobs.benchmark`: each module exposes `run(quick) -> list[dict]` (and may `plot`)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


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
