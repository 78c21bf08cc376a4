"""A generated instrument: its notes, what made them, and the files a sampler loads.

`Instrument.write(url)` lays out, through fsspec (a path, `s3://...`, `memory://...`):

    <url>/notes/<pitch>_v<velocity>.wav   44.1 kHz, 24-bit PCM, one per (pitch, velocity) slot
    <url>/instrument.sfz                  one <region> per note: key range, pitch_keycenter, lovel/hivel
    <url>/instrument.dspreset             DecentSampler XML with the same mapping
    <url>/instrument.sf2                  SoundFont 2.04: every note's PCM (24-bit), a zone per note
    <url>/manifest.json                   prompt, seed, model id, config hash, notes; written last

The three sampler files and their shared key/velocity mapping are in `instruments/export.py`.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field

import numpy as np
import torch

from instrumentgen import storage
from instrumentgen.audio import decode_audio, encode_audio, note_gains
from instrumentgen.instruments.export import DSPRESET_FILE as DSPRESET_FILE  # re-exported for serve/
from instrumentgen.instruments.export import SFZ_FILE as SFZ_FILE  # re-exported for serve/
from instrumentgen.instruments.export import note_file, write_presets
from instrumentgen.instruments.manifest import InstrumentError, InstrumentManifest, NoteEntry

WRITE_THREADS = 8  # object stores are latency-bound: write several notes at once


@dataclass
class Instrument:
    """S notes of one instrument.

    audio: float32 [S, L] at `sample_rate_hz`; pitches, velocities: S MIDI values (slot order);
    metadata: prompt, seed, model id, config hash, scores... (JSON-serialisable).
    """

    audio: torch.Tensor
    pitches: list[int]
    velocities: list[int]
    sample_rate_hz: int
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        if (
            self.audio.dim() != 2
            or self.audio.shape[0] != len(self.pitches)
            or len(self.pitches) != len(self.velocities)
        ):
            raise InstrumentError(
                f"audio {tuple(self.audio.shape)} must be [S, L] with S = len(pitches) = "
                f"len(velocities) ({len(self.pitches)}, {len(self.velocities)})"
            )
        if len(set(zip(self.pitches, self.velocities))) != len(self.pitches):
            raise InstrumentError("two notes share a (pitch, velocity) slot; each slot holds one note")

    def __len__(self) -> int:
        return len(self.pitches)

    def write(self, url: str, title: str | None = None, audio_format: str = "wav24") -> InstrumentManifest:
        """Write notes (`audio_format`: wav24, wav16 or flac), SFZ, DecentSampler preset, SF2 and, last,
        the manifest under `url`; returns the manifest."""
        audio = self.audio.detach().float().cpu().numpy()
        if not np.isfinite(audio).all():
            raise InstrumentError("audio holds NaN or inf; refusing to write a broken instrument")
        gains = note_gains(torch.from_numpy(audio)).tolist()  # never clip: a note that would is scaled alone
        jobs = [
            (
                storage.join(url, note_file(p, v, audio_format)),
                encode_audio(audio[i] * gains[i], self.sample_rate_hz, audio_format),
            )
            for i, (p, v) in enumerate(zip(self.pitches, self.velocities))
        ]
        with concurrent.futures.ThreadPoolExecutor(WRITE_THREADS) as pool:
            list(pool.map(lambda job: storage.write_bytes(*job), jobs))
        title = title or self.metadata.get("prompt")
        presets = write_presets(url, self.pitches, self.velocities, audio_format, title, [data for _, data in jobs])
        manifest = InstrumentManifest(
            [
                NoteEntry(p, v, note_file(p, v, audio_format), gain)
                for p, v, gain in zip(self.pitches, self.velocities, gains)
            ],
            self.sample_rate_hz,
            audio.shape[1],
            presets,
            dict(self.metadata),
        )
        manifest.write(url)
        return manifest

    @classmethod
    def read(cls, url: str) -> "Instrument":
        """The instrument written by `write` at `url` (audio as written, after each note's `gain`)."""
        manifest = InstrumentManifest.read(url)
        notes = manifest.notes
        audio = [decode_audio(storage.read_bytes(storage.join(url, n.file)), n.file)[0] for n in notes]
        return cls(
            torch.from_numpy(np.stack(audio)),
            [n.pitch for n in notes],
            [n.velocity for n in notes],
            manifest.sample_rate_hz,
            manifest.about,
        )
