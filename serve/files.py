"""Stored files over HTTP like files: Content-Length, ETag (If-None-Match -> 304), one byte range
(Range -> 206, If-Range honoured, 416 past the end), Cache-Control, streamed in chunks.

A finished instrument's files never change (its id covers the request, the seed and the model), so
they are `immutable` for a year; status.json and the files of an unfinished instrument are `no-cache`.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from instrumentgen import storage
from serve.schema import error_body

MEDIA_TYPES = {
    ".wav": "audio/wav",
    ".flac": "audio/flac",
    ".zip": "application/zip",
    ".json": "application/json",
    ".sfz": "text/plain; charset=utf-8",
    ".dspreset": "application/xml",
    ".sf2": "audio/x-soundfont",
    ".npy": "application/octet-stream",
}
CHUNK_BYTES = 1 << 20
IMMUTABLE, NO_CACHE = "public, max-age=31536000, immutable", "no-cache"
RANGE = re.compile(r"bytes=(\d*)-(\d*)")


def etag(url: str) -> tuple[str, int]:
    """(a strong ETag from the object's path, size and version, its size in bytes)."""
    fs, path = storage.filesystem(url)
    info = fs.info(path)
    version = info.get("ETag") or info.get("mtime") or info.get("LastModified") or info.get("created")
    digest = hashlib.sha256(f"{path}:{info['size']}:{version}".encode()).hexdigest()[:32]
    return f'"{digest}"', int(info["size"])


def byte_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """A Range header -> (first, last) byte, both included; None: serve it all (no or several ranges);
    "unsatisfiable": a range past the end (416)."""
    if not header:
        return None
    match = RANGE.fullmatch(header.strip())
    if match is None:
        return None  # several ranges or another unit: RFC 9110 lets a server ignore Range
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        count = int(last)
        return (max(0, size - count), size - 1) if count > 0 and size > 0 else "unsatisfiable"
    start, end = int(first), min(int(last) if last else size - 1, size - 1)
    return (start, end) if start < size and start <= end else "unsatisfiable"


async def _chunks(url: str, start: int, count: int):
    fs, path = storage.filesystem(url)
    f = await asyncio.to_thread(fs.open, path, "rb")
    try:
        await asyncio.to_thread(f.seek, start)
        while count > 0 and (chunk := await asyncio.to_thread(f.read, min(CHUNK_BYTES, count))):
            count -= len(chunk)
            yield chunk
    finally:
        f.close()


async def file_response(request: Request, url: str, finished: bool) -> Response:
    """The stored file at `url` for `request` (its Range, If-Range and If-None-Match headers)."""
    tag, size = await asyncio.to_thread(etag, url)
    headers = {"ETag": tag, "Accept-Ranges": "bytes", "Cache-Control": IMMUTABLE if finished else NO_CACHE}
    if finished and url.endswith("/status.json"):
        headers["Cache-Control"] = NO_CACHE
    if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    wanted = byte_range(request.headers.get("range"), size)
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != tag:
        wanted = None  # the client holds another version: send the whole file
    if wanted == "unsatisfiable":
        body = error_body("range", f"{request.headers.get('range')!r} is outside the file; allowed: bytes 0-{size - 1}")
        return JSONResponse(body, status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    media = MEDIA_TYPES.get(Path(url).suffix, "application/octet-stream")
    if wanted is None:
        return StreamingResponse(
            _chunks(url, 0, size), media_type=media, headers={**headers, "Content-Length": str(size)}
        )
    start, end = wanted
    headers.update({"Content-Length": str(end - start + 1), "Content-Range": f"bytes {start}-{end}/{size}"})
    return StreamingResponse(_chunks(url, start, end - start + 1), status_code=206, media_type=media, headers=headers)
