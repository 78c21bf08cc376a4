"""The note rows of `jobs.preprocess` and how they become shards: one declaration, one writer.

A note row travels the Ray Data stages of `instrumentgen.data.preprocess`: `read_unit` makes one per
input record (`READ_COLUMNS`: the bookkeeping `PIPELINE_COLUMNS` and the note's metadata from
`shards.SHARD_COLUMNS`), closing each unit with a `unit_end` row; `NoteEncoder` drops `audio`
and adds `ENCODER_COLUMNS`; `ShardWriter` keeps the shard columns of the kept rows.

Resume protocol: a unit is committed as its shard files (one per split it feeds, each atomic),
then its marker `_progress/<unit>.json` (atomic). A unit whose marker exists is complete; a
re-run skips it and rewrites the same files for the others, so rows are never duplicated.
`finish` turns the markers into `rejected.jsonl` and, last, `manifest.json`. The fault point
"preprocess.unit" (count: units committed so far) lies between a unit's files and its marker,
the worst moment for a crash.
"""

from __future__ import annotations

import json
from collections import Counter

import numpy as np

from instrumentgen import storage
from instrumentgen.data.shards import (
    COLUMNS_BY_NAME,
    FORMAT_VERSION,
    PROGRESS,
    REJECTED,
    SHAPE_COLUMNS,
    SHARD_COLUMNS,
    Column,
    ShardError,
    shard_path,
    shard_table,
    unit_key,
    write_shard,
)
from instrumentgen.faults import Fault, fault_point

UNIT_END = "unit_end"  # `reason` of the row closing a unit; its `position` is the unit's record count
PIPELINE_COLUMNS = (
    Column("source_split", "str", "NSynth split the record was read from"),
    Column("unit", "int64", "the unit (block of input records) of the record within its source split"),
    Column("position", "int64", "index of the record in its unit; in the unit_end row, the unit's record count"),
    Column("split", "str", "split the note is stored in: its source split, or holdout"),
    Column("reason", "str", "why the record is skipped: '' if kept, unit_end in the row closing a unit", missing=""),
    Column("detail", "str", "what is wrong with a skipped record", missing=""),
    Column("audio", "bytes", "float32 note audio, 16 kHz as read, the codec's rate once resampled", missing=b""),
    Column("codec_model_id", "str", "the DAC weights that made `codes`"),
    Column("clap_model_id", "str", "the CLAP weights that made `clap_embedding`"),
)
_PIPELINE = {column.name: column for column in PIPELINE_COLUMNS}
READ_COLUMNS = (*PIPELINE_COLUMNS[:7], *(c for c in SHARD_COLUMNS if not c.shape and c.name not in SHAPE_COLUMNS))
ENCODER_COLUMNS = (
    COLUMNS_BY_NAME["codes"],
    COLUMNS_BY_NAME["clap_embedding"],
    _PIPELINE["codec_model_id"],
    _PIPELINE["clap_model_id"],
)
STORED_COLUMNS = tuple(c.name for c in SHARD_COLUMNS if c.name not in SHAPE_COLUMNS)


def read_row(source_split: str, unit: int, position: int, **fields) -> dict:
    """A row of `READ_COLUMNS`: the given fields, `split` = `source_split` and `missing` for the rest."""
    unknown = set(fields) - {c.name for c in READ_COLUMNS}
    if unknown:
        raise KeyError(f"not a read column: {sorted(unknown)}")
    row = {column.name: column.missing for column in READ_COLUMNS}
    return {**row, "source_split": source_split, "unit": unit, "position": position, "split": source_split, **fields}


def rows_to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows of `READ_COLUMNS` -> a numpy batch ([B] per column, in the columns' dtypes)."""
    dtypes = {"str": str, "bytes": object}
    return {c.name: np.array([r[c.name] for r in rows], dtype=dtypes.get(c.dtype, c.dtype)) for c in READ_COLUMNS}


class ShardWriter:
    """Collects encoded rows per input unit and commits each unit when all its rows are in.

    `fault`: a test's `Fault` at "preprocess.unit" (see the module docstring).
    """

    def __init__(self, url: str, config_hash: str, sources: dict[str, str], fault: Fault | None = None):
        self.url, self.config_hash, self.sources, self.fault = url, config_hash, sources, fault
        self.pending_rows: dict[tuple[str, int], list[dict]] = {}
        self.unit_sizes: dict[tuple[str, int], int] = {}
        self.committed = 0
        self.kept_this_run = 0

    def completed_units(self) -> set[tuple[str, int]]:
        """Units with a marker; `ShardError` if any was made with another configuration."""
        done = set()
        for marker_url in storage.list_files(storage.join(self.url, PROGRESS), ".json"):
            marker = storage.read_json(marker_url)
            if marker["config_hash"] != self.config_hash:
                raise ShardError(
                    f"data.shards={self.url!r} holds shards made with config hash "
                    f"{marker['config_hash']}, this run has {self.config_hash}; "
                    "use a fresh data.shards or the same settings"
                )
            done.add((marker["source_split"], marker["unit"]))
        return done

    def add(self, batch: dict[str, np.ndarray]) -> list[tuple[str, int]]:
        """Take a batch of encoded rows; returns the units it completed (and committed)."""
        committed = []
        for i in range(len(batch["unit"])):
            key = (str(batch["source_split"][i]), int(batch["unit"][i]))
            row = {name: column[i] for name, column in batch.items()}
            rows = self.pending_rows.setdefault(key, [])
            rows.append(row)
            if row["reason"] == UNIT_END:
                self.unit_sizes[key] = int(row["position"])
            # Rows of a unit arrive in any order (Ray Data does not preserve it); the end row says how many.
            if key in self.unit_sizes and len(rows) == self.unit_sizes[key] + 1:
                self._commit(key, rows)
                del self.pending_rows[key], self.unit_sizes[key]
                committed.append(key)
        return committed

    def _commit(self, key: tuple[str, int], rows: list[dict]) -> None:
        source_split, unit = key
        end = next(r for r in rows if r["reason"] == UNIT_END)
        records = sorted((r for r in rows if r["reason"] != UNIT_END), key=lambda r: int(r["position"]))
        kept = [r for r in records if r["reason"] == ""]
        ((n_codebooks, n_frames),) = {np.shape(r["codes"]) for r in rows}  # every row has codes [K, N]
        files, kept_counts = {}, {}
        for split in sorted({str(r["split"]) for r in kept}):
            split_rows = [r for r in kept if r["split"] == split]
            columns = {name: np.stack([r[name] for r in split_rows]) for name in STORED_COLUMNS}
            files[split] = shard_path(split, source_split, unit)
            kept_counts[split] = len(split_rows)
            write_shard(storage.join(self.url, files[split]), shard_table(columns))
        fault_point(self.fault, "preprocess.unit", self.committed)
        marker = {
            "config_hash": self.config_hash,
            "source_split": source_split,
            "unit": unit,
            "records": len(records),
            "kept": kept_counts,
            "files": files,
            "skipped": dict(Counter(str(r["reason"]) for r in records if r["reason"] != "")),
            "rejected": [
                {
                    "split": source_split,
                    "note_str": str(r["note_str"]),
                    "reason": str(r["reason"]),
                    "detail": str(r["detail"]),
                }
                for r in records
                if r["reason"] != ""
            ],
            "codec_model_id": str(end["codec_model_id"]),
            "clap_model_id": str(end["clap_model_id"]),
            "n_codebooks": int(n_codebooks),
            "n_frames": int(n_frames),
        }
        storage.write_json(storage.join(self.url, PROGRESS, unit_key(source_split, unit) + ".json"), marker)
        self.committed += 1
        self.kept_this_run += len(kept)

    def finish(self, units: list[tuple[str, int]], settings: dict) -> dict:
        """Write `rejected.jsonl`, then `manifest.json` from the markers of `units`; returns the manifest."""
        markers = []
        for source_split, unit in units:
            marker_url = storage.join(self.url, PROGRESS, unit_key(source_split, unit) + ".json")
            if not storage.exists(marker_url):
                raise ShardError(
                    f"unit {unit_key(source_split, unit)} of {self.url!r} is not complete; re-run to finish it"
                )
            markers.append(storage.read_json(marker_url))
        kept, skipped, files = Counter(), Counter(), {}
        for marker in markers:
            kept.update(marker["kept"])
            skipped.update(marker["skipped"])
            for split, path in marker["files"].items():
                files.setdefault(split, []).append(path)
        rejected = [r for marker in markers for r in marker["rejected"]]
        storage.write_bytes(storage.join(self.url, REJECTED), "".join(json.dumps(r) + "\n" for r in rejected).encode())
        first = markers[0] if markers else {}
        manifest = {
            "format_version": FORMAT_VERSION,
            "config_hash": self.config_hash,
            "sources": self.sources,
            "records": sum(m["records"] for m in markers),
            "kept": dict(sorted(kept.items())),
            "skipped": dict(sorted(skipped.items())),
            "files": {s: sorted(f) for s, f in sorted(files.items())},
            "codec_model_id": first.get("codec_model_id"),
            "clap_model_id": first.get("clap_model_id"),
            "n_codebooks": first.get("n_codebooks"),
            "n_frames": first.get("n_frames"),
            **settings,
        }
        storage.write_json(storage.join(self.url, storage.MANIFEST), manifest)
        return manifest
