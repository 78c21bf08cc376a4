"""The sampler files as a musician uses them: every key at every velocity plays the note it should.

One table says which note a (key, velocity) must play: the note of that key whose layer is the lowest
velocity layer >= the velocity. The SFZ, the DecentSampler preset and the SF2 are each checked against
it, and the SF2 is played by a real synthesizer (Debian's fluidsynth): each note of the instrument is a
sine at its key's frequency with its own level, so the rendered pitch (YIN) says the key plays at its
own pitch and the rendered level says which note was played.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch

from instrumentgen import storage
from instrumentgen.instruments.export import (
    ExportError,
    key_ranges,
    note_file,
    sf2_bytes,
    velocity_ranges,
    write_presets,
)
from instrumentgen.instruments.instrument import Instrument
from instrumentgen.instruments.slices import ScoredInstrument, write_instrument
from instrumentgen.metrics.pitch import yin_f0
from instrumentgen.model.cues import instrument_grid
from instrumentgen.vocab import PITCHES, VELOCITIES, midi_to_hz

RATE, NOTE_S = 44100, 0.25  # each written note: a 0.25 s sine
# The MIDI file: a note every 0.25 s, held 0.2 s; a voice ends with its sample, so notes never overlap.
STEP_S, HOLD_S = 0.25, 0.2
SEGMENT = (0.03, 5120)  # what is measured of each rendered note: from 30 ms after its start, 5120 samples
FLUIDSYNTH = shutil.which("fluidsynth")


def expected_note(key: int, velocity: int) -> tuple[int, int]:
    """The (pitch, velocity layer) a full instrument must play for a MIDI key and velocity 1..127."""
    return key, min(layer for layer in VELOCITIES if layer >= velocity)


def test_key_and_velocity_ranges_tile_the_keyboard():
    assert key_ranges([30, 40, 108]) == {30: (21, 35), 40: (36, 74), 108: (75, 108)}
    assert velocity_ranges([127, 25, 75]) == {25: (1, 25), 75: (26, 75), 127: (76, 127)}


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A full instrument of sines at each key's frequency, each note at its own level (shuffled, so a
    neighbour's note never has a nearby level): (folder, manifest, {(pitch, velocity): peak level})."""
    pitches, velocities = instrument_grid()
    levels = [0.1 + 0.8 * ((i * 97) % 440) / 439 for i in range(len(pitches))]
    t = np.arange(round(NOTE_S * RATE)) / RATE
    audio = torch.from_numpy(np.stack([a * np.sin(2 * np.pi * midi_to_hz(p) * t) for p, a in zip(pitches, levels)]))
    root = str(tmp_path_factory.mktemp("known"))
    manifest = Instrument(audio, pitches, velocities, RATE, {"prompt": "known sines"}).write(root).to_json()
    return root, manifest, dict(zip(zip(pitches, velocities), levels))


def read_sf2(data: bytes) -> dict:
    """The parts of an SF2 a player uses: version, names, zones ({generator: value}) and samples (int32
    24-bit scale, by sample header)."""

    def chunks(body: bytes) -> dict:
        found, at = {}, 0
        while at < len(body):
            tag, size = body[at : at + 4], struct.unpack("<I", body[at + 4 : at + 8])[0]
            content = body[at + 8 : at + 8 + size]
            found[content[:4] if tag == b"LIST" else tag] = content[4:] if tag == b"LIST" else content
            at += 8 + size + size % 2
        return found

    assert data[:4] == b"RIFF" and data[8:12] == b"sfbk" and struct.unpack("<I", data[4:8])[0] == len(data) - 8
    top = chunks(data[12:])
    info, sdta, pdta = chunks(top[b"INFO"]), chunks(top[b"sdta"]), chunks(top[b"pdta"])
    points = np.frombuffer(sdta[b"smpl"], "<i2").astype(np.int32) << 8
    if b"sm24" in sdta:
        points |= np.frombuffer(sdta[b"sm24"], np.uint8)[: len(points)].astype(np.int32)
    records = lambda name, size: [pdta[name][i : i + size] for i in range(0, len(pdta[name]), size)]  # noqa: E731
    gens = [struct.unpack("<HH", r) for r in records(b"igen", 4)]
    bags = [struct.unpack("<HH", r)[0] for r in records(b"ibag", 4)]
    zones = []
    for first, last in zip(bags, bags[1:]):
        zone = {}
        for operator, amount in gens[first:last]:
            zone[operator] = (amount & 0xFF, amount >> 8) if operator in (43, 44) else amount
        zones.append(zone)
    samples = []
    for record in records(b"shdr", 46)[:-1]:
        start, end, *_, rate, pitch, _, _, kind = struct.unpack("<5IBbHH", record[20:])
        samples.append({"name": record[:20].rstrip(b"\0").decode(), "pcm": points[start:end], "rate": rate})
    return {
        "version": struct.unpack("<HH", info[b"ifil"]),
        "bits": 24 if b"sm24" in sdta else 16,
        "name": records(b"phdr", 38)[0][:20].rstrip(b"\0").decode(),
        "presets": len(records(b"phdr", 38)) - 1,
        "instruments": len(records(b"inst", 22)) - 1,
        "modulators": [struct.unpack("<HHhHH", r) for r in records(b"imod", 10)][:-1],
        "zones": zones,
        "samples": samples,
    }


def assert_plays_the_expected_notes(zones: list[tuple[str, int, int, int, int, int]]) -> None:
    """zones [(note file, root key, lokey, hikey, lovel, hivel)] of one format: every key at every velocity
    1..127 plays exactly one zone, the expected note's, at the key's own pitch (root key = key)."""
    played: dict[tuple[int, int], list[tuple[str, int]]] = {}
    for file, root, lokey, hikey, lovel, hivel in zones:
        for key in range(lokey, hikey + 1):
            for velocity in range(lovel, hivel + 1):
                played.setdefault((key, velocity), []).append((file, root))
    expected = {(k, v): [(note_file(*expected_note(k, v)), k)] for k in PITCHES for v in range(1, 128)}
    assert played == expected


def sample_file(name: str) -> str:
    """An SF2 sample's name (n060_v100) -> its note's file."""
    return note_file(int(name[1:4]), int(name[6:9]))


def test_sf2_maps_every_key_and_velocity_to_its_own_24_bit_note(known):
    root, manifest, _ = known
    assert manifest["sf2"] == "instrument.sf2"
    sf2 = read_sf2(storage.read_bytes(storage.join(root, manifest["sf2"])))
    assert sf2["version"] == (2, 4) and sf2["bits"] == 24 and (sf2["presets"], sf2["instruments"]) == (1, 1)
    assert sf2["name"] == "known sines" and len(sf2["zones"]) == 441  # a global zone + one per note
    # Velocity only selects the layer: the default velocity modulators are overridden with amount 0.
    # (source, destination, amount, amount source, transform): velocity -> attenuation, -> filter cutoff
    # in the spec's form and in fluidsynth's (a velocity switch as amount source).
    assert sf2["modulators"] == [(0x0502, 48, 0, 0, 0), (0x0102, 8, 0, 0, 0), (0x0102, 8, 0, 0x0C02, 0)]
    assert 53 not in sf2["zones"][0]  # the global zone: no sample
    names = [sample["name"] for sample in sf2["samples"]]
    assert_plays_the_expected_notes([(sample_file(names[z[53]]), z[58], *z[43], *z[44]) for z in sf2["zones"][1:]])
    for sample in sf2["samples"]:  # the SF2 holds the written notes' 24-bit samples exactly
        written, rate = sf.read(storage.join(root, sample_file(sample["name"])), dtype="int32")
        assert rate == sample["rate"] == RATE
        np.testing.assert_array_equal(sample["pcm"], written >> 8)


def test_sfz_and_dspreset_map_every_key_and_velocity_to_its_own_note(known):
    root, manifest, _ = known
    sfz = storage.read_bytes(storage.join(root, manifest["sfz"])).decode()
    assert "amp_veltrack=0" in sfz  # velocity selects the layer; the note already has its dynamics
    regions = [
        dict(i.split("=", 1) for i in line.split()[1:]) for line in sfz.splitlines() if line.startswith("<region>")
    ]
    assert len(regions) == 440
    assert_plays_the_expected_notes(
        [(r["sample"], *(int(r[k]) for k in ("pitch_keycenter", "lokey", "hikey", "lovel", "hivel"))) for r in regions]
    )
    assert all(storage.exists(storage.join(root, r["sample"])) for r in regions)
    tree = ET.fromstring(storage.read_bytes(storage.join(root, manifest["dspreset"])))
    assert tree.find("./groups/group").get("ampVelTrack") == "0" and tree.get("title") == "known sines"
    samples = tree.findall("./groups/group/sample")
    assert len(samples) == 440
    assert_plays_the_expected_notes(
        [(s.get("path"), *(int(s.get(k)) for k in ("rootNote", "loNote", "hiNote", "loVel", "hiVel"))) for s in samples]
    )


def midi_file(notes: list[tuple[int, int]], step_s: float, hold_s: float) -> bytes:
    """A type-0 MIDI file playing `notes` [(key, velocity)] one after another on channel 1: note i starts
    at i * step_s and is held hold_s (120 bpm, 480 ticks per quarter: 960 ticks per second)."""

    def varlen(value: int) -> bytes:
        out = [value & 0x7F]
        while value > 0x7F:
            value >>= 7
            out.insert(0, (value & 0x7F) | 0x80)
        return bytes(out)

    ticks = lambda seconds: round(seconds * 960)  # noqa: E731
    events = [(0, b"\xff\x51\x03" + (500_000).to_bytes(3, "big"))]  # tempo: 0.5 s per quarter
    for i, (key, velocity) in enumerate(notes):
        events += [
            (ticks(i * step_s), bytes([0x90, key, velocity])),
            (ticks(i * step_s + hold_s), bytes([0x80, key, 0])),
        ]
    track, now = b"", 0
    for when, event in sorted(events, key=lambda e: e[0]):
        track += varlen(when - now) + event
        now = when
    track += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 480) + b"MTrk" + struct.pack(">I", len(track)) + track


def sine_amplitude(x: np.ndarray, hz: float, sample_rate_hz: int) -> float:
    """The amplitude of the sine at `hz` that best fits x [L] (least squares over sine and cosine)."""
    t = np.arange(len(x)) / sample_rate_hz
    basis = np.stack([np.sin(2 * np.pi * hz * t), np.cos(2 * np.pi * hz * t)], axis=1)
    return float(np.hypot(*np.linalg.lstsq(basis, x, rcond=None)[0]))


@pytest.mark.skipif(not FLUIDSYNTH, reason="no fluidsynth on PATH (Debian: apt-get install fluidsynth)")
def test_fluidsynth_plays_every_key_and_layer_at_its_pitch_and_level(known, tmp_path):
    root, manifest, levels = known
    # Every key at every layer, alternately at the bottom and the top of the layer's velocity range.
    ranges = velocity_ranges(list(VELOCITIES))
    played = [(key, ranges[layer][key % 2]) for key in PITCHES for layer in VELOCITIES]
    (tmp_path / "all.mid").write_bytes(midi_file(played, STEP_S, HOLD_S))
    out = tmp_path / "out.wav"
    command = [FLUIDSYNTH, "-ni", "-q", "-g", "1", "-R", "0", "-C", "0", "-r", str(RATE), "-O", "float", "-T", "wav"]
    result = subprocess.run(
        [*command, "-F", str(out), storage.join(root, manifest["sf2"]), str(tmp_path / "all.mid")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    rendered, rate = sf.read(out, dtype="float32")
    assert rate == RATE
    mono = rendered.mean(axis=1)
    # The sustained part of each note: after the attack, before the key is let go.
    offset, length = SEGMENT
    starts = [round((i * STEP_S + offset) * RATE) for i in range(len(played))]
    segments = np.stack([mono[s : s + length] for s in starts]).astype(np.float64)
    expected_hz = np.array([midi_to_hz(key) for key, _ in played])
    f0 = yin_f0(torch.from_numpy(segments), RATE, chunk=64).double().numpy()
    error = np.abs(12 * np.log2(f0 / expected_hz))
    assert np.isfinite(error).all() and np.median(error) <= 0.05, np.median(error)
    # Note by note, the rendered pitch is the written sine's: YIN's own bias on a clean sine at the key's
    # frequency (up to 0.07 semitones at the top keys) is all the error there is.
    t = np.arange(length) / RATE
    clean_f0 = yin_f0(
        torch.from_numpy(np.sin(2 * np.pi * np.array([midi_to_hz(k) for k in PITCHES])[:, None] * t)), RATE, chunk=64
    )
    by_key = dict(zip(PITCHES, clean_f0.double().numpy()))
    assert np.abs(12 * np.log2(f0 / np.array([by_key[key] for key, _ in played]))).max() <= 0.005
    # Level: the amplitude of a sine at the key's frequency fitted to each rendered note, over the note's
    # written level, is one constant (the player's gain) for all 440: each key and velocity played its
    # own note (levels are shuffled, so any other note is off by far more), and velocity did not attenuate.
    amplitude = np.array([sine_amplitude(x, hz, RATE) for x, hz in zip(segments, expected_hz)])
    ratio = amplitude / np.array([levels[expected_note(key, velocity)] for key, velocity in played])
    np.testing.assert_allclose(ratio, np.median(ratio), rtol=1e-3)


def test_the_sf2_is_16_bit_for_16_bit_notes(tmp_path):
    audio = torch.tensor([[0.5, -0.25, 0.125] * 20, [0.1, 0.2, 0.3] * 20])
    manifest = (
        Instrument(audio, [60, 61], [100, 100], RATE, {"prompt": "two"})
        .write(str(tmp_path), audio_format="wav16")
        .to_json()
    )
    sf2 = read_sf2((tmp_path / manifest["sf2"]).read_bytes())
    assert sf2["bits"] == 16 and [s["name"] for s in sf2["samples"]] == ["n060_v100", "n061_v100"]
    for sample, file in zip(sf2["samples"], ("060_v100", "061_v100")):
        written, _ = sf.read(tmp_path / "notes" / f"{file}.wav", dtype="int16")
        np.testing.assert_array_equal(sample["pcm"], written.astype(np.int32) << 8)  # no sm24: low byte 0


def test_notes_an_sf2_cannot_hold_are_refused_naming_them(tmp_path):
    (tmp_path / "notes").mkdir()
    sf.write(tmp_path / note_file(60, 100), np.zeros(100), 44100, subtype="PCM_24")
    sf.write(tmp_path / note_file(61, 100), np.zeros(100), 48000, subtype="PCM_24")
    with pytest.raises(ExportError, match=r"notes at sample rates \[44100, 48000\] Hz; an SF2 needs one rate"):
        write_presets(str(tmp_path), [60, 61], [100, 100], "wav24")
    (tmp_path / note_file(61, 100)).write_bytes(b"not audio")
    with pytest.raises(ExportError, match="notes/061_v100.wav is not readable audio"):
        write_presets(str(tmp_path), [60, 61], [100, 100], "wav24")
    with pytest.raises(ExportError, match="2 zones but 1 samples"):
        sf2_bytes([None, None], [np.zeros(48, np.int32)], RATE, 24, "x")
    with pytest.raises(ExportError, match="bits=8; allowed: 16, 24"):
        sf2_bytes([], [], RATE, 8, "x")


def test_the_served_and_batch_writer_lists_the_sf2_and_zips_it(tmp_path):
    """`slices.write_instrument` (the Serve app's and the batch job's writer) reads its notes back once."""
    slots = [(60, 50), (60, 100)]
    for (pitch, velocity), level in zip(slots, (0.2, 0.6)):
        note = level * np.sin(2 * np.pi * midi_to_hz(pitch) * np.arange(4410) / RATE)
        (tmp_path / note_file(pitch, velocity)).parent.mkdir(exist_ok=True)
        sf.write(tmp_path / note_file(pitch, velocity), note, RATE, subtype="PCM_24")
    nan = torch.full((2,), float("nan"))
    scored = ScoredInstrument(
        slots,
        torch.zeros(2, dtype=torch.long),
        torch.zeros(2, 1, 1, dtype=torch.int16),
        nan,
        nan.double(),
        torch.ones(2),
        1,
        0,
        [],
        None,
        None,
        None,
        2,
    )
    manifest = write_instrument(str(tmp_path), scored, {"prompt": "pair"}, "wav24", RATE, 4410).to_json()
    assert manifest["sf2"] == "instrument.sf2"
    with zipfile.ZipFile(tmp_path / manifest["bundle"]) as bundle:
        assert bundle.read("instrument.sf2") == (tmp_path / "instrument.sf2").read_bytes()
    sf2 = read_sf2((tmp_path / "instrument.sf2").read_bytes())
    assert [(z[43], z[44], z[58]) for z in sf2["zones"][1:]] == [((21, 108), (1, 50), 60), ((21, 108), (51, 127), 60)]
    for sample, slot in zip(sf2["samples"], slots):
        np.testing.assert_array_equal(sample["pcm"], sf.read(tmp_path / note_file(*slot), dtype="int32")[0] >> 8)
