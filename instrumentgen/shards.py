"""Token shards: the Parquet files `jobs.preprocess` writes and training reads.

Layout under `data.shards` (a path or any fsspec URL):

    <shards>/<split>/<source split>-<unit>.parquet   split: train, valid, test, holdout
    <shards>/_progress/<source split>-<unit>.json      one marker per finished input unit
    <shards>/rejected.jsonl                            every skipped record and why
    <shards>/manifest.json                             written last: the shard is complete

One *unit* is a fixed block of input records (`data.notes_per_shard`); its shard files are
written atomically and then its marker, so a re-run skips finished units and rewrites the same
files for the others: rows are never duplicated, and only files listed in the manifest count.

Columns: `codes` int16 K*N values (row-major [K, N]) with `n_codebooks` = K and `n_frames` = N
beside them, `clap_embedding` float16 [512], `family`, `source`, `pitch`, `velocity` (int16),
`instrument` (int32), `instrument_str`, `note_str` (string).
"""
from __future__ import annotations

import io
import json
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from instrumentgen import storage
from instrumentgen.cues import Cues
from instrumentgen.errors import UserError

if TYPE_CHECKING:
    import ray.data

SPLITS = ("train", "valid", "test")  # NSynth's own splits
HOLDOUT = "holdout"  # whole instruments taken out of train (data.holdout_instruments)
PROGRESS = "_progress"
REJECTED = "rejected.jsonl"
UNIT_END = "unit_end"  # `reason` of the row closing a unit; its `position` is the unit's record count
FORMAT_VERSION = 1
METADATA_COLUMNS = {"note_str": pa.string(), "instrument_str": pa.string(), "instrument": pa.int32(),
                    "family": pa.int16(), "source": pa.int16(), "pitch": pa.int16(), "velocity": pa.int16()}


class ShardError(UserError):
    """Token shards are missing, incomplete, or were made with another configuration."""


def unit_key(source_split: str, unit: int) -> str:
    return f"{source_split}-{unit:05d}"


def shard_path(split: str, source_split: str, unit: int) -> str:
    """Path of a unit's shard for `split`, relative to the shards root."""
    return f"{split}/{unit_key(source_split, unit)}.parquet"


def shard_table(rows: dict[str, np.ndarray]) -> pa.Table:
    """Kept rows of one split -> the shard table.

    rows: the metadata columns [B], `codes` int16 [B, K, N], `clap_embedding` float16 [B, 512].
    """
    codes = np.ascontiguousarray(rows["codes"], dtype=np.int16)
    batch, n_codebooks, n_frames = codes.shape
    clap = np.ascontiguousarray(rows["clap_embedding"], dtype=np.float16)
    columns = {name: pa.array(rows[name], type=kind) for name, kind in METADATA_COLUMNS.items()}
    columns["n_codebooks"] = pa.array(np.full(batch, n_codebooks, np.int16))
    columns["n_frames"] = pa.array(np.full(batch, n_frames, np.int16))
    columns["codes"] = pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), n_codebooks * n_frames)
    columns["clap_embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(clap.reshape(-1)), clap.shape[1])
    return pa.table(columns)


def write_shard(url: str, table: pa.Table) -> None:
    """Write one Parquet shard atomically (it appears under `url` only when complete)."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    storage.write_bytes(url, buf.getvalue())


def read_table(url: str) -> pa.Table:
    return pq.read_table(io.BytesIO(storage.read_bytes(url)))


def read_manifest(url: str) -> dict:
    """The manifest of a complete shard set; `ShardError` if there is none."""
    manifest_url = storage.join(url, storage.MANIFEST)
    if not storage.exists(manifest_url):
        raise ShardError(f"no {storage.MANIFEST} under data.shards={url!r}: the shards are missing or incomplete; "
                         f"run (or finish) `python -m jobs.preprocess data.shards={url}`")
    return storage.read_json(manifest_url)


def shard_files(url: str, split: str) -> list[str]:
    """Full URLs of the complete shard files of `split`, as listed in the manifest."""
    manifest = read_manifest(url)
    files = manifest["files"].get(split)
    if not files:
        available = sorted(s for s, f in manifest["files"].items() if f)
        raise ShardError(f"split={split!r} has no notes in {url!r}; allowed: {', '.join(available)}")
    return [storage.join(url, f) for f in files]


def read_shards(url: str, split: str) -> "ray.data.Dataset":
    """A Ray Dataset over the complete shards of one split (rows as in the module docstring)."""
    import pyarrow.fs
    import ray.data

    files = shard_files(url, split)
    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    # Through fsspec, like every other artefact: the same credentials and endpoint (AWS_ENDPOINT_URL).
    return ray.data.read_parquet(paths, filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)))


def _stack(column: np.ndarray) -> np.ndarray:
    """A list column from Arrow (object array of [W] arrays, or already [B, W]) -> [B, W]."""
    return np.stack(column) if column.dtype == object else column


def collate(batch: dict[str, np.ndarray]) -> tuple[torch.Tensor, Cues]:
    """A numpy batch of shard rows -> (codes long [B, K, N], cues with clap_embedding float [B, 512])."""
    n_codebooks, n_frames = np.unique(batch["n_codebooks"]), np.unique(batch["n_frames"])
    if len(n_codebooks) != 1 or len(n_frames) != 1:
        raise ShardError(f"a batch mixes code shapes: n_codebooks {n_codebooks.tolist()}, n_frames {n_frames.tolist()}; "
                         "shards of one set must share note_duration_s and codec")
    codes = torch.from_numpy(_stack(batch["codes"]).astype(np.int64))
    codes = codes.reshape(len(codes), int(n_codebooks[0]), int(n_frames[0]))

    def long(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(batch[name], dtype=np.int64))

    clap = torch.from_numpy(_stack(batch["clap_embedding"]).astype(np.float32))
    return codes, Cues(long("family"), long("source"), long("pitch"), long("velocity"), clap)


class ShardWriter:
    """Collects encoded rows per input unit and commits each unit when all its rows are in.

    A unit is committed as: its shard files (one per split it feeds, atomic), then its marker
    `_progress/<unit>.json` (atomic). A unit whose marker exists is complete; `finish` turns
    the markers into `rejected.jsonl` and, last, `manifest.json`.

    `fail_after_units`: a test hook; after that many commits the next unit writes its shard files
    and then raises before its marker, as a crash at the worst moment would.
    """

    def __init__(self, url: str, config_hash: str, sources: dict[str, str], fail_after_units: int | None = None):
        self.url, self.config_hash, self.sources = url, config_hash, sources
        self.fail_after_units = fail_after_units
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
                raise ShardError(f"data.shards={self.url!r} holds shards made with config hash {marker['config_hash']}, "
                                 f"this run has {self.config_hash}; use a fresh data.shards or the same settings")
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
        files, kept_counts = {}, {}
        for split in sorted({str(r["split"]) for r in kept}):
            split_rows = [r for r in kept if r["split"] == split]
            columns = {name: np.stack([r[name] for r in split_rows]) for name in (*METADATA_COLUMNS, "codes", "clap_embedding")}
            files[split] = shard_path(split, source_split, unit)
            kept_counts[split] = len(split_rows)
            write_shard(storage.join(self.url, files[split]), shard_table(columns))
        if self.fail_after_units is not None and self.committed >= self.fail_after_units:
            raise RuntimeError(f"injected failure before the marker of unit {unit_key(source_split, unit)}")
        n_codebooks, n_frames = (int(n) for n in end["codes"].shape)
        marker = {"config_hash": self.config_hash, "source_split": source_split, "unit": unit,
                  "records": len(records), "kept": kept_counts, "files": files,
                  "skipped": dict(Counter(str(r["reason"]) for r in records if r["reason"] != "")),
                  "rejected": [{"split": source_split, "note_str": str(r["note_str"]), "reason": str(r["reason"]),
                                "detail": str(r["detail"])} for r in records if r["reason"] != ""],
                  "codec_model_id": str(end["codec_model_id"]), "clap_model_id": str(end["clap_model_id"]),
                  "n_codebooks": n_codebooks, "n_frames": n_frames}
        storage.write_json(storage.join(self.url, PROGRESS, unit_key(source_split, unit) + ".json"), marker)
        self.committed += 1
        self.kept_this_run += len(kept)

    def finish(self, units: list[tuple[str, int]], settings: dict) -> dict:
        """Write `rejected.jsonl`, then `manifest.json` from the markers of `units`; returns the manifest."""
        markers = []
        for source_split, unit in units:
            marker_url = storage.join(self.url, PROGRESS, unit_key(source_split, unit) + ".json")
            if not storage.exists(marker_url):
                raise ShardError(f"unit {unit_key(source_split, unit)} of {self.url!r} is not complete; re-run to finish it")
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
        manifest = {"format_version": FORMAT_VERSION, "config_hash": self.config_hash, "sources": self.sources,
                    "records": sum(m["records"] for m in markers), "kept": dict(sorted(kept.items())),
                    "skipped": dict(sorted(skipped.items())), "files": {s: sorted(f) for s, f in sorted(files.items())},
                    "codec_model_id": first.get("codec_model_id"), "clap_model_id": first.get("clap_model_id"),
                    "n_codebooks": first.get("n_codebooks"), "n_frames": first.get("n_frames"), **settings}
        storage.write_json(storage.join(self.url, storage.MANIFEST), manifest)
        return manifest
