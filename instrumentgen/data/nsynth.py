"""NSynth readers for both released formats, and a validator that explains each bad record.

json/wav layout: `<root>/examples.json` ({note_str: metadata}) and `<root>/audio/<note_str>.wav`
(16 kHz, 4 s, 16-bit). TFRecord: one file of `tf.train.Example`s with the same metadata and an
`audio` float list. Both read from a local path or any fsspec URL.

Readers yield *raw records* (plain dicts: NSynth's metadata fields plus `audio` float32 [L] and
`sample_rate`), never raising for one bad record; `validate(raw)` returns a `Rejection` (reason,
detail) or None, and `to_note(raw)` turns a valid record into a `NoteRecord`.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import soundfile as sf

from instrumentgen import storage
from instrumentgen.data import tfrecord
from instrumentgen.errors import UserError
from instrumentgen.vocab import (
    FAMILIES,
    NSYNTH_NUM_SAMPLES,
    NSYNTH_SAMPLE_RATE_HZ,
    PITCH_MAX,
    PITCH_MIN,
    SOURCES,
    VELOCITIES,
)

REQUIRED_FIELDS = (
    "note_str",
    "instrument",
    "instrument_str",
    "pitch",
    "velocity",
    "instrument_family",
    "instrument_source",
)
FORMATS = ("jsonwav", "tfrecord")


class NSynthError(UserError):
    """The data set itself cannot be read (missing examples.json, unknown format)."""


@dataclass(frozen=True)
class Rejection:
    """Why a record was not kept: a reason code (counted in manifests) and a human detail."""

    reason: str  # a stable category, counted in manifests: e.g. "wrong_sample_rate"
    detail: str  # what was found, for humans


@dataclass
class NoteRecord:
    """One valid NSynth note. audio: float32 [64000] at 16 kHz."""

    note_str: str
    instrument: int
    instrument_str: str
    family: int
    source: int
    pitch: int
    velocity: int
    audio: np.ndarray


def detect_format(url: str) -> str:
    """`jsonwav` or `tfrecord` for an NSynth split URL; `NSynthError` if it is neither."""
    if url.rstrip("/").endswith((".tfrecord", ".tfrecords")) or ".tfrecord-" in url:
        return "tfrecord"
    if storage.exists(storage.join(url, "examples.json")):
        return "jsonwav"
    raise NSynthError(
        f"data.source={url!r} is neither a TFRecord file (*.tfrecord) nor a folder with examples.json; "
        f"allowed formats: {', '.join(FORMATS)}"
    )


def read_examples_json(root: str) -> list[dict]:
    """Metadata rows of a json/wav split, each with `audio_url` added, sorted by note_str."""
    try:
        examples = storage.read_json(storage.join(root, "examples.json"))
    except FileNotFoundError:
        raise NSynthError(f"no examples.json under {root!r}") from None
    rows = []
    for note_str, meta in sorted(examples.items()):
        rows.append({**meta, "note_str": note_str, "audio_url": storage.join(root, "audio", f"{note_str}.wav")})
    return rows


def load_wav(row: dict) -> dict:
    """A json/wav metadata row -> raw record with `audio` and `sample_rate` read from its wav.

    An unreadable file gives a record with `audio_error` set instead of raising."""
    raw = {k: v for k, v in row.items() if k != "audio_url"}
    try:
        audio, sample_rate = sf.read(io.BytesIO(storage.read_bytes(row["audio_url"])), dtype="float32", always_2d=True)
        raw["audio"], raw["sample_rate"] = audio.mean(axis=1), sample_rate
    except (OSError, RuntimeError, sf.LibsndfileError) as e:
        raw["audio_error"] = f"{type(e).__name__}: {e}"
    return raw


def example_to_raw(data: bytes) -> dict:
    """One serialized NSynth `tf.train.Example` -> raw record."""
    features = tfrecord.decode_example(data)
    raw = {}
    for name, value in features.items():
        if isinstance(value, list):
            raw[name] = value[0].decode() if len(value) == 1 else [v.decode() for v in value]
        elif name in ("audio", "qualities"):
            raw[name] = value
        else:
            raw[name] = int(value[0]) if len(value) == 1 else value
    return raw


def iter_raw(url: str, format: str = "auto") -> Iterator[dict]:
    """Raw records of a split in file order, in either format."""
    format = detect_format(url) if format == "auto" else format
    if format == "jsonwav":
        for row in read_examples_json(url):
            yield load_wav(row)
    elif format == "tfrecord":
        fs, path = storage.filesystem(url)
        with fs.open(path, "rb") as f:
            for data in tfrecord.iter_records(f):
                yield example_to_raw(data)
    else:
        raise NSynthError(f"data.format={format!r} is unknown; allowed: auto, {', '.join(FORMATS)}")


def validate(raw: dict) -> Rejection | None:
    """None if `raw` is a usable note of the 88 keys, else why not."""
    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        return Rejection("missing_field", f"missing {', '.join(missing)}")
    if "audio_error" in raw:
        return Rejection("unreadable_audio", raw["audio_error"])
    if "audio" not in raw:
        return Rejection("missing_field", "missing audio")
    if raw.get("sample_rate", NSYNTH_SAMPLE_RATE_HZ) != NSYNTH_SAMPLE_RATE_HZ:
        return Rejection("wrong_sample_rate", f"{raw['sample_rate']} Hz, expected {NSYNTH_SAMPLE_RATE_HZ}")
    if len(raw["audio"]) != NSYNTH_NUM_SAMPLES:
        return Rejection("wrong_length", f"{len(raw['audio'])} samples, expected {NSYNTH_NUM_SAMPLES}")
    if not np.all(np.isfinite(raw["audio"])):
        return Rejection("non_finite_audio", "NaN or inf samples")
    if raw["instrument_family"] not in range(len(FAMILIES)):
        return Rejection(
            "unknown_family", f"instrument_family={raw['instrument_family']}, allowed 0..{len(FAMILIES) - 1}"
        )
    if raw["instrument_source"] not in range(len(SOURCES)):
        return Rejection(
            "unknown_source", f"instrument_source={raw['instrument_source']}, allowed 0..{len(SOURCES) - 1}"
        )
    if not PITCH_MIN <= raw["pitch"] <= PITCH_MAX:
        return Rejection("pitch_out_of_range", f"pitch={raw['pitch']}, allowed {PITCH_MIN}..{PITCH_MAX}")
    if raw["velocity"] not in VELOCITIES:
        return Rejection("bad_velocity", f"velocity={raw['velocity']}, allowed {VELOCITIES}")
    return None


def to_note(raw: dict) -> NoteRecord:
    """A validated raw record -> `NoteRecord` (call `validate` first)."""
    return NoteRecord(
        note_str=raw["note_str"],
        instrument=int(raw["instrument"]),
        instrument_str=raw["instrument_str"],
        family=int(raw["instrument_family"]),
        source=int(raw["instrument_source"]),
        pitch=int(raw["pitch"]),
        velocity=int(raw["velocity"]),
        audio=np.asarray(raw["audio"], dtype=np.float32),
    )


def iter_notes(url: str, format: str = "auto", skipped: Counter | None = None) -> Iterator[NoteRecord]:
    """Valid notes of a split; the reason of each skipped record is counted in `skipped`."""
    for raw in iter_raw(url, format):
        rejection = validate(raw)
        if rejection is None:
            yield to_note(raw)
        elif skipped is not None:
            skipped[rejection.reason] += 1
