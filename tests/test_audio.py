import io
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from instrumentgen.audio import AudioError, crop_and_resample, crop_or_pad, decode_audio, encode_audio, resample
from instrumentgen.data.synthetic import synth_note, timbre_for
from instrumentgen.vocab import midi_to_hz

SR = 44100


def test_resample_16k_to_44k_keeps_length_ratio_and_frequency():
    t = torch.arange(16000) / 16000
    sine = torch.sin(2 * math.pi * 440.0 * t).repeat(2, 1)  # [2, 16000]: batch dims pass through
    up = resample(sine, 16000, SR)
    assert up.shape == (2, 44100)
    spectrum = torch.fft.rfft(up[0]).abs()
    assert abs(spectrum.argmax().item() * SR / up.shape[-1] - 440.0) <= 1.0
    assert resample(sine, SR, SR) is sine


def test_crop_or_pad_cuts_long_and_zero_pads_short_notes():
    audio = np.arange(10, dtype=np.float32).reshape(2, 5)
    assert crop_or_pad(audio, 3).tolist() == [[0, 1, 2], [5, 6, 7]]
    padded = crop_or_pad(audio, 7)
    assert padded.shape == (2, 7) and padded[:, 5:].tolist() == [[0, 0], [0, 0]] and padded[1, 4] == 9


def test_crop_and_resample_keeps_pitch():
    note = synth_note(69, 100, timbre_for(1))[None]  # 440 Hz at 16 kHz, [1, 64000]
    out = crop_and_resample(note, 0.5, 16000, SR)
    assert out.shape == (1, 22050) and out.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(out[0] * np.hanning(22050)))
    assert abs(np.argmax(spectrum) * SR / 22050 - midi_to_hz(69)) < 3


@pytest.mark.parametrize(
    "audio_format, subtype, tolerance",
    [("wav24", "PCM_24", 2**-22), ("wav16", "PCM_16", 2**-14), ("flac", "PCM_24", 2**-22)],
)
def test_encode_decode_round_trip_at_each_bit_depth(audio_format, subtype, tolerance):
    note = synth_note(60, 100, timbre_for(2), SR, 0.1)
    data = encode_audio(note, SR, audio_format)
    assert sf.info(io.BytesIO(data)).subtype == subtype
    decoded, rate = decode_audio(data)
    assert rate == SR and decoded.shape == note.shape
    assert np.abs(decoded - note).max() < tolerance


def test_decode_averages_channels_and_rejects_what_is_not_audio():
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.25)], axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, stereo, 8000, format="WAV", subtype="FLOAT")
    mono, rate = decode_audio(buffer.getvalue())
    assert rate == 8000 and np.allclose(mono, 0.125)
    with pytest.raises(AudioError, match=r"reference_audio is not readable audio .*allowed: WAV, FLAC or OGG"):
        decode_audio(b"RIFF\x00\x00not a wav", "reference_audio")


def test_an_unknown_format_names_the_allowed_ones():
    with pytest.raises(AudioError, match=r"format='mp3' is not allowed; allowed: wav24, wav16, flac"):
        encode_audio(np.zeros(10, np.float32), SR, "mp3")
