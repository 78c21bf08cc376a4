"""Runs whose instruments may not be in the library's index yet: one journal object per run.

    <out>/pending/<run>.json      {"ids": [...]}: the ids a run renders, written before its first
                                  instrument, removed once the index holds the run's rows

The index is the record of complete instruments (`library.plan_library`); a journal is what a
run killed before its index update leaves behind, so the next run asks for the manifests of
those ids only, instead of listing every folder of the library. A finished run removes its own
journal and the ones it recovered from.
"""

from __future__ import annotations

import json
import time
import uuid

from instrumentgen import storage
from instrumentgen.errors import MissingObjectError

PENDING = "pending"


def record_run(out: str, ids: list[str]) -> str:
    """Write the journal of a run about to render `ids` into the library `out` (one PUT); returns its URL."""
    url = storage.join(out, PENDING, f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:12]}.json")
    storage.write_bytes(url, json.dumps({"ids": ids}).encode())
    return url


def pending_runs(out: str) -> list[str]:
    """The URLs of the journals under `<out>/pending/` (one listing of that folder, not of the library)."""
    return storage.list_files(storage.join(out, PENDING), suffix=".json")


def pending_ids(journals: list[str]) -> set[str]:
    """Every id the `journals` list; a journal removed meanwhile (its run finished) lists none."""
    ids: set[str] = set()
    for url in journals:
        try:
            ids.update(storage.read_json(url)["ids"])
        except MissingObjectError:
            continue
    return ids


def settle(journals: list[str]) -> None:
    """Remove `journals` once the index holds the rows of their instruments that are complete."""
    for url in journals:
        storage.remove(url)
