"""Token shards: the Parquet format `jobs.preprocess` writes and training reads.

Layout under `data.shards` (a path or any fsspec URL):

    <shards>/<split>/<source split>-<unit>.parquet   split: train, valid, test, holdout
    <shards>/_progress/<source split>-<unit>.json      one marker per finished input unit
    <shards>/rejected.jsonl                            every skipped record and why
    <shards>/manifest.json                             written last: the shard is complete

One *unit* is a fixed block of input records (`data.notes_per_shard`); how units are written
and resumed is `instrumentgen.data.shard_writer`. Only files listed in the manifest count.

The columns of a shard file are `SHARD_COLUMNS` (name, dtype, shape per row, meaning): the one
declaration the writer (`shard_table`), the reader (`collate`) and the preprocessing stages use.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from instrumentgen import storage
from instrumentgen.errors import UserError
from instrumentgen.model.cues import Cues

SPLITS = ("train", "valid", "test")  # NSynth's own splits
HOLDOUT = "holdout"  # whole instruments taken out of train (data.holdout_instruments)
PROGRESS = "_progress"
REJECTED = "rejected.jsonl"
FORMAT_VERSION = 1
CLAP_DIM = 512
ARROW_TYPES = {
    "str": pa.string(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "float16": pa.float16(),
}


class ShardError(UserError):
    """Token shards are missing, incomplete, or were made with another configuration."""


@dataclass(frozen=True)
class Column:
    """One column of a note row: numpy `dtype` of its values, `shape` per row (() a scalar; "K" is
    n_codebooks, "N" n_frames), `missing`: its value in a row without a note (a rejected record)."""

    name: str
    dtype: str
    meaning: str
    shape: tuple[int | str, ...] = ()
    missing: Any = None

    def sizes(self, n_codebooks: int = 0, n_frames: int = 0) -> tuple[int, ...]:
        """The per-row shape with K and N filled in."""
        return tuple({"K": n_codebooks, "N": n_frames}.get(s, s) for s in self.shape)

    def empty(self, rows: int, n_codebooks: int = 0, n_frames: int = 0) -> np.ndarray:
        """[rows, *shape] filled with `missing`."""
        dtype = object if self.dtype in ("str", "bytes") else self.dtype
        return np.full((rows, *self.sizes(n_codebooks, n_frames)), self.missing, dtype)


SHARD_COLUMNS = (
    Column("note_str", "str", "NSynth note id, e.g. bass_acoustic_000-048-100", missing=""),
    Column("instrument_str", "str", "NSynth instrument name", missing=""),
    Column("instrument", "int32", "NSynth instrument number", missing=-1),
    Column("family", "int16", "index into vocab.FAMILIES", missing=-1),
    Column("source", "int16", "index into vocab.SOURCES", missing=-1),
    Column("pitch", "int16", "MIDI pitch 21..108", missing=-1),
    Column("velocity", "int16", "MIDI velocity", missing=-1),
    Column("n_codebooks", "int16", "K of `codes` (from its shape)"),
    Column("n_frames", "int16", "N of `codes` (from its shape)"),
    Column("codes", "int16", "DAC codes; stored row-major as K*N values", ("K", "N"), missing=0),
    Column("clap_embedding", "float16", "CLAP audio embedding of the note", (CLAP_DIM,), missing=0),
)
COLUMNS_BY_NAME = {column.name: column for column in SHARD_COLUMNS}
SHAPE_COLUMNS = ("n_codebooks", "n_frames")  # derived from the shape of `codes` when a table is made


def unit_key(source_split: str, unit: int) -> str:
    """The name of an input unit: <source split>-<5-digit unit number>."""
    return f"{source_split}-{unit:05d}"


def shard_path(split: str, source_split: str, unit: int) -> str:
    """Path of a unit's shard for `split`, relative to the shards root."""
    return f"{split}/{unit_key(source_split, unit)}.parquet"


def shard_table(rows: dict[str, np.ndarray]) -> pa.Table:
    """Kept rows of one split -> the shard table (`SHARD_COLUMNS`, in that order).

    rows: every column of `SHARD_COLUMNS` but n_codebooks / n_frames, as [B, *shape] arrays
    (`codes` [B, K, N]); extra columns are ignored.
    """
    codes = np.ascontiguousarray(rows["codes"], dtype=np.int16)
    batch, n_codebooks, n_frames = codes.shape
    values = {
        **rows,
        "codes": codes,
        "n_codebooks": np.full(batch, n_codebooks, np.int16),
        "n_frames": np.full(batch, n_frames, np.int16),
    }
    columns = {}
    for column in SHARD_COLUMNS:
        kind = ARROW_TYPES[column.dtype]
        if column.shape:
            flat = np.ascontiguousarray(values[column.name], dtype=column.dtype).reshape(-1)
            width = math.prod(column.sizes(n_codebooks, n_frames))
            columns[column.name] = pa.FixedSizeListArray.from_arrays(pa.array(flat, type=kind), width)
        else:
            columns[column.name] = pa.array(values[column.name], type=kind)
    return pa.table(columns)


def write_shard(url: str, table: pa.Table) -> None:
    """Write one Parquet shard atomically (it appears under `url` only when complete)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(url, buf.getvalue())


def read_table(url: str) -> pa.Table:
    """One shard file as an Arrow table (columns: `SHARD_COLUMNS`)."""
    return pq.read_table(io.BytesIO(storage.read_bytes(url)))


def read_manifest(url: str) -> dict:
    """The manifest of a complete shard set; `ShardError` if there is none."""
    manifest_url = storage.join(url, storage.MANIFEST)
    if not storage.exists(manifest_url):
        raise ShardError(
            f"no {storage.MANIFEST} under data.shards={url!r}: the shards are missing or incomplete; "
            f"run (or finish) `python -m jobs.preprocess data.shards={url}`"
        )
    return storage.read_json(manifest_url)


def shard_files(url: str, split: str) -> list[str]:
    """Full URLs of the complete shard files of `split`, as listed in the manifest."""
    manifest = read_manifest(url)
    files = manifest["files"].get(split)
    if not files:
        available = sorted(s for s, f in manifest["files"].items() if f)
        raise ShardError(f"split={split!r} has no notes in {url!r}; allowed: {', '.join(available)}")
    return [storage.join(url, f) for f in files]


def _stack(column: np.ndarray) -> np.ndarray:
    """A list column from Arrow (object array of [W] arrays, or already [B, W]) -> [B, W]."""
    return np.stack(column) if column.dtype == object else column


def collate(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, Cues]:
    """A numpy batch of shard rows -> (codes long [B, K, N], cues with clap_embedding float [B, 512])."""
    missing = [column.name for column in SHARD_COLUMNS if column.name not in batch]
    if missing:
        raise ShardError(
            f"shard rows lack the columns {missing}; allowed: shards written by jobs.preprocess "
            f"(format {FORMAT_VERSION})"
        )
    n_codebooks, n_frames = np.unique(batch["n_codebooks"]), np.unique(batch["n_frames"])
    if len(n_codebooks) != 1 or len(n_frames) != 1:
        raise ShardError(
            f"a batch mixes code shapes: n_codebooks {n_codebooks.tolist()}, "
            f"n_frames {n_frames.tolist()}; "
            "shards of one set must share note_duration_s and codec"
        )
    codes = torch.from_numpy(_stack(batch["codes"]).astype(np.int64))
    codes = codes.reshape(len(codes), int(n_codebooks[0]), int(n_frames[0]))

    def long(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(batch[name], dtype=np.int64))

    clap = torch.from_numpy(_stack(batch["clap_embedding"]).astype(np.float32))
    return codes, Cues(long("family"), long("source"), long("pitch"), long("velocity"), clap)
