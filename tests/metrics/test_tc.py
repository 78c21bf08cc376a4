import re

import librosa
import numpy as np
import pytest
import scipy.fft
import torch

from instrumentgen.config import load_config
from instrumentgen.data.synthetic import synth_note, timbre_for
from instrumentgen.metrics.tc import TCError, TCScale, scales_from_config, tc, tc_matrix

SR = 44100
PITCHES = [33, 45, 52, 60, 67, 79, 91]


def instrument(index: int, duration_s: float = 0.5) -> np.ndarray:
    """[7, L] notes of one fixture timbre at two velocities."""
    return np.stack([synth_note(p, (50, 100)[i % 2], timbre_for(index), SR, duration_s) for i, p in enumerate(PITCHES)])


def reference_tc(notes: np.ndarray, n_fft=2048, hop=512, n_mels=80, n_mfcc=13, eps=1e-5) -> tuple[float, float]:
    """Eq. 1-2 in float64 NumPy with librosa/scipy, written without our code: (sum, normalised)."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    mel = librosa.filters.mel(sr=SR, n_fft=n_fft, n_mels=n_mels, fmin=0.0, fmax=SR / 2, htk=False, norm="slaney")
    ys = []
    for note in notes.astype(np.float64):
        padded = np.pad(note, n_fft // 2, mode="reflect")
        count = 1 + (len(padded) - n_fft) // hop
        frames = np.stack([padded[t * hop : t * hop + n_fft] * window for t in range(count)], axis=1)
        magnitude = np.abs(np.fft.rfft(frames, axis=0))
        log_mel = np.log(mel @ magnitude + eps)
        coefficients = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=0)
        coefficients[n_mfcc:] = 0
        ys.append(scipy.fft.idct(coefficients, type=2, norm="ortho", axis=0))
    total, pairs = 0.0, 0
    for i in range(len(ys)):
        for j in range(i + 1, len(ys)):
            total += np.abs(ys[i] - ys[j]).sum()
            pairs += 1
    return total, total / (pairs * ys[0].size)


def test_tc_equals_an_independent_float64_numpy_implementation():
    notes = instrument(0)
    ours = tc(torch.from_numpy(notes), SR)
    total, normalised = reference_tc(notes)
    assert ours.num_pairs == 21
    assert ours.total.item() == pytest.approx(total, rel=1e-4)
    assert ours.normalised.item() == pytest.approx(normalised, rel=1e-4)


def test_multi_scale_adds_the_scales():
    notes = torch.from_numpy(instrument(1))
    scales = scales_from_config(
        load_config(
            "tiny",
            [
                "metrics.tc_n_fft=[2048,1024]",
                "metrics.tc_hop=[512,256]",
                "metrics.tc_mels=[80,64]",
                "metrics.tc_mfccs=[13,20]",
            ],
        ).metrics
    )
    assert scales == [TCScale(2048, 512, 80, 13), TCScale(1024, 256, 64, 20)]
    both = tc(notes, SR, scales)
    one, two = tc(notes, SR, scales[:1]), tc(notes, SR, scales[1:])
    torch.testing.assert_close(both.total, one.total + two.total)
    torch.testing.assert_close(both.normalised, (one.normalised + two.normalised) / 2)
    assert two.total.item() == pytest.approx(reference_tc(instrument(1), 1024, 256, 64, 20)[0], rel=1e-4)


def test_gradients_flow_to_the_waveforms():
    notes = torch.from_numpy(instrument(2, 0.25)).requires_grad_()
    tc(notes, SR).normalised.backward()
    assert notes.grad is not None and torch.isfinite(notes.grad).all() and notes.grad.abs().sum() > 0


def test_real_instruments_are_more_consistent_than_shuffled_ones():
    real = [instrument(i) for i in range(3)]
    rng = np.random.default_rng(0)
    # Same slots, but each slot's note taken from a random one of the three instruments.
    mixed = [np.stack([real[rng.integers(3)][slot] for slot in range(len(PITCHES))]) for _ in range(3)]
    real_tc = np.mean([tc(torch.from_numpy(x), SR).normalised.item() for x in real])
    mixed_tc = np.mean([tc(torch.from_numpy(x), SR).normalised.item() for x in mixed])
    assert real_tc < mixed_tc


def test_identical_notes_have_zero_tc_and_the_matrix_is_symmetric():
    note = torch.from_numpy(synth_note(60, 100, timbre_for(3), SR, 0.25))
    assert tc(note.repeat(5, 1), SR).total.item() == 0.0
    notes = torch.from_numpy(instrument(0, 0.25))
    matrix = tc_matrix(notes, SR)
    assert matrix.shape == (7, 7)
    torch.testing.assert_close(matrix, matrix.T)
    assert matrix.diagonal().abs().max() < 1e-6
    upper = matrix[torch.triu_indices(7, 7, 1).unbind()]
    assert upper.mean().item() == pytest.approx(tc(notes, SR).normalised.item(), rel=1e-4)
    # the heatmap of another scale and power is the mean pair distance of that measure
    scale = TCScale(n_fft=1024, hop=256, n_mels=64, n_mfcc=20)
    squared = tc_matrix(notes, SR, scale, power=2.0)[torch.triu_indices(7, 7, 1).unbind()]
    assert squared.mean().item() == pytest.approx(tc(notes, SR, [scale], power=2.0).normalised.item(), rel=1e-4)
    assert squared.mean().item() != pytest.approx(upper.mean().item(), rel=1e-2)


@pytest.mark.parametrize(
    "notes, rate, message",
    [
        ([torch.zeros(100), torch.zeros(120)], 44100, "notes have lengths [100, 120] samples; allowed: one length"),
        (torch.zeros(2, 4096), [44100, 16000], "notes have sample rates [16000, 44100]; allowed: one rate"),
        (torch.zeros(1, 4096), 44100, "1 note(s); allowed: at least 2 notes"),
        (
            torch.tensor([[0.0] * 4096, [float("nan")] * 4096]),
            44100,
            "notes [1] hold NaN or inf; allowed: finite audio",
        ),
        (torch.zeros(4096), 44100, "notes of shape (4096,); allowed: [K, L]"),
    ],
)
def test_bad_input_gets_a_clear_error(notes, rate, message):
    with pytest.raises(TCError, match=re.escape(message)):
        tc(notes, rate)
