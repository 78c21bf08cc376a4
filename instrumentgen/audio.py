"""Audio helpers, the one home for them: resample, crop/pad, encode and decode WAV/FLAC bytes.

Arrays are float32 mono; a batch of notes is [B, L]. `encode_audio` writes the formats a
sampler loads (`wav24`, `wav16`, `flac`); `decode_audio` reads any format soundfile knows.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional

from instrumentgen.errors import UserError

# format name -> (soundfile container, subtype, file extension)
AUDIO_FORMATS = {
    "wav24": ("WAV", "PCM_24", ".wav"),
    "wav16": ("WAV", "PCM_16", ".wav"),
    "flac": ("FLAC", "PCM_24", ".flac"),
}


NOTE_PEAK = 0.99  # a note louder than this is scaled down to it (no clipping in PCM)


class AudioError(UserError):
    """Audio that cannot be decoded or a format that is not offered; names what is allowed."""


def resample(audio: torch.Tensor, from_hz: int, to_hz: int) -> torch.Tensor:
    """[..., L] at `from_hz` -> [..., L * to_hz / from_hz] at `to_hz` (band-limited sinc)."""
    if from_hz == to_hz:
        return audio
    return torchaudio.functional.resample(audio, int(from_hz), int(to_hz))


def note_gains(audio: torch.Tensor) -> torch.Tensor:
    """audio [S, L] -> [S] gain per note: NOTE_PEAK / peak where the peak exceeds NOTE_PEAK, else 1.

    The level policy of every instrument written: each note keeps its generated level (so velocity
    layers stay as generated) unless it would clip, and only that note is scaled; a writer of a few
    notes needs no other note's peak, so shards written by different workers agree.
    """
    peaks = audio.abs().amax(dim=-1)
    return torch.where(peaks > NOTE_PEAK, NOTE_PEAK / peaks.clamp_min(1e-12), torch.ones_like(peaks))


def crop_or_pad(audio: np.ndarray, num_samples: int) -> np.ndarray:
    """[B, L] -> [B, num_samples]: the first `num_samples` samples, zero-padded at the end if shorter."""
    return np.pad(audio[:, :num_samples], ((0, 0), (0, max(0, num_samples - audio.shape[1]))))


def crop_and_resample(audio: np.ndarray, duration_s: float, from_hz: int, to_hz: int) -> np.ndarray:
    """float32 [B, L] at `from_hz` -> float32 [B, duration_s * to_hz]: cropped (or zero-padded) to
    `duration_s` before resampling, which costs less than resampling the whole recording."""
    cropped = crop_or_pad(audio, round(duration_s * from_hz))
    out = resample(torch.from_numpy(np.ascontiguousarray(cropped, dtype=np.float32)), from_hz, to_hz)
    return out.numpy()[:, : round(duration_s * to_hz)]


def audio_extension(audio_format: str) -> str:
    """`wav24` -> `.wav`; `AudioError` for a format not in `AUDIO_FORMATS`."""
    if audio_format not in AUDIO_FORMATS:
        raise AudioError(f"format={audio_format!r} is not allowed; allowed: {', '.join(AUDIO_FORMATS)}")
    return AUDIO_FORMATS[audio_format][2]


def encode_audio(note_audio: np.ndarray, sample_rate_hz: int, audio_format: str = "wav24") -> bytes:
    """float [L] in [-1, 1] -> the bytes of a WAV (16 or 24 bit) or FLAC file."""
    audio_extension(audio_format)
    container, subtype, _ = AUDIO_FORMATS[audio_format]
    buffer = io.BytesIO()
    sf.write(buffer, note_audio, sample_rate_hz, format=container, subtype=subtype)
    return buffer.getvalue()


def decode_audio(data: bytes, what: str = "audio") -> tuple[np.ndarray, int]:
    """The bytes of an audio file -> (float32 [L] mono, sample rate); channels are averaged.

    `AudioError` naming `what` when the bytes are not audio soundfile can read, or hold no samples."""
    try:
        audio, sample_rate_hz = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(
            f"{what} is not readable audio ({str(e).splitlines()[0]}); allowed: WAV, FLAC or OGG files"
        ) from None
    if audio.shape[0] == 0:
        raise AudioError(f"{what} holds no samples; allowed: a non-empty recording")
    return audio.mean(axis=1), int(sample_rate_hz)
