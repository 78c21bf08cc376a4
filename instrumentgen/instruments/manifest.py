"""`manifest.json`: what a complete instrument's folder holds and what made it; written last.

One typed record crosses every boundary where a manifest travels: `Instrument.write` and
`slices.write_instrument` build it, `Instrument.read`, the library index, the render job and the
Serve app read it. On disk it stays one flat JSON object (sorted keys):

    sample_rate_hz, num_samples, gain ("per_note")     how the notes are stored
    sfz, dspreset, sf2, format                          the sampler presets and the notes' format
    notes: [{pitch, velocity, file, gain, ...}, ...]    one per (pitch, velocity) slot, slot order
    everything else                                     `about`: prompt, seed, model id, config hash,
                                                        scores, codes/bundle names, workers...

A rendered instrument's notes also carry the candidate kept, f0 and pitch error (`NoteEntry`).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from instrumentgen import storage
from instrumentgen.errors import UserError

GAIN_POLICY = "per_note"  # `audio.note_gains`: each note scaled alone, and only when it would clip
PRESET_KEYS = ("sfz", "dspreset", "sf2", "format")
RENDERED_NOTE_KEYS = ("candidate", "f0_hz", "pitch_error_semitones")


class InstrumentError(UserError):
    """An instrument whose notes or manifest cannot be written or read; the message names what is wrong."""


@dataclass(frozen=True)
class NoteEntry:
    """One note file of the instrument: its slot, its file under the folder, the gain it was written
    at; for a rendered instrument also the candidate kept and its f0 / pitch error (None: unvoiced)."""

    pitch: int
    velocity: int
    file: str
    gain: float
    candidate: int | None = None
    f0_hz: float | None = None
    pitch_error_semitones: float | None = None

    def to_json(self) -> dict:
        """The note's JSON object (the rendered fields only when the note was rendered)."""
        entry = {"pitch": self.pitch, "velocity": self.velocity, "file": self.file, "gain": self.gain}
        if self.candidate is not None:
            entry.update({key: getattr(self, key) for key in RENDERED_NOTE_KEYS})
        return entry


@dataclass
class InstrumentManifest:
    """notes: S `NoteEntry` in slot order; sample_rate_hz, num_samples: every note's rate and length;
    presets: {sfz, dspreset, sf2, format} as `export.write_presets` returns them; about: the rest
    (JSON values: prompt, seed, model_id, scores, ...)."""

    notes: list[NoteEntry]
    sample_rate_hz: int
    num_samples: int
    presets: dict[str, str]
    about: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The flat JSON object of manifest.json."""
        return {
            **self.about,
            "sample_rate_hz": self.sample_rate_hz,
            "num_samples": self.num_samples,
            "gain": GAIN_POLICY,
            **self.presets,
            "notes": [note.to_json() for note in self.notes],
        }

    def to_bytes(self) -> bytes:
        """manifest.json as written (indented, sorted keys)."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: dict, where: str = "manifest.json") -> "InstrumentManifest":
        """The manifest of the JSON object `data`; `where` names it in errors."""
        missing = [key for key in ("sample_rate_hz", "num_samples", "notes") if key not in data]
        if missing:
            raise InstrumentError(f"{where} lacks {', '.join(missing)}; allowed: a manifest written by InstrumentGen")
        note_fields = {f.name for f in dataclasses.fields(NoteEntry)}
        try:
            notes = [NoteEntry(**{k: v for k, v in note.items() if k in note_fields}) for note in data["notes"]]
        except TypeError as e:
            raise InstrumentError(f"{where}: a note lacks pitch, velocity, file or gain ({e})") from None
        layout = {"sample_rate_hz", "num_samples", "gain", "notes", *PRESET_KEYS}
        return cls(
            notes,
            int(data["sample_rate_hz"]),
            int(data["num_samples"]),
            {key: data[key] for key in PRESET_KEYS if key in data},
            {key: value for key, value in data.items() if key not in layout},
        )

    def write(self, url: str) -> None:
        """Write `<url>/manifest.json` (one object: the folder is complete from here on)."""
        storage.write_bytes(storage.join(url, storage.MANIFEST), self.to_bytes())

    @classmethod
    def read(cls, url: str) -> "InstrumentManifest":
        """The manifest of the instrument folder `url`."""
        manifest_url = storage.join(url, storage.MANIFEST)
        if not storage.exists(manifest_url):
            raise InstrumentError(
                f"no {storage.MANIFEST} under {url!r}: not an instrument, or its write did not finish"
            )
        return cls.from_json(storage.read_json(manifest_url), manifest_url)
