"""A small NSynth-format data set for tests and the demo, in both released formats.

Notes are genuinely pitched: a sum of harmonics of the labelled MIDI pitch's f0 (below Nyquist)
under an attack/decay envelope. Each instrument has its own `Timbre` (spectral tilt, odd/even
balance, decay), so timbre metrics have something true to measure; loudness grows with velocity.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass

import numpy as np

from instrumentgen import storage
from instrumentgen.audio import encode_audio
from instrumentgen.data import tfrecord
from instrumentgen.vocab import FAMILIES, NSYNTH_NUM_SAMPLES, NSYNTH_SAMPLE_RATE_HZ, SOURCES, midi_to_hz


@dataclass(frozen=True)
class Timbre:
    """What makes a fixture instrument sound like itself: spectral tilt, odd/even balance, envelope."""

    tilt_db_per_octave: float  # how fast harmonics fall off: bright (-3) .. dull (-18)
    even_gain: float  # 0 = odd harmonics only (clarinet-like) .. 1 = all harmonics equal weight
    decay_s: float  # exponential decay time constant of the note
    attack_s: float = 0.01


def timbre_for(index: int) -> Timbre:
    """A distinct, deterministic timbre for the index-th fixture instrument."""
    rng = np.random.default_rng(1000 + index)
    return Timbre(
        tilt_db_per_octave=float(rng.uniform(-18, -3)),
        even_gain=float(rng.uniform(0, 1)),
        decay_s=float(rng.uniform(0.3, 3.0)),
        attack_s=float(rng.uniform(0.002, 0.05)),
    )


def synth_note(
    pitch: int, velocity: int, timbre: Timbre, sample_rate_hz: int = NSYNTH_SAMPLE_RATE_HZ, duration_s: float = 4.0
) -> np.ndarray:
    """A harmonic note -> float32 [duration_s * sample_rate_hz], peak about 0.9 * velocity / 127."""
    n = int(round(duration_s * sample_rate_hz))
    t = np.arange(n) / sample_rate_hz
    f0 = midi_to_hz(pitch)
    note = np.zeros(n)
    for k in range(1, int((sample_rate_hz / 2) // f0) + 1):
        gain_db = timbre.tilt_db_per_octave * np.log2(k)
        gain = 10 ** (gain_db / 20) * (timbre.even_gain if k % 2 == 0 else 1.0)
        note += gain * np.sin(2 * np.pi * k * f0 * t + 0.1 * k)
    envelope = np.minimum(t / timbre.attack_s, 1.0) * np.exp(-t / timbre.decay_s)
    note *= envelope
    note *= 0.9 * (velocity / 127) / max(np.abs(note).max(), 1e-9)
    return note.astype(np.float32)


@dataclass(frozen=True)
class FixtureInstrument:
    """One fixture instrument: its NSynth family, source and number."""

    family: str
    source: str
    index: int  # NSynth-style instrument number within family/source

    @property
    def name(self) -> str:
        return f"{self.family}_{self.source}_{self.index:03d}"


def default_instruments(count: int) -> list[FixtureInstrument]:
    """`count` fixture instruments cycling through the families and sources."""
    return [FixtureInstrument(FAMILIES[i % len(FAMILIES)], SOURCES[i % len(SOURCES)], i) for i in range(count)]


def _metadata(inst: FixtureInstrument, inst_id: int, pitch: int, velocity: int, note_id: int) -> dict:
    return {
        "note": note_id,
        "note_str": f"{inst.name}-{pitch:03d}-{velocity:03d}",
        "instrument": inst_id,
        "instrument_str": inst.name,
        "pitch": pitch,
        "velocity": velocity,
        "sample_rate": NSYNTH_SAMPLE_RATE_HZ,
        "qualities": [0] * 10,
        "qualities_str": [],
        "instrument_family": FAMILIES.index(inst.family),
        "instrument_family_str": inst.family,
        "instrument_source": SOURCES.index(inst.source),
        "instrument_source_str": inst.source,
    }


def fixture_notes(instruments: list[FixtureInstrument], pitches: list[int], velocities: list[int]):
    """(metadata, audio) for every instrument x pitch x velocity."""
    note_id = 0
    for inst_id, inst in enumerate(instruments):
        timbre = timbre_for(inst.index)
        for pitch in pitches:
            for velocity in velocities:
                yield _metadata(inst, inst_id, pitch, velocity, note_id), synth_note(pitch, velocity, timbre)
                note_id += 1


def bad_records() -> list[tuple[dict, np.ndarray | bytes, int, str]]:
    """(metadata, audio or raw wav bytes, sample rate, expected rejection reason) of four bad records."""
    inst = FixtureInstrument("brass", "acoustic", 900)
    good = synth_note(60, 100, timbre_for(900))
    pitch12 = _metadata(inst, 900, 12, 100, 9000)
    missing = _metadata(inst, 900, 61, 100, 9001)
    del missing["velocity"]
    wrong_rate = _metadata(inst, 900, 62, 100, 9002)
    corrupt = _metadata(inst, 900, 63, 100, 9003)
    return [
        (pitch12, good, NSYNTH_SAMPLE_RATE_HZ, "pitch_out_of_range"),
        (missing, good, NSYNTH_SAMPLE_RATE_HZ, "missing_field"),
        (wrong_rate, good[:44100], 22050, "wrong_sample_rate"),
        (corrupt, b"RIFF\x00\x00garbage-not-a-wav", NSYNTH_SAMPLE_RATE_HZ, "unreadable_audio"),
    ]


# format -> (its URL under a split's root, the file written last: present only once the format is whole)
FIXTURE_LAYOUT = {
    "jsonwav": ("jsonwav", "jsonwav/examples.json"),
    "tfrecord": ("nsynth.tfrecord", "nsynth.tfrecord"),
}


def written_fixture(root: str, fmt: str) -> str | None:
    """The URL of format `fmt` of a fixture split that `write_fixture_nsynth` wrote whole under `root`,
    else None (never written, or interrupted before its last file)."""
    where, last = FIXTURE_LAYOUT[fmt]
    return storage.join(root, where) if storage.exists(storage.join(root, last)) else None


def write_fixture_nsynth(
    root: str,
    instruments: int | list[FixtureInstrument] = 3,
    pitches: list[int] | None = None,
    velocities: list[int] | None = None,
    formats: tuple[str, ...] = ("jsonwav", "tfrecord"),
    with_bad_records: bool = False,
) -> dict:
    """Write a fixture split under `root` (path or fsspec URL); returns {format: url}.

    jsonwav -> `<root>/jsonwav/` (examples.json + audio/*.wav), tfrecord -> `<root>/nsynth.tfrecord`.
    With `with_bad_records`, four bad records (see `bad_records`) are mixed in; in TFRecord the
    unreadable wav becomes a record of the wrong length (`wrong_length`).
    """
    insts = default_instruments(instruments) if isinstance(instruments, int) else instruments
    pitches = pitches or [36, 48, 60, 72, 84]
    velocities = velocities or [50, 100]
    notes = list(fixture_notes(insts, pitches, velocities))
    bad = bad_records() if with_bad_records else []
    urls = {}
    if "jsonwav" in formats:
        url = storage.join(root, FIXTURE_LAYOUT["jsonwav"][0])
        examples = {}
        for meta, audio in notes:
            storage.write_bytes(
                storage.join(url, "audio", meta["note_str"] + ".wav"),
                encode_audio(audio, NSYNTH_SAMPLE_RATE_HZ, "wav16"),
            )
            examples[meta["note_str"]] = meta
        for meta, audio, rate, _ in bad:
            data = audio if isinstance(audio, bytes) else encode_audio(audio, rate, "wav16")
            storage.write_bytes(storage.join(url, "audio", meta["note_str"] + ".wav"), data)
            examples[meta["note_str"]] = meta
        storage.write_bytes(storage.join(root, FIXTURE_LAYOUT["jsonwav"][1]), json.dumps(examples, indent=1).encode())
        urls["jsonwav"] = url
    if "tfrecord" in formats:
        url = storage.join(root, FIXTURE_LAYOUT["tfrecord"][0])
        buf = io.BytesIO()
        for meta, audio in notes:
            tfrecord.write_record(buf, tfrecord.encode_example({**meta, "audio": audio}))
        for meta, audio, rate, _ in bad:
            audio = np.zeros(NSYNTH_NUM_SAMPLES // 2, np.float32) if isinstance(audio, bytes) else audio
            tfrecord.write_record(buf, tfrecord.encode_example({**meta, "sample_rate": rate, "audio": audio}))
        storage.write_bytes(url, buf.getvalue())
        urls["tfrecord"] = url
    return urls
