"""Weight files: a local path, any fsspec URL, or a release URL -> a file on this machine.

Pretrained weights (DAC, CLAP) are named by the user as a release name, a local path or an
fsspec URL (`s3://`, `gs://`, `memory://`, `file://`). Remote files are copied once into a local
cache (the loaders of both libraries want a local path). Offline machines get a `WeightsError`
that says which file to fetch, where to put it and which config key takes its path, instead of a
download that hangs or a silent random init.

Offline means `HF_HUB_OFFLINE` or `INSTRUMENTGEN_OFFLINE` is set to a true value: the tests set
the first, so no test ever tries the internet, and `instrumentgen.clap` defaults it to 1 (an
import of transformers can hang without internet), so a process that loads CLAP downloads
nothing unless the user sets `HF_HUB_OFFLINE=0`.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from instrumentgen import storage
from instrumentgen.errors import UserError

CACHE_ENV = "INSTRUMENTGEN_CACHE"
DOWNLOAD_TIMEOUT_S = 20  # per socket operation: a blocked network fails in seconds, not minutes


class WeightsError(UserError):
    """A weight file is missing or cannot be fetched; the message names the file and the config key."""


def cache_dir(kind: str) -> Path:
    """Local folder for weight files of `kind` (`$INSTRUMENTGEN_CACHE/<kind>`, default ~/.cache/instrumentgen)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "instrumentgen"
    return Path(root) / kind


def is_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "INSTRUMENTGEN_OFFLINE"))


def missing_message(what: str, url: str, dest: Path, key: str, reason: str) -> str:
    return (f"{what} weights are not on this machine and cannot be downloaded ({reason}). "
            f"Fetch {url} and put it at {dest}, or set {key}=<local path or URL of that file>.")


def download(url: str, dest: Path, what: str, key: str) -> Path:
    """Return `dest`, downloading `url` there first if it is missing; `WeightsError` when offline."""
    if dest.exists():
        return dest
    if is_offline():
        reason = "offline: HF_HUB_OFFLINE or INSTRUMENTGEN_OFFLINE is set; set both to 0 to download"
        raise WeightsError(missing_message(what, url, dest, key, reason))
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            _write_atomic(dest, response)
    except (urllib.error.URLError, OSError) as e:
        raise WeightsError(missing_message(what, url, dest, key, f"download failed: {e}")) from None
    return dest


def local_file(path_or_url: str, kind: str, key: str) -> Path:
    """A local path to the file at `path_or_url`; remote files are copied once into `cache_dir(kind)`.

    The cached copy is named after the URL and the object's size and version stamp, so a
    replaced object is fetched again.
    """
    fs, path = storage.filesystem(path_or_url)
    if not fs.exists(path):
        raise WeightsError(f"{key}={path_or_url!r}: no such file; give an existing local path or fsspec URL")
    if "file" in _protocols(fs):
        return Path(path)
    info = fs.info(path)
    stamp = f"{path_or_url}|{info.get('size')}|{info.get('ETag') or info.get('mtime') or info.get('created')}"
    dest = cache_dir(kind) / hashlib.sha256(stamp.encode()).hexdigest()[:16] / Path(path).name
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        with fs.open(path, "rb") as src:
            _write_atomic(dest, src)
    return dest


def file_digest(path: Path) -> str:
    """Short fingerprint of a weight file for manifests: sha256 of its size, first and last MiB.

    Reading all of a multi-GB checkpoint in every worker would cost seconds per load; any two
    different releases or trainings differ within those bytes.
    """
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(size - (1 << 20), 0))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:12]


def _protocols(fs) -> tuple[str, ...]:
    return tuple(fs.protocol) if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)


def _write_atomic(dest: Path, src) -> None:
    # Concurrent workers may fetch the same file: each writes its own temporary file and the
    # rename makes exactly one complete copy visible.
    tmp = tempfile.NamedTemporaryFile(dir=dest.parent, prefix=".tmp-", delete=False)
    try:
        with tmp:
            for block in iter(lambda: src.read(1 << 20), b""):
                tmp.write(block)
        os.replace(tmp.name, dest)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
