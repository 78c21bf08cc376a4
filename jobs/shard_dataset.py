"""The Ray Data edge of the token shards: one split of a shard set as a Ray Dataset."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pyarrow.fs
import ray.data

from instrumentgen import storage
from instrumentgen.data.shards import shard_files


@contextmanager
def file_list_reader() -> Iterator[None]:
    """Ray Data's V1 Parquet reader while a dataset is defined. Its V2 reader lists files through a
    pool of up to 32 `FooterReader` actors, a new process each, every time a dataset is built; our
    manifest already names the complete shard files, so that listing only costs process start-ups
    (on a 2-CPU local Ray, a sixth of a short training run)."""
    context = ray.data.DataContext.get_current()
    before, context.use_datasource_v2 = context.use_datasource_v2, False
    try:
        yield
    finally:
        context.use_datasource_v2 = before


def read_shards(url: str, split: str) -> ray.data.Dataset:
    """A Ray Dataset over the complete shards of one split (rows as in `instrumentgen.data.shards`)."""
    files = shard_files(url, split)
    fs, _ = storage.filesystem(files[0])
    paths = [storage.filesystem(f)[1] for f in files]
    # Through fsspec, like every other artefact: the same credentials and endpoint (AWS_ENDPOINT_URL).
    with file_list_reader():
        return ray.data.read_parquet(paths, filesystem=pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs)))
