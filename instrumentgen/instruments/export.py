"""What a sampler loads: the SFZ, DecentSampler and SoundFont 2 files of an instrument's notes.

All three come from one mapping table (`note_zones`): each sampled pitch covers the keys nearer to it
than to the next sampled pitch (a full instrument samples all 88 keys, so each zone is one key) and
plays at its own pitch (root key = the note's pitch); each velocity layer covers the velocities above
the layer below it up to its own (25 -> 1..25, 50 -> 26..50, ..., 127 -> 101..127).

Velocity only selects the layer: the notes were generated at their velocity and carry its dynamics,
so no player attenuates them again (SFZ `amp_veltrack=0`, DecentSampler `ampVelTrack="0"`, SF2
zero-amount overrides of the default velocity modulators). Release: 0.3 s in all three.

The SF2 (version 2.04) embeds every note's PCM: 24-bit (the high 16 bits in `smpl`, the low 8 in
`sm24`) when the notes are 24-bit (wav24, flac), 16-bit (no `sm24`) when they are wav16. One preset
(bank 0, program 0) holds one instrument: a global zone (release, modulators) and a zone per note
with its key range, velocity range, root key and sample, no loop.
"""

from __future__ import annotations

import concurrent.futures
import io
import math
import struct
import xml.etree.ElementTree as ET
from dataclasses import dataclass

import numpy as np
import soundfile as sf

from instrumentgen import storage
from instrumentgen.audio import AUDIO_FORMATS, audio_extension
from instrumentgen.errors import UserError
from instrumentgen.vocab import PITCH_MAX, PITCH_MIN

SFZ_FILE, DSPRESET_FILE, SF2_FILE, NOTES_DIR = "instrument.sfz", "instrument.dspreset", "instrument.sf2", "notes"
RELEASE_S = 0.3  # every format's release time once a key is let go
READ_THREADS = 8  # object stores are latency-bound: read several notes back at once

# SoundFont 2.04 constants (spec sections 8.1.2 generators, 8.2 modulator sources, 7.10 sample types).
GEN_RELEASE_VOL_ENV, GEN_INSTRUMENT, GEN_KEY_RANGE, GEN_VEL_RANGE = 38, 41, 43, 44
GEN_FILTER_FC, GEN_ATTENUATION, GEN_SAMPLE_ID, GEN_SAMPLE_MODES, GEN_ROOT_KEY = 8, 48, 53, 54, 58
VELOCITY_CONCAVE_NEGATIVE, VELOCITY_LINEAR_NEGATIVE, VELOCITY_SWITCH = 0x0502, 0x0102, 0x0C02
# (source, destination, amount source): the default velocity modulators, each overridden with amount 0.
# Velocity -> filter cutoff appears in the spec's form (no amount source) and fluidsynth's (a switch).
VELOCITY_MODULATORS = (
    (VELOCITY_CONCAVE_NEGATIVE, GEN_ATTENUATION, 0),
    (VELOCITY_LINEAR_NEGATIVE, GEN_FILTER_FC, 0),
    (VELOCITY_LINEAR_NEGATIVE, GEN_FILTER_FC, VELOCITY_SWITCH),
)
SF2_MIN_POINTS, SF2_GAP_POINTS = 48, 46  # a sample's fewest data points; zeros after each sample
MONO_SAMPLE, NAME_BYTES = 1, 20


class ExportError(UserError):
    """Notes that cannot be exported (mixed sample rates, unreadable files); the message names which."""


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


@dataclass(frozen=True)
class NoteZone:
    """One note as every format maps it: its sample file, the keys and velocities that play it (inclusive
    MIDI ranges) and its root key (= its pitch: each key plays at its own pitch)."""

    pitch: int
    velocity: int
    file: str
    keys: tuple[int, int]
    velocities: tuple[int, int]


def note_zones(pitches: list[int], velocities: list[int], audio_format: str = "wav24") -> list[NoteZone]:
    """The mapping table shared by the SFZ, DecentSampler and SF2 files, sorted by (pitch, velocity)."""
    keys, layers = key_ranges(pitches), velocity_ranges(velocities)
    return [
        NoteZone(p, v, note_file(p, v, audio_format), keys[p], layers[v]) for p, v in sorted(zip(pitches, velocities))
    ]


def sfz_text(pitches: list[int], velocities: list[int], audio_format: str = "wav24") -> str:
    """SFZ: one region per note, mapped to its key range and velocity layer."""
    lines = [
        "// InstrumentGen: one region per generated note; velocity selects the layer, never attenuates",
        "<control>",
        "default_path=./",
        "<group>",
        f"ampeg_release={RELEASE_S} amp_veltrack=0",
    ]
    for zone in note_zones(pitches, velocities, audio_format):
        (lokey, hikey), (lovel, hivel) = zone.keys, zone.velocities
        lines.append(
            f"<region> sample={zone.file} lokey={lokey} hikey={hikey} "
            f"pitch_keycenter={zone.pitch} lovel={lovel} hivel={hivel}"
        )
    return "\n".join(lines) + "\n"


def dspreset_xml(pitches: list[int], velocities: list[int], title: str, audio_format: str = "wav24") -> str:
    """DecentSampler preset XML with the same mapping as `sfz_text`."""
    root = ET.Element("DecentSampler", minVersion="1.0.0", title=title)
    group = ET.SubElement(ET.SubElement(root, "groups"), "group", release=str(RELEASE_S), ampVelTrack="0")
    for zone in note_zones(pitches, velocities, audio_format):
        (lokey, hikey), (lovel, hivel) = zone.keys, zone.velocities
        ET.SubElement(
            group,
            "sample",
            path=zone.file,
            rootNote=str(zone.pitch),
            loNote=str(lokey),
            hiNote=str(hikey),
            loVel=str(lovel),
            hiVel=str(hivel),
        )
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def note_pcm(data: bytes, what: str) -> tuple[np.ndarray, int]:
    """A mono note file's bytes -> (int32 [L] samples as 24-bit integers, sample rate); a 16-bit file's
    samples come back shifted left by 8 (the same scale)."""
    try:
        pcm, sample_rate_hz = sf.read(io.BytesIO(data), dtype="int32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise ExportError(f"{what} is not readable audio ({str(e).splitlines()[0]})") from None
    if pcm.shape[1] != 1:
        raise ExportError(f"{what} has {pcm.shape[1]} channels; allowed: mono notes")
    return pcm[:, 0] >> 8, int(sample_rate_hz)  # soundfile scales every depth to the full int32 range


def _chunk(tag: bytes, data: bytes) -> bytes:
    """A RIFF chunk: tag, little-endian size, data, a pad byte when the size is odd."""
    return tag + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)


def _riff_list(kind: bytes, *chunks: bytes) -> bytes:
    return _chunk(b"LIST", kind + b"".join(chunks))


def _zstr(text: str, size: int | None = None) -> bytes:
    """ASCII, zero-terminated: padded to an even length (INFO strings) or to exactly `size` bytes."""
    raw = text.encode("ascii", "replace")
    if size is not None:
        return raw[: size - 1].ljust(size, b"\0")
    raw = raw[:255] + b"\0"
    return raw + b"\0" * (len(raw) % 2)


def _gen(operator: int, amount: int | tuple[int, int]) -> bytes:
    """One generator record: a range (lo, hi) as two bytes, else a signed 16-bit amount."""
    if isinstance(amount, tuple):
        return struct.pack("<HBB", operator, *amount)
    return struct.pack("<Hh", operator, amount)


def sf2_bytes(zones: list[NoteZone], pcm: list[np.ndarray], sample_rate_hz: int, bits: int, name: str) -> bytes:
    """A SoundFont 2.04 file of `zones` (from `note_zones`) whose samples are `pcm` (int32 [L] each, 24-bit
    integer scale, in zone order) at `sample_rate_hz`; `bits` 24 adds the `sm24` chunk, 16 keeps the top
    16 bits only. `name` (ASCII, cut to 19 characters) names the bank, preset and instrument."""
    if len(zones) != len(pcm):
        raise ExportError(f"{len(zones)} zones but {len(pcm)} samples; each zone needs its note's samples")
    if bits not in (16, 24):
        raise ExportError(f"bits={bits}; allowed: 16, 24")
    lengths = [max(len(samples), SF2_MIN_POINTS) for samples in pcm]  # the spec's shortest sample
    starts = np.cumsum([0] + [n + SF2_GAP_POINTS for n in lengths]).tolist()
    high, low = np.zeros(starts[-1], "<i2"), np.zeros(starts[-1], np.uint8)  # zero: padding and gaps
    headers = []
    for zone, samples, start, length in zip(zones, pcm, starts, lengths):
        high[start : start + len(samples)] = samples >> 8
        low[start : start + len(samples)] = samples & 0xFF
        end = start + length
        headers.append(
            _zstr(f"n{zone.pitch:03d}_v{zone.velocity:03d}", NAME_BYTES)
            + struct.pack("<5IBbHH", start, end, start + 8, end - 8, sample_rate_hz, zone.pitch, 0, 0, MONO_SAMPLE)
        )
    headers.append(_zstr("EOS", NAME_BYTES) + bytes(26))
    # The sample data (hundreds of MB for 4 s notes) is copied once, into the file's bytes.
    sample_chunks = [(b"smpl", high.data)] + ([(b"sm24", low.data)] if bits == 24 else [])
    sdta = [b"sdta"]
    for tag, data in sample_chunks:
        sdta += [tag, struct.pack("<I", data.nbytes), data, b"\0" * (data.nbytes % 2)]
    sdta_size = sum(len(part) if isinstance(part, bytes) else part.nbytes for part in sdta)

    release = round(1200 * math.log2(RELEASE_S))  # timecents
    global_gens = [_gen(GEN_RELEASE_VOL_ENV, release)]
    mods = [struct.pack("<HHhHH", src, dest, 0, amount_src, 0) for src, dest, amount_src in VELOCITY_MODULATORS]
    zone_gens = [
        [
            _gen(GEN_KEY_RANGE, zone.keys),  # the spec wants the key range first, the velocity range next
            _gen(GEN_VEL_RANGE, zone.velocities),
            _gen(GEN_SAMPLE_MODES, 0),  # no loop: the note plays once, as generated
            _gen(GEN_ROOT_KEY, zone.pitch),
            _gen(GEN_SAMPLE_ID, i),  # and the sample last
        ]
        for i, zone in enumerate(zones)
    ]
    ibag, count = [struct.pack("<HH", 0, 0)], len(global_gens)
    for gens in zone_gens:
        ibag.append(struct.pack("<HH", count, len(mods)))
        count += len(gens)
    ibag.append(struct.pack("<HH", count, len(mods)))
    hydra = [
        _chunk(
            b"phdr",
            _zstr(name, NAME_BYTES)
            + struct.pack("<3H3I", 0, 0, 0, 0, 0, 0)
            + _zstr("EOP", NAME_BYTES)
            + struct.pack("<3H3I", 0, 0, 1, 0, 0, 0),
        ),
        _chunk(b"pbag", struct.pack("<4H", 0, 0, 1, 0)),
        _chunk(b"pmod", bytes(10)),
        _chunk(b"pgen", _gen(GEN_INSTRUMENT, 0) + bytes(4)),
        _chunk(
            b"inst",
            _zstr(name, NAME_BYTES)
            + struct.pack("<H", 0)
            + _zstr("EOI", NAME_BYTES)
            + struct.pack("<H", len(zones) + 1),
        ),
        _chunk(b"ibag", b"".join(ibag)),
        _chunk(b"imod", b"".join(mods) + bytes(10)),
        _chunk(b"igen", b"".join(global_gens) + b"".join(g for gens in zone_gens for g in gens) + bytes(4)),
        _chunk(b"shdr", b"".join(headers)),
    ]
    info = _riff_list(
        b"INFO",
        _chunk(b"ifil", struct.pack("<HH", 2, 4)),  # 2.04: the version that reads sm24
        _chunk(b"isng", _zstr("EMU8000")),
        _chunk(b"INAM", _zstr(name)),
        _chunk(b"ISFT", _zstr("InstrumentGen")),
        _chunk(b"ICMT", _zstr(f"{len(zones)} generated notes, {bits}-bit; velocity selects the layer")),
    )
    pdta = _riff_list(b"pdta", *hydra)
    riff_size = 4 + len(info) + 8 + sdta_size + len(pdta)
    return b"".join(
        [b"RIFF", struct.pack("<I", riff_size), b"sfbk", info, b"LIST", struct.pack("<I", sdta_size), *sdta, pdta]
    )


def write_presets(
    url: str,
    pitches: list[int],
    velocities: list[int],
    audio_format: str,
    title: str | None = None,
    note_bytes: list[bytes] | None = None,
) -> dict:
    """The SFZ, DecentSampler preset and SF2 of the notes `note_file(pitch, velocity, audio_format)` under
    `url` -> the manifest entries that name them. `note_bytes`: the encoded note files in the order of
    `pitches`, when the caller has them; else each note file is read back from `url` once (for the SF2)."""
    title = title or "InstrumentGen instrument"
    storage.write_bytes(storage.join(url, SFZ_FILE), sfz_text(pitches, velocities, audio_format).encode())
    storage.write_bytes(
        storage.join(url, DSPRESET_FILE), dspreset_xml(pitches, velocities, title, audio_format).encode()
    )
    given = dict(zip(zip(pitches, velocities), note_bytes)) if note_bytes is not None else {}
    zones = note_zones(pitches, velocities, audio_format)

    def decode(zone: NoteZone) -> tuple[np.ndarray, int]:
        data = given.get((zone.pitch, zone.velocity)) or storage.read_bytes(storage.join(url, zone.file))
        return note_pcm(data, zone.file)

    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
        decoded = list(pool.map(decode, zones))
    rates = sorted({rate for _, rate in decoded})
    if len(rates) > 1:
        raise ExportError(f"notes at sample rates {rates} Hz; an SF2 needs one rate for all notes")
    bits = 16 if AUDIO_FORMATS[audio_format][1] == "PCM_16" else 24
    sf2 = sf2_bytes(zones, [pcm for pcm, _ in decoded], rates[0] if rates else 44100, bits, title)
    storage.write_bytes(storage.join(url, SF2_FILE), sf2)
    return {"sfz": SFZ_FILE, "dspreset": DSPRESET_FILE, "sf2": SF2_FILE, "format": audio_format}
