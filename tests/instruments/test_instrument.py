import re

import numpy as np
import pytest
import soundfile as sf
import torch

from instrumentgen import storage
from instrumentgen.instruments.instrument import Instrument, InstrumentError
from instrumentgen.model.cues import instrument_grid

NUM_SAMPLES = 441  # 10 ms: the mapping is what is under test, not the audio


def full_instrument() -> Instrument:
    pitches, velocities = instrument_grid()
    audio = torch.stack(
        [0.5 * (v / 127) * torch.sin(torch.arange(NUM_SAMPLES) * p / 200.0) for p, v in zip(pitches, velocities)]
    ).float()
    return Instrument(audio, pitches, velocities, 44100, {"prompt": "warm analog brass", "seed": 3})


def sfz_regions(text: str) -> list[dict]:
    return [
        dict(item.split("=", 1) for item in line.split()[1:])
        for line in text.splitlines()
        if line.startswith("<region>")
    ]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("instrument"))
    instrument = full_instrument()
    return root, instrument, instrument.write(root)


def test_wavs_are_44k1_and_read_back_as_written(written):
    root, instrument, manifest = written
    info = sf.info(storage.join(root, manifest.notes[0].file))
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (44100, 1, NUM_SAMPLES, "PCM_24")
    back = Instrument.read(root)
    assert (back.pitches, back.velocities) == (instrument.pitches, instrument.velocities)
    np.testing.assert_allclose(back.audio.numpy(), instrument.audio.numpy(), atol=1e-6)
    assert back.metadata == {"prompt": "warm analog brass", "seed": 3}
    # The manifest comes last: it names every note file, which exist by the time it does.
    assert len(manifest.notes) == 440 and {n.gain for n in manifest.notes} == {1.0}
    stored = storage.read_json(storage.join(root, "manifest.json"))
    assert stored["gain"] == "per_note" and stored["notes"][0] == {
        "pitch": 21,
        "velocity": 25,
        "file": "notes/021_v025.wav",
        "gain": 1.0,
    }


def test_writes_to_s3(s3_bucket):
    pitches, velocities = [60, 72], [100, 100]
    instrument = Instrument(torch.full((2, NUM_SAMPLES), 0.25), pitches, velocities, 44100, {"prompt": "x"})
    url = storage.join(s3_bucket, "instruments", "one")
    instrument.write(url)
    assert Instrument.read(url).pitches == pitches
    regions = sfz_regions(storage.read_bytes(storage.join(url, "instrument.sfz")).decode())
    assert [(r["lokey"], r["hikey"]) for r in regions] == [("21", "66"), ("67", "108")]  # nearest sampled key
    assert storage.read_bytes(storage.join(url, "instrument.sf2"))[8:12] == b"sfbk"


def test_a_note_that_would_clip_is_scaled_alone(tmp_path):
    audio = torch.tensor([[0.5, -2.0, 1.0], [0.1, 0.2, 0.3]])
    manifest = Instrument(audio, [60, 61], [100, 100], 44100).write(str(tmp_path))
    back = Instrument.read(str(tmp_path)).audio
    np.testing.assert_allclose(back[0].numpy(), (audio[0] * 0.99 / 2.0).numpy(), atol=1e-6)
    np.testing.assert_allclose(back[1].numpy(), audio[1].numpy(), atol=1e-6)  # the quiet note keeps its level
    assert [n.gain for n in manifest.notes] == [pytest.approx(0.495), 1.0]


def test_bad_instruments_are_refused(tmp_path):
    with pytest.raises(InstrumentError, match=re.escape("audio (3, 10) must be [S, L] with S = len(pitches)")):
        Instrument(torch.zeros(3, 10), [60, 61], [100, 100], 44100)
    with pytest.raises(InstrumentError, match="two notes share a"):
        Instrument(torch.zeros(2, 10), [60, 60], [100, 100], 44100)
    with pytest.raises(InstrumentError, match="NaN"):
        Instrument(torch.full((1, 10), float("nan")), [60], [100], 44100).write(str(tmp_path))
    assert not storage.exists(str(tmp_path / "manifest.json"))
    with pytest.raises(InstrumentError, match="no manifest.json"):
        Instrument.read(str(tmp_path))
