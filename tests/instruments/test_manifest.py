"""manifest.json as one typed record: the JSON layout on disk, a round trip, and errors naming the field."""

import json

import pytest

from instrumentgen import storage
from instrumentgen.instruments.manifest import InstrumentError, InstrumentManifest, NoteEntry

PRESETS = {"sfz": "instrument.sfz", "dspreset": "instrument.dspreset", "sf2": "instrument.sf2", "format": "wav24"}


def rendered() -> InstrumentManifest:
    notes = [
        NoteEntry(60, 100, "notes/060_v100.wav", 1.0, candidate=1, f0_hz=261.6, pitch_error_semitones=0.02),
        NoteEntry(61, 100, "notes/061_v100.wav", 0.5, candidate=0, f0_hz=None, pitch_error_semitones=None),
    ]
    return InstrumentManifest(notes, 44100, 176400, PRESETS, {"prompt": "warm analog brass", "seed": 7, "tc": 0.3})


def test_the_json_is_flat_and_reads_back_equal(tmp_path):
    manifest = rendered()
    manifest.write(str(tmp_path))
    stored = json.loads((tmp_path / "manifest.json").read_text())
    assert stored["seed"] == 7 and stored["sf2"] == "instrument.sf2" and stored["gain"] == "per_note"
    assert stored["num_samples"] == 176400 and stored["format"] == "wav24"
    assert stored["notes"][1] == {
        "pitch": 61,
        "velocity": 100,
        "file": "notes/061_v100.wav",
        "gain": 0.5,
        "candidate": 0,
        "f0_hz": None,
        "pitch_error_semitones": None,
    }
    assert InstrumentManifest.read(str(tmp_path)) == manifest
    assert (tmp_path / "manifest.json").read_bytes() == manifest.to_bytes()


def test_a_written_instrument_note_has_no_rendered_fields():
    assert NoteEntry(21, 25, "notes/021_v025.wav", 1.0).to_json() == {
        "pitch": 21,
        "velocity": 25,
        "file": "notes/021_v025.wav",
        "gain": 1.0,
    }


def test_missing_manifest_or_field_is_named(tmp_path):
    with pytest.raises(InstrumentError, match="no manifest.json under"):
        InstrumentManifest.read(str(tmp_path))
    storage.write_json(str(tmp_path / "manifest.json"), {"notes": [], "seed": 1})
    with pytest.raises(InstrumentError, match="lacks sample_rate_hz, num_samples"):
        InstrumentManifest.read(str(tmp_path))
    one_field = {"notes": [{"pitch": 60}], "sample_rate_hz": 1, "num_samples": 1}
    storage.write_json(str(tmp_path / "manifest.json"), one_field)
    with pytest.raises(InstrumentError, match="a note lacks pitch, velocity, file or gain"):
        InstrumentManifest.read(str(tmp_path))
