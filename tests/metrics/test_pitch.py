import re

import numpy as np
import pytest
import torch

from instrumentgen.data.synthetic import synth_note, timbre_for
from instrumentgen.metrics.pitch import PitchError, pitch_report, yin_f0
from instrumentgen.vocab import PITCHES, midi_to_hz

SR = 44100


def test_yin_finds_every_key_within_a_tenth_of_a_semitone():
    notes = torch.from_numpy(np.stack([synth_note(p, 100, timbre_for(p % 7), SR, 0.5) for p in PITCHES]))
    report = pitch_report(notes, SR, list(PITCHES))
    assert report.unvoiced == 0
    assert report.error_semitones.abs().max().item() < 0.1
    assert report.mad_pitch < 0.02


def test_mad_pitch_is_the_median_absolute_deviation_in_semitones():
    # Notes played 0.5 semitone sharp, 0.25 flat and in tune, labelled with their nominal pitches.
    notes = [np.sin(2 * np.pi * midi_to_hz(60 + offset) * np.arange(SR // 2) / SR) for offset in (0.5, -0.25, 0.0)]
    report = pitch_report(torch.tensor(np.stack(notes), dtype=torch.float32), SR, [60, 60, 60])
    np.testing.assert_allclose(report.error_semitones.numpy(), [0.5, -0.25, 0.0], atol=0.02)
    assert report.mad_pitch == pytest.approx(0.25, abs=0.02)


def test_silent_notes_are_counted_as_unvoiced():
    notes = torch.zeros(3, SR // 2)
    notes[0] = torch.from_numpy(synth_note(69, 100, timbre_for(0), SR, 0.5))
    report = pitch_report(notes, SR, [69, 70, 71])
    assert report.unvoiced == 2
    assert torch.isnan(report.f0_hz[1:]).all() and report.f0_hz[0].item() == pytest.approx(440, rel=0.005)
    assert report.mad_pitch < 0.05
    assert np.isnan(pitch_report(torch.zeros(2, SR // 2), SR, [60, 61]).mad_pitch)


def test_bad_input_gets_a_clear_error():
    with pytest.raises(PitchError, match=re.escape("2 pitch labels for 3 notes")):
        pitch_report(torch.zeros(3, SR), SR, [60, 61])
    with pytest.raises(PitchError, match="NaN"):
        pitch_report(torch.full((1, SR), float("nan")), SR, [60])
    with pytest.raises(PitchError, match=re.escape("metrics.pitch_estimator='swipe'; allowed: yin")):
        pitch_report(torch.zeros(1, SR), SR, [60], estimator="swipe")
    with pytest.raises(PitchError, match="L >= 4096"):
        yin_f0(torch.zeros(1, 100), SR)
