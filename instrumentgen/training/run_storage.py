"""Where a run lives: `<train.storage_path>/<train.run_name>/`, a local path or any fsspec URL.

Ray Train keeps its own index of a run's checkpoints, but writes it only while its controller
is alive; after a crash of the whole job the index can be missing although checkpoints were
uploaded. So rank 0 also commits `latest_checkpoint.json` once every rank has uploaded its part
of a checkpoint, and a re-submitted run falls back to it.
"""

from __future__ import annotations

import os

import pyarrow.fs

from instrumentgen import storage

LATEST = "latest_checkpoint.json"


def ray_storage(url: str) -> tuple[str, pyarrow.fs.FileSystem | None]:
    """A path or fsspec URL -> (path, filesystem) as Ray wants them; remote ones go through fsspec
    (the same credentials and endpoint as every other artefact)."""
    fs, path = storage.filesystem(url)
    if "file" in storage.protocols(fs):
        return os.path.abspath(path), None
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def commit_latest(run_url: str, step: int, checkpoint_dir_name: str) -> None:
    """Record `checkpoint_dir_name` as the run's latest complete checkpoint (rank 0, after every rank uploaded)."""
    storage.write_json(storage.join(run_url, LATEST), {"step": step, "checkpoint": checkpoint_dir_name})


def committed(run_url: str) -> dict | None:
    """`{"step": int, "checkpoint": folder name}` of the last checkpoint every rank finished uploading, or None."""
    latest = storage.join(run_url, LATEST)
    return storage.read_json(latest) if storage.exists(latest) else None


def committed_checkpoint_url(run_url: str) -> str | None:
    """The URL of the last checkpoint every rank finished uploading, or None."""
    latest = committed(run_url)
    return storage.join(run_url, latest["checkpoint"]) if latest else None
