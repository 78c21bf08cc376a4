"""A read-only view of a batch library's index (`<library>/index.parquet`, one row per complete
instrument): filtered by text, sorted by a score, paged. Pure: pyarrow and storage only, no serving.

Reads the index as `jobs.render` writes it, by column name; the columns it lists are `COLUMNS` (a column
an older index lacks is null), so the batch job may add columns without breaking the view.
"""

from __future__ import annotations

import io

import pyarrow.parquet as pq

from instrumentgen import storage
from instrumentgen.errors import UserError

INDEX = "index.parquet"
COLUMNS = (
    "id",
    "name",
    "prompt",
    "family",
    "source",
    "seed",
    "notes",
    "tc",
    "mad_pitch",
    "clap_score",
    "quality",
    "model_id",
)
SORT_KEYS = ("tc", "mad_pitch", "clap_score")
ORDERS = ("asc", "desc")


class ViewError(UserError):
    """A query the view cannot answer; `field` names the parameter."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def read_rows(library: str) -> list[dict]:
    """The index rows of the library at `library` (only `COLUMNS`); [] when it has no index yet."""
    url = storage.join(library, INDEX)
    if not storage.exists(url):
        return []
    table = pq.read_table(io.BytesIO(storage.read_bytes(url)))
    names = set(table.column_names)
    return [{key: row.get(key) if key in names else None for key in COLUMNS} for row in table.to_pylist()]


def query(
    rows: list[dict], text: str = "", sort: str | None = None, order: str = "desc", limit: int = 50, offset: int = 0
) -> dict:
    """{total, offset, limit, entries}: rows whose prompt or name contains `text` (case-insensitive),
    sorted by `sort` (one of `SORT_KEYS`, `order` asc or desc; nulls last either way; ties by id) or by
    id when None, then `limit` of them from `offset`; `total` counts the matching rows."""
    if sort is not None and sort not in SORT_KEYS:
        raise ViewError("sort", f"{sort!r} is not a score; allowed: {', '.join(SORT_KEYS)}")
    if order not in ORDERS:
        raise ViewError("order", f"{order!r} is not an order; allowed: {', '.join(ORDERS)}")
    if limit < 1 or offset < 0:
        field = "limit" if limit < 1 else "offset"
        raise ViewError(field, f"{field}={limit if limit < 1 else offset}; allowed: limit >= 1, offset >= 0")
    needle = text.casefold().strip()
    found = [
        row
        for row in rows
        if not needle or any(needle in (row.get(key) or "").casefold() for key in ("prompt", "name"))
    ]
    found.sort(key=lambda row: row["id"] or "")
    if sort is not None:
        has = [row.get(sort) is not None and row[sort] == row[sort] for row in found]  # NaN: no score
        scored = [row for row, ok in zip(found, has) if ok]
        unscored = [row for row, ok in zip(found, has) if not ok]
        scored.sort(key=lambda row: row[sort], reverse=order == "desc")  # stable: ties stay in id order
        found = scored + unscored
    return {"total": len(found), "offset": offset, "limit": limit, "entries": found[offset : offset + limit]}
