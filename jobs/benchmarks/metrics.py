"""TC of a full instrument: ours (torch, sort-based pairwise L1) vs a float64 NumPy pair loop.

440 notes x 4 s at 44.1 kHz (96,580 pairs). The baseline is the straightforward reading of eq. 1-2:
features per note in float64 NumPy (framed FFT, Slaney mel, log, DCT lifter), then a Python loop
over every pair i < j. Two rows: the whole measure, and the pairwise sum alone (both sides given
the same features), since feature extraction (the STFT) is most of our time.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
import torch
import torchaudio.functional as AF

from instrumentgen.data.synthetic import synth_note, timbre_for
from instrumentgen.metrics.tc import TCScale, liftered_log_mel, pairwise_l1_sum, tc
from instrumentgen.vocab import PITCHES, VELOCITIES
from jobs.benchmarks import row, timed

SR = 44100


def numpy_features(notes: np.ndarray, scale: TCScale = TCScale(), eps: float = 1e-5) -> np.ndarray:
    """[K, L] -> y [K, M, frames] in float64, one note at a time."""
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(scale.n_fft) / scale.n_fft)
    mel = (
        AF.melscale_fbanks(scale.n_fft // 2 + 1, 0.0, SR / 2, scale.n_mels, SR, norm="slaney", mel_scale="slaney")
        .double()
        .numpy()
        .T
    )  # the same filterbank values
    ys = []
    for note in notes.astype(np.float64):
        padded = np.pad(note, scale.n_fft // 2, mode="reflect")
        count = 1 + (len(padded) - scale.n_fft) // scale.hop
        frames = np.stack([padded[t * scale.hop : t * scale.hop + scale.n_fft] * window for t in range(count)], axis=1)
        log_mel = np.log(mel @ np.abs(np.fft.rfft(frames, axis=0)) + eps)
        coefficients = scipy.fft.dct(log_mel, type=2, norm="ortho", axis=0)
        coefficients[scale.n_mfcc :] = 0
        ys.append(scipy.fft.idct(coefficients, type=2, norm="ortho", axis=0))
    return np.stack(ys)


def numpy_pair_loop(y: np.ndarray) -> float:
    """y [K, ...] -> the sum over pairs i < j of |y_i - y_j|, one pair at a time (the baseline)."""
    total = 0.0
    for i in range(len(y)):
        for j in range(i + 1, len(y)):
            total += np.abs(y[i] - y[j]).sum()
    return total


def run(quick: bool) -> list[dict]:
    """Full: 440 notes x 4 s; `--quick`: every fourth of them (110 notes) x 1 s."""
    duration_s = 1.0 if quick else 4.0
    slots = [(p, v) for p in PITCHES for v in VELOCITIES][:: 4 if quick else 1]
    notes = np.stack([synth_note(p, v, timbre_for(3), SR, duration_s) for p, v in slots])
    baseline_s, (features, baseline_total) = timed(lambda: (y := numpy_features(notes), numpy_pair_loop(y)))
    ours_s, result = timed(lambda: tc(torch.from_numpy(notes), SR))
    assert abs(result.total.item() - baseline_total) <= 1e-4 * abs(baseline_total)
    loop_s, _ = timed(lambda: numpy_pair_loop(features))
    y = liftered_log_mel(torch.from_numpy(notes), SR, TCScale())
    sort_s, _ = timed(lambda: pairwise_l1_sum(y))
    pairs = len(slots) * (len(slots) - 1) // 2
    return [
        row(
            f"TC of {len(slots)} notes x {duration_s:g} s ({pairs} pairs), whole measure",
            "float64 NumPy features + Python pair loop",
            "metrics.tc (torch, float32 features)",
            baseline_s,
            ours_s,
            10.0,
            f"ours {ours_s:.2f} s on this machine; sums agree within 1e-4",
        ),
        row(
            f"TC pairwise sum alone, {pairs} pairs of {y[0].numel()} values",
            "Python loop over pairs (NumPy)",
            "sort identity, float64",
            loop_s,
            sort_s,
            None,
            "same features on both sides",
        ),
    ]
