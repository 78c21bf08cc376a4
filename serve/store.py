"""Instrument status in storage, the one truth every ingress replica reads and writes.

Per instrument `<serve.storage>/<id>/`: `status.json` (queued / running / failed, notes done, the
owner replica and the time its lease ends), `manifest.json` (written last by the Scorer: done),
and `<serve.storage>/_active/<id>` while it is accepted and unfinished, so a replica looking for
work left by a dead owner lists one small folder. A queued or running instrument whose lease has
ended is reported `stale` until a replica adopts it.
"""

from __future__ import annotations

import re
import time

from instrumentgen import storage
from instrumentgen.instruments.export import DSPRESET_FILE, SF2_FILE, SFZ_FILE
from instrumentgen.instruments.manifest import InstrumentManifest
from instrumentgen.instruments.slices import BUNDLE_FILE, CODES_FILE

STATUS, ACTIVE = "status.json", "_active"
ID_PATTERN = r"^[0-9a-f]{32}$"
# The only paths served from an instrument's folder: its notes, presets, bundle, codes and records.
FILE_PATTERN = re.compile(
    r"(notes/\d{3}_v\d{3}\.(wav|flac)|instrument\.(sfz|dspreset|sf2|zip)|codes\.npy|manifest\.json|status\.json)"
)
RUNNING = ("queued", "running")


class StatusStore:
    """Reads and writes instruments' status under `root`; `lease_s` is how long an owner's lease lasts."""

    def __init__(self, root: str, lease_s: float, id_pattern: str = ID_PATTERN):
        self.root, self.lease_s, self.id_pattern = root, lease_s, id_pattern

    def url(self, instrument: str) -> str:
        """The storage folder of an instrument."""
        return storage.join(self.root, instrument)

    def raw(self, instrument: str) -> dict | None:
        """status.json as stored (None if there is none)."""
        url = storage.join(self.url(instrument), STATUS)
        return storage.read_json(url) if storage.exists(url) else None

    def write(self, status: dict) -> None:
        storage.write_json(storage.join(self.url(status["id"]), STATUS), status)

    def is_done(self, instrument: str) -> bool:
        return storage.exists(storage.join(self.url(instrument), storage.MANIFEST))

    def status(self, instrument: str) -> dict | None:
        """What GET answers: the stored status (`stale` for a lapsed lease) with the manifest's results
        once done; None for an unknown instrument."""
        status = self.raw(instrument)
        if self.is_done(instrument):
            manifest = InstrumentManifest.read(self.url(instrument))
            return {**(status or {}), **results(instrument, manifest), "status": "done"}
        if status is not None and status["status"] in RUNNING and not lease_live(status):
            status = {**status, "status": "stale"}
        return status

    def mark_active(self, instrument: str) -> None:
        storage.write_bytes(storage.join(self.root, ACTIVE, instrument), b"")

    def unmark_active(self, instrument: str) -> None:
        fs, path = storage.filesystem(storage.join(self.root, ACTIVE, instrument))
        if fs.exists(path):
            fs.rm(path)

    def active(self) -> list[str]:
        """The ids of accepted, unfinished instruments."""
        names = [url.rsplit("/", 1)[-1] for url in storage.list_files(storage.join(self.root, ACTIVE))]
        return [name for name in names if re.match(ID_PATTERN, name)]

    def file_url(self, instrument: str, path: str) -> str | None:
        """The storage URL of an instrument's file, or None for any path outside the instrument's own
        files (`..`, absolute paths, encoded variants, a trailing newline, staging objects) or a link."""
        if not re.fullmatch(self.id_pattern[1:-1], instrument) or not FILE_PATTERN.fullmatch(path):
            return None
        url = storage.join(self.url(instrument), path)
        fs, local = storage.filesystem(url)
        if not fs.exists(local) or not fs.isfile(local):
            return None
        if "file" in storage.protocols(fs) and _has_link(self.root, local):
            return None
        return url


def _has_link(root: str, path: str) -> bool:
    """Whether any part of local `path` below `root` is a symbolic link (never followed)."""
    import os

    base = os.path.realpath(root)
    current = path
    while current and os.path.abspath(current) != base and current != os.path.dirname(current):
        if os.path.islink(current):
            return True
        current = os.path.dirname(current)
    return False


def lease_live(status: dict) -> bool:
    """Whether the owner's lease in a stored status has not ended yet."""
    return status.get("lease_until", 0) > time.time()


def results(instrument: str, manifest: InstrumentManifest, files: str | None = None) -> dict:
    """The part of a GET answer a finished instrument's manifest gives: scores and file links (under
    `files`, by default the served instrument's files route)."""
    files = files or f"/v1/instruments/{instrument}/files"
    return {
        "id": instrument,
        "seed": manifest.about["seed"],
        "model_id": manifest.about["model_id"],
        "notes_done": len(manifest.notes),
        "notes_total": len(manifest.notes),
        **{key: manifest.about[key] for key in ("parent", "regenerated") if key in manifest.about},
        **{
            key: manifest.about.get(key)
            for key in ("tc", "tc_without_selection", "mad_pitch", "unvoiced", "candidates", "workers")
        },
        "format": manifest.presets.get("format"),
        "sfz": f"{files}/{SFZ_FILE}",
        "dspreset": f"{files}/{DSPRESET_FILE}",
        "sf2": f"{files}/{SF2_FILE}",
        "bundle": f"{files}/{BUNDLE_FILE}",
        "codes": f"{files}/{CODES_FILE}",
        "manifest": f"{files}/{storage.MANIFEST}",
        "notes": [
            {
                "pitch": n.pitch,
                "velocity": n.velocity,
                "url": f"{files}/{n.file}",
                "gain": n.gain,
                "f0_hz": n.f0_hz,
                "pitch_error_semitones": n.pitch_error_semitones,
            }
            for n in manifest.notes
        ],
    }
