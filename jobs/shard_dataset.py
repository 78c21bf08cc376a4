"""The Ray Data edge of the token shards: one split of a shard set as a Ray Dataset."""

from __future__ import annotations

import pyarrow.fs
import ray.data

from instrumentgen import storage
from instrumentgen.data.shards import shard_files


def read_shards(url: str, split: str) -> ray.data.Dataset:
    """A Ray Dataset over the complete shards of one split (rows as in `instrumentgen.data.shards`)."""
    files = shard_files(url, split)
    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    # Through fsspec, like every other artefact: the same credentials and endpoint (AWS_ENDPOINT_URL).
    return ray.data.read_parquet(paths, filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)))
