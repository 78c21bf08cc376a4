"""fsspec helpers: every artefact goes through these, for `file://`, `s3://`, `gs://`, `memory://`.

Writes are atomic per object: data goes to a temporary key beside the target and is moved into
place only when complete, so a reader never sees a half-written object under its final name.
A folder of objects is complete when its `manifest.json` exists (written last).
"""
from __future__ import annotations

import json
import uuid
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

MANIFEST = "manifest.json"


def filesystem(url: str) -> tuple[AbstractFileSystem, str]:
    """URL or local path -> (filesystem, path inside it)."""
    return fsspec.core.url_to_fs(url)


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(p.strip("/") for p in parts)])


def write_bytes(url: str, data: bytes) -> None:
    """Write `data` to `url` atomically (temporary key, then move)."""
    fs, path = filesystem(url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[-1]}" if parent else f".tmp-{uuid.uuid4().hex}-{path}"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    with fs.open(path, "rb") as f:
        return f.read()


def write_json(url: str, obj: Any) -> None:
    write_bytes(url, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def list_files(url: str, suffix: str = "") -> list[str]:
    """Full URLs of the files under `url` (recursively) whose names end with `suffix`, sorted;
    temporary objects left by an interrupted write are skipped."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    found = sorted(p for p in fs.find(path) if p.endswith(suffix) and not p.rsplit("/", 1)[-1].startswith(".tmp-"))
    return [p if protocol in ("file", "local") else f"{protocol}://{p}" for p in found]
