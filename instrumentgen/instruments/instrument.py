"""A generated instrument: its notes, what made them, and the files a sampler loads.

`Instrument.write(url)` lays out, through fsspec (a path, `s3://...`, `memory://...`):

    <url>/notes/<pitch>_v<velocity>.wav   44.1 kHz, 24-bit PCM, one per (pitch, velocity) slot
    <url>/instrument.sfz                  one <region> per note: key range, pitch_keycenter, lovel/hivel
    <url>/instrument.dspreset             DecentSampler XML with the same mapping
    <url>/manifest.json                   prompt, seed, model id, config hash, notes; written last

Key ranges: each sampled pitch covers the keys nearer to it than to the next sampled pitch (a
full instrument samples all 88 keys, so each region is one key). Velocity layers: each layer
covers the velocities above the layer below it up to its own (25 -> 1..25, 50 -> 26..50, ...).
"""

from __future__ import annotations

import concurrent.futures
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

import numpy as np
import torch

from instrumentgen import storage
from instrumentgen.audio import audio_extension, decode_audio, encode_audio, note_gains
from instrumentgen.errors import UserError
from instrumentgen.vocab import PITCH_MAX, PITCH_MIN

SFZ_FILE, DSPRESET_FILE, NOTES_DIR = "instrument.sfz", "instrument.dspreset", "notes"
WRITE_THREADS = 8  # object stores are latency-bound: write several notes at once


class InstrumentError(UserError):
    """An instrument whose notes cannot be written or read; the message names what is wrong."""


def note_file(pitch: int, velocity: int, audio_format: str = "wav24") -> str:
    """The path of a note's audio file inside an instrument's folder."""
    return f"{NOTES_DIR}/{pitch:03d}_v{velocity:03d}{audio_extension(audio_format)}"


def key_ranges(pitches: list[int]) -> dict[int, tuple[int, int]]:
    """Sampled pitches -> {pitch: (lokey, hikey)} tiling MIDI 21..108 by nearest sampled pitch."""
    keys = sorted(set(pitches))
    bounds = [PITCH_MIN] + [(a + b) // 2 + 1 for a, b in zip(keys, keys[1:])] + [PITCH_MAX + 1]
    return {pitch: (bounds[i], bounds[i + 1] - 1) for i, pitch in enumerate(keys)}


def velocity_ranges(velocities: list[int]) -> dict[int, tuple[int, int]]:
    """Velocity layers -> {velocity: (lovel, hivel)} tiling MIDI velocities 1..127."""
    layers = sorted(set(velocities))
    lows = [1] + [v + 1 for v in layers[:-1]]
    return {v: (low, 127 if i == len(layers) - 1 else v) for i, (v, low) in enumerate(zip(layers, lows))}


def _mapping(pitches: list[int], velocities: list[int], audio_format: str) -> list[dict]:
    keys, layers = key_ranges(pitches), velocity_ranges(velocities)
    return [
        {"pitch": p, "velocity": v, "file": note_file(p, v, audio_format), "keys": keys[p], "velocities": layers[v]}
        for p, v in sorted(zip(pitches, velocities))
    ]


def sfz_text(pitches: list[int], velocities: list[int], audio_format: str = "wav24") -> str:
    """SFZ: one region per note, mapped to its key range and velocity layer."""
    lines = [
        "// InstrumentGen: one region per generated note",
        "<control>",
        "default_path=./",
        "<group>",
        "ampeg_release=0.3",
    ]
    for note in _mapping(pitches, velocities, audio_format):
        (lokey, hikey), (lovel, hivel) = note["keys"], note["velocities"]
        lines.append(
            f"<region> sample={note['file']} lokey={lokey} hikey={hikey} "
            f"pitch_keycenter={note['pitch']} lovel={lovel} hivel={hivel}"
        )
    return "\n".join(lines) + "\n"


def dspreset_xml(pitches: list[int], velocities: list[int], title: str, audio_format: str = "wav24") -> str:
    """DecentSampler preset XML with the same mapping as `sfz_text`."""
    root = ET.Element("DecentSampler", minVersion="1.0.0", title=title)
    group = ET.SubElement(ET.SubElement(root, "groups"), "group", release="0.3")
    for note in _mapping(pitches, velocities, audio_format):
        (lokey, hikey), (lovel, hivel) = note["keys"], note["velocities"]
        ET.SubElement(
            group,
            "sample",
            path=note["file"],
            rootNote=str(note["pitch"]),
            loNote=str(lokey),
            hiNote=str(hikey),
            loVel=str(lovel),
            hiVel=str(hivel),
        )
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write_presets(
    url: str, pitches: list[int], velocities: list[int], audio_format: str, title: str | None = None
) -> dict:
    """The SFZ and the DecentSampler preset of the notes `note_file(pitch, velocity, audio_format)` under
    `url` -> the manifest entries that name them."""
    storage.write_bytes(storage.join(url, SFZ_FILE), sfz_text(pitches, velocities, audio_format).encode())
    preset = dspreset_xml(pitches, velocities, title or "InstrumentGen instrument", audio_format)
    storage.write_bytes(storage.join(url, DSPRESET_FILE), preset.encode())
    return {"sfz": SFZ_FILE, "dspreset": DSPRESET_FILE, "format": audio_format}


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

    def write(self, url: str, title: str | None = None, audio_format: str = "wav24") -> dict:
        """Write notes (`audio_format`: wav24, wav16 or flac), SFZ, DecentSampler preset and, last, the
        manifest under `url`; returns the manifest."""
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
        presets = write_presets(url, self.pitches, self.velocities, audio_format, title or self.metadata.get("prompt"))
        manifest = {
            **self.metadata,
            "sample_rate_hz": self.sample_rate_hz,
            "num_samples": audio.shape[1],
            "gain": "per_note",
            **presets,
            "notes": [
                {"pitch": p, "velocity": v, "file": note_file(p, v, audio_format), "gain": gain}
                for p, v, gain in zip(self.pitches, self.velocities, gains)
            ],
        }
        storage.write_json(storage.join(url, storage.MANIFEST), manifest)
        return manifest

    @classmethod
    def read(cls, url: str) -> "Instrument":
        """The instrument written by `write` at `url` (audio as written, after each note's `gain`)."""
        manifest_url = storage.join(url, storage.MANIFEST)
        if not storage.exists(manifest_url):
            raise InstrumentError(
                f"no {storage.MANIFEST} under {url!r}: not an instrument, or its write did not finish"
            )
        manifest = storage.read_json(manifest_url)
        notes = manifest["notes"]
        audio = [decode_audio(storage.read_bytes(storage.join(url, n["file"])), n["file"])[0] for n in notes]
        known = ("sample_rate_hz", "num_samples", "gain", "sfz", "dspreset", "format", "notes")
        return cls(
            torch.from_numpy(np.stack(audio)),
            [n["pitch"] for n in notes],
            [n["velocity"] for n in notes],
            manifest["sample_rate_hz"],
            {k: v for k, v in manifest.items() if k not in known},
        )
