"""Stage the pretrained weights in the bucket, with their sha256 sums, so no job reads a hub.

    python -m jobs.stage_weights bucket=s3://my-bucket \\
        codec=~/.cache/descript/dac/weights_44khz_8kbps_0.0.1.pth \\
        clap=music_audioset_epoch_15_esc_90.14.pt tokenizer=./roberta-base [vggish=vggish-10086976.pth]
    python -m jobs.stage_weights verify=s3://my-bucket     # re-read every file against the manifest

Sources are local paths or fsspec URLs; `tokenizer` is a folder (roberta-base's config.json,
vocab.json, merges.txt). Each file is copied to the fixed place `instrumentgen.pretrained.staged`
names (`<bucket>/weights/...`), with `<file>.sha256` beside it; `manifest.json` (sha256, size,
source of every file, and the config overrides that read them) is written last, after every copy
was read back and checked. It prints those overrides. A missing source, a missing staged file or
a checksum mismatch is one line naming the file (exit 2). No Ray: this runs on a laptop.
"""

from __future__ import annotations

import hashlib
import sys
import uuid
from pathlib import Path
from typing import Sequence

from instrumentgen import storage
from instrumentgen.config import ConfigError
from instrumentgen.errors import exit_code
from instrumentgen.pretrained.staged import STAGED, staged_overrides, weights_url
from instrumentgen.pretrained.weights import SHA256_SUFFIX, WeightsError

OPTIONAL = {"vggish"}  # only FAD with metrics.fad_embedder=vggish needs it
BLOCK = 8 << 20


def _sources(source: str, folder: bool, argument: str) -> list[tuple[str, str]]:
    """[(source file URL or path, its name under the staged folder)]; `WeightsError` when missing."""
    source = str(Path(source).expanduser()) if "://" not in source else source
    fs, path = storage.filesystem(source)
    if folder:
        if not fs.isdir(path):
            raise WeightsError(f"{argument}={source!r}: no such folder; give the tokenizer folder")
        names = sorted(p.rsplit("/", 1)[-1] for p in fs.find(path) if not p.rsplit("/", 1)[-1].startswith("."))
        if not names:
            raise WeightsError(f"{argument}={source!r}: the folder is empty; give the tokenizer folder")
        return [(storage.join(source, name), name) for name in names]
    if not fs.isfile(path):
        raise WeightsError(f"{argument}={source!r}: no such file; give a local path or URL of the weight file")
    return [(source, "")]


def _copy(source: str, dest: str) -> tuple[str, int]:
    """Stream `source` to `dest` (temporary key, then move); returns (sha256 hex, bytes)."""
    digest, size = hashlib.sha256(), 0
    src_fs, src_path = storage.filesystem(source)
    with storage.storage_errors(dest, "write"):
        fs, path = storage.filesystem(dest)
        parent, name = path.rsplit("/", 1)
        fs.makedirs(parent, exist_ok=True)
        tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{name}"
        with src_fs.open(src_path, "rb") as src, fs.open(tmp, "wb") as out:
            for block in iter(lambda: src.read(BLOCK), b""):
                digest.update(block)
                size += len(block)
                out.write(block)
        fs.mv(tmp, path)
    return digest.hexdigest(), size


def _object_sha256(url: str) -> str:
    digest = hashlib.sha256()
    with storage.storage_errors(url, "read"):
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            for block in iter(lambda: f.read(BLOCK), b""):
                digest.update(block)
    return digest.hexdigest()


def stage(bucket: str, sources: dict[str, str]) -> dict:
    """Copy `sources` ({argument: path or URL}) under `weights_url(bucket)`; returns the manifest written."""
    root = weights_url(bucket)
    plan = []  # every source is checked before the first byte is copied
    for weight in STAGED:
        if sources.get(weight.argument):
            for source, name in _sources(sources[weight.argument], weight.folder, weight.argument):
                plan.append((source, storage.join(weight.path, name)))
    files = {}
    for source, rel in plan:
        sha256, size = _copy(source, storage.join(root, rel))
        storage.write_bytes(storage.join(root, rel + SHA256_SUFFIX), f"{sha256}  {rel.rsplit('/', 1)[-1]}\n".encode())
        files[rel] = {"sha256": sha256, "bytes": size, "source": source}
    urls = staged_overrides(bucket)
    overrides = {w.key: urls[w.key] for w in STAGED if sources.get(w.argument)}
    manifest = {"format": 1, "files": files, "overrides": overrides}
    _check(root, manifest)
    storage.write_json(storage.join(root, storage.MANIFEST), manifest)
    return manifest


def _check(root: str, manifest: dict) -> None:
    for rel, entry in sorted(manifest["files"].items()):
        url = storage.join(root, rel)
        if not storage.exists(url):
            raise WeightsError(f"{url}: missing; stage it again with python -m jobs.stage_weights")
        found = _object_sha256(url)
        if found != entry["sha256"]:
            raise WeightsError(
                f"{url}: sha256 mismatch (found {found[:12]}…, the manifest has {entry['sha256'][:12]}…); "
                "stage it again with python -m jobs.stage_weights"
            )


def verify(bucket: str) -> dict:
    """Re-read every staged file of `bucket` against its manifest; returns the manifest."""
    root = weights_url(bucket)
    manifest_url = storage.join(root, storage.MANIFEST)
    if not storage.exists(manifest_url):
        raise WeightsError(f"{manifest_url}: missing; stage the weights first with python -m jobs.stage_weights")
    manifest = storage.read_json(manifest_url)
    _check(root, manifest)
    return manifest


def parse(argv: Sequence[str]) -> dict[str, str]:
    """`key=value` arguments -> dict; `ConfigError` naming an unknown, repeated or missing key."""
    allowed = ["bucket", "verify", *(w.argument for w in STAGED)]
    args: dict[str, str] = {}
    for arg in argv:
        key, is_pair, value = arg.partition("=")
        if not is_pair or key not in allowed:
            raise ConfigError(f"argument {arg!r} is not allowed; allowed: {', '.join(k + '=' for k in allowed)}")
        if key in args:
            raise ConfigError(f"{key}= is given twice; allowed: once")
        args[key] = value
    if "verify" in args:
        if len(args) > 1:
            raise ConfigError("verify= takes no other argument; allowed: verify=<bucket URL>")
        return args
    required = ["bucket", *(w.argument for w in STAGED if w.argument not in OPTIONAL)]
    missing = [key for key in required if not args.get(key)]
    if missing:
        raise ConfigError(
            f"{', '.join(k + '=' for k in missing)} required; allowed: {', '.join(k + '=' for k in allowed)}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Stage or verify; a `UserError` is one line on stderr and exit 2."""

    def stage_or_verify() -> None:
        args = parse(sys.argv[1:] if argv is None else argv)
        if "verify" in args:
            manifest = verify(args["verify"])
            print(f"{len(manifest['files'])} files match {weights_url(args['verify'])}/{storage.MANIFEST}")
        else:
            bucket = args.pop("bucket")
            manifest = stage(bucket, args)
            print(f"staged {len(manifest['files'])} files under {weights_url(bucket)}; configs read them with:")
        print(" ".join(f"{key}={url}" for key, url in manifest["overrides"].items()))

    return exit_code(stage_or_verify)


if __name__ == "__main__":
    sys.exit(main())
