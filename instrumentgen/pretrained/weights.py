"""Weight files: a local path, any fsspec URL, or a release URL -> a file on this machine.

Pretrained weights (DAC, CLAP) are named by the user as a release name, a local path or an
fsspec URL (`s3://`, `gs://`, `memory://`, `file://`). Remote files are copied once into a local
cache (the loaders of both libraries want a local path). Offline machines get a `WeightsError`
that says which file to fetch, where to put it and which config key takes its path, instead of a
download that hangs or a silent random init.

Offline means `HF_HUB_OFFLINE` or `INSTRUMENTGEN_OFFLINE` is set to a true value: the tests set
the first, so no test ever tries the internet, and `instrumentgen.pretrained.clap` defaults it to 1 (an
import of transformers can hang without internet), so a process that loads CLAP downloads
nothing unless the user sets `HF_HUB_OFFLINE=0`.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

import torch

from instrumentgen import storage
from instrumentgen.errors import UserError

CACHE_ENV = "INSTRUMENTGEN_CACHE"
SHA256_SUFFIX = ".sha256"  # `<file>.sha256` beside a staged weight file: its sum, `sha256sum` format
DOWNLOAD_TIMEOUT_S = 20  # per socket operation: a blocked network fails in seconds, not minutes


class WeightsError(UserError):
    """A weight file is missing or cannot be fetched; the message names the file and the config key."""


def cache_dir(kind: str) -> Path:
    """Local folder for weight files of `kind` (`$INSTRUMENTGEN_CACHE/<kind>`, default ~/.cache/instrumentgen)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "instrumentgen"
    return Path(root) / kind


def is_offline() -> bool:
    """Whether downloads are off (HF_HUB_OFFLINE or INSTRUMENTGEN_OFFLINE true)."""
    return any(
        os.environ.get(k, "").lower() in ("1", "true", "yes", "on") for k in ("HF_HUB_OFFLINE", "INSTRUMENTGEN_OFFLINE")
    )


def missing_message(what: str, url: str, dest: Path, key: str, reason: str) -> str:
    """The error for a missing weight file: what to fetch, where to put it, which key takes its path."""
    return (
        f"{what} weights are not on this machine and cannot be downloaded ({reason}). "
        f"Fetch {url} and put it at {dest}, or set {key}=<local path or URL of that file>."
    )


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
    replaced object is fetched again. A file staged by `jobs.stage_weights` has its sha256 in
    `<file>.sha256` beside it: the copy is checked against it, and a mismatch is a `WeightsError`.
    """
    fs, path = storage.filesystem(path_or_url)
    if not fs.exists(path):
        raise WeightsError(f"{key}={path_or_url!r}: no such file; give an existing local path or fsspec URL")
    if "file" in storage.protocols(fs):
        return Path(path)
    info = fs.info(path)
    stamp = f"{path_or_url}|{info.get('size')}|{info.get('ETag') or info.get('mtime') or info.get('created')}"
    dest = cache_dir(kind) / hashlib.sha256(stamp.encode()).hexdigest()[:16] / Path(path).name
    if not dest.exists():
        expected = _staged_sha256(fs, path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        with storage.atomic_path(dest) as tmp:
            with fs.open(path, "rb") as src, open(tmp, "wb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
            if expected is not None and sha256_file(tmp) != expected:
                raise WeightsError(
                    f"{key}={path_or_url!r}: sha256 mismatch with {path_or_url}{SHA256_SUFFIX} "
                    "(a partial or replaced upload); stage it again with python -m jobs.stage_weights"
                )
    return dest


def local_folder(path_or_url: str, kind: str, key: str) -> Path:
    """A local copy of the folder at `path_or_url` (e.g. a tokenizer), each file as `local_file` copies it."""
    fs, path = storage.filesystem(path_or_url)
    if "file" in storage.protocols(fs):
        return Path(path)
    if not fs.isdir(path):
        raise WeightsError(f"{key}={path_or_url!r}: no such folder; give an existing local folder or fsspec URL")
    files = [f for f in fs.find(path) if not f.endswith(SHA256_SUFFIX)]
    protocol = storage.protocols(fs)[0]
    copies = [local_file(f"{protocol}://{f}", kind, key) for f in files]
    folder = cache_dir(kind) / hashlib.sha256("|".join(map(str, copies)).encode()).hexdigest()[:16]
    for file, copy in zip(files, copies):
        link = folder / file[len(path) :].strip("/")
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            with storage.atomic_path(link) as tmp:
                os.link(copy, tmp)
    return folder


def sha256_file(path: Path) -> str:
    """The full sha256 of a local file (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _staged_sha256(fs, path: str) -> str | None:
    sidecar = path + SHA256_SUFFIX
    if not fs.exists(sidecar):
        return None
    with fs.open(sidecar, "rb") as f:
        return f.read().decode().split()[0]


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


def _write_atomic(dest: Path, src) -> None:
    """Copy the stream `src` to `dest` through `storage.atomic_path`."""
    with storage.atomic_path(dest) as tmp, open(tmp, "wb") as out:
        for block in iter(lambda: src.read(1 << 20), b""):
            out.write(block)


def seeded_file(kind: str, name: str, recipe: object, seed: int, save: Callable[[Path], None]) -> Path:
    """The cached weight file of a tiny random-init model: `save(path)` builds and writes it once.

    The file is `cache_dir(kind)/<name>-<hash of recipe and seed>.<suffix of name>`; `save` runs
    under `torch.manual_seed(seed)` with the caller's random state restored afterwards, and
    writes through `storage.atomic_path`, so concurrent workers leave exactly one complete file.
    The model is then loaded back through the release loading code, which a test of it tests.
    """
    stem, dot, suffix = name.rpartition(".")
    digest = hashlib.sha256(json.dumps([recipe, seed], sort_keys=True, default=str).encode()).hexdigest()[:8]
    path = cache_dir(kind) / f"{stem}-{digest}{dot}{suffix}"
    if not path.exists():
        with torch.random.fork_rng(devices=[]), storage.atomic_path(path) as tmp:
            torch.manual_seed(seed)
            save(tmp)
    return path
