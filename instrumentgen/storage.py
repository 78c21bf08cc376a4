"""fsspec helpers: every artefact goes through these, for `file://`, `s3://`, `gs://`, `memory://`.

Writes are atomic per object. On an object store (s3://, gs://, memory://) one PUT is already
atomic: an object is written with exactly one request, never under a temporary key. On a local
disk data goes to a temporary file beside the target and is renamed into place when complete. So
a reader never sees a half-written object under its final name, and a killed writer leaves a
`.tmp-*` file only on a local disk. A folder of objects is complete when its `manifest.json`
exists (written last).

`TransientStorageError` marks the failures worth retrying (endpoint unreachable, throttled, a
server error); every other `StorageError` is the user's to fix.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import Any, Iterator

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from instrumentgen.errors import MissingObjectError, StorageError

MANIFEST = "manifest.json"
TEMP_PREFIX = ".tmp-"
# botocore / aiohttp errors by name: storage must not import every backend to recognise them.
NO_CREDENTIALS = (
    "NoCredentialsError",
    "PartialCredentialsError",
    "CredentialRetrievalError",
    "DefaultCredentialsError",
)
UNREACHABLE = (
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerTimeoutError",
    "ConnectionError",
    "ReadTimeoutError",
    "TimeoutError",
)
# What an object store answers when it is busy or failing, not because of the request.
THROTTLED = ("SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling", "503", "500")


class TransientStorageError(StorageError):
    """A storage failure that a later try may not meet (unreachable, throttled, a server error)."""


@contextlib.contextmanager
def storage_errors(url: str, action: str) -> Iterator[None]:
    """Turn what a backend raises for `url` into one `StorageError` line naming the URL and the fix."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError:
        raise MissingObjectError(f"cannot {action} {url!r}: no such file, folder or bucket") from None
    except (FileExistsError, NotADirectoryError):  # makedirs through a file
        raise StorageError(f"cannot {action} {url!r}: a file stands where its path needs a folder") from None
    except PermissionError:
        raise StorageError(
            f"cannot {action} {url!r}: permission denied; allowed: a path or bucket this user "
            "can write (check its permissions or the credentials' policy)"
        ) from None
    except Exception as e:
        kind = type(e).__name__
        if kind in NO_CREDENTIALS:
            raise StorageError(
                f"cannot {action} {url!r}: no credentials for it; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or a profile / instance role) for s3://, "
                "GOOGLE_APPLICATION_CREDENTIALS for gs://"
            ) from None
        if kind in UNREACHABLE or isinstance(e, (TimeoutError, ConnectionError)):
            raise TransientStorageError(
                f"cannot {action} {url!r}: its endpoint is unreachable ({str(e).splitlines()[0]}); "
                "check AWS_ENDPOINT_URL / the network"
            ) from None
        if any(code in str(e) for code in THROTTLED):
            raise TransientStorageError(
                f"cannot {action} {url!r}: the store is busy or failing ({kind}); try again"
            ) from None
        if isinstance(e, OSError):  # not a directory, read-only file system, ...
            raise StorageError(f"cannot {action} {url!r}: {e.strerror or e}") from None
        raise


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """URL or local path -> (filesystem, path inside it); `StorageError` for a protocol fsspec cannot open."""
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as e:  # unknown protocol, or its backend (gcsfs, ...) is not installed
        raise StorageError(
            f"{url!r}: {str(e).splitlines()[0]}; allowed: a local path or a file://, s3://, "
            "memory:// URL (gs:// needs gcsfs installed)"
        ) from None


def join(url: str, *parts: str) -> str:
    """`join("s3://b/x/", "a", "", "/c")` -> "s3://b/x/a/c"."""
    # An empty part would make "a//b": another key than "a/b" on object stores.
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])


def protocols(fs: AbstractFileSystem) -> tuple[str, ...]:
    """The protocol names of `fs` (fsspec gives a string or a tuple): ("s3", "s3a"), ("file", "local")."""
    return tuple(fs.protocol) if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)


def is_local(fs: AbstractFileSystem) -> bool:
    """Whether `fs` is a local disk (renames are atomic there, PUTs are not a thing)."""
    return isinstance(fs, LocalFileSystem)


def write_bytes(url: str, data: bytes) -> None:
    """Write `data` to `url` atomically; `StorageError` if it cannot.

    Object store: one PUT (no HEAD, LIST, COPY or DELETE; the bucket must exist). Local disk: a
    temporary file beside the target, then a rename."""
    with storage_errors(url, "write"):
        fs, path = filesystem(url)
        if not is_local(fs):
            fs.pipe_file(path, data)
            return
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        name = path.rsplit("/", 1)[-1]
        tmp = (
            f"{parent}/{TEMP_PREFIX}{uuid.uuid4().hex}-{name}" if parent else f"{TEMP_PREFIX}{uuid.uuid4().hex}-{path}"
        )
        try:
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


@contextlib.contextmanager
def atomic_path(dest: Path) -> Iterator[Path]:
    """A temporary local path beside `dest` to write; moved onto `dest` when the block succeeds.

    For libraries that want a file name (torch.save, DAC.save); URLs go through `write_bytes`.
    Each writer has its own temporary name, so concurrent writers of one file leave one complete copy.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".tmp-{uuid.uuid4().hex}-{dest.name}")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def check_writable(url: str) -> None:
    """Fail now, not after minutes of work, if nothing can be written under the folder `url`: one probe
    object written and removed (an object store's bucket must exist: none is created)."""
    with storage_errors(url, "write to"):
        fs, path = filesystem(join(url, f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}"))
        if is_local(fs):
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(path, b"")
        fs.rm(path)


def read_bytes(url: str) -> bytes:
    """The bytes at `url`; `MissingObjectError` if there is none, `StorageError` if it cannot be read.

    One whole-object GET (`cat_file`), not a file handle: s3fs's handle pins the ETag of its first
    HEAD and fails with "no longer exists" when a writer replaces the object before its read. s3fs
    would split an object over 50 MiB into ranged GETs that a replacement in between could mix:
    `max_concurrency=1` keeps it one GET, so a read is always one complete version."""
    with storage_errors(url, "read"):
        fs, path = filesystem(url)
        return fs.cat_file(path, **({"max_concurrency": 1} if "s3" in protocols(fs) else {}))


def write_json(url: str, obj: Any) -> None:
    """Write `obj` as indented, key-sorted JSON to `url`, atomically."""
    write_bytes(url, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(url: str) -> Any:
    """The JSON object at `url`."""
    return json.loads(read_bytes(url))


def exists(url: str) -> bool:
    """Whether an object or folder is at `url`; `StorageError` if the store cannot be asked."""
    with storage_errors(url, "read"):
        fs, path = filesystem(url)
        return fs.exists(path)


def list_files(url: str, suffix: str = "", temporary: bool = False) -> list[str]:
    """Full URLs of the files under `url` (recursively) whose names end with `suffix`, sorted;
    temporary objects left by an interrupted local write are skipped unless `temporary`."""
    with storage_errors(url, "list"):
        fs, path = filesystem(url)
        fs.invalidate_cache(path)
        found = sorted(
            p
            for p in fs.find(path)
            if p.endswith(suffix) and (temporary or not p.rsplit("/", 1)[-1].startswith(TEMP_PREFIX))
        )
    return [url_of(fs, p) for p in found]


def url_of(fs: AbstractFileSystem, path: str) -> str:
    """A path inside `fs` -> the URL the other helpers take (a plain path on a local disk)."""
    protocol = protocols(fs)[0]
    return path if protocol in ("file", "local") else f"{protocol}://{path}"


def remove(url: str) -> None:
    """Remove the object or folder (recursively) at `url`, if there is one."""
    with storage_errors(url, "remove"):
        fs, path = filesystem(url)
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass
