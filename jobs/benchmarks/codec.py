"""Encoding notes into DAC codes: the upstream one-call API vs our batched wrapper.

`DAC.compress` (upstream's API: one signal at a time, loudness-normalised, 1 s chunks) vs
`Codec.encode` (a batch of notes in one pass, loudness kept). Quick: the tiny DAC; full: the
44.1 kHz release's architecture (random init: the same compute as the real weights).

Measured on the 2-core reference CPU: with the tiny DAC ours is ~1.3x faster; with the release
architecture upstream's 1 s chunks are ~1.3-1.8x faster than whole 4 s notes in batches (the
64-channel 44.1 kHz activations of a batch outgrow the CPU caches), so on CPUs keep
`data.encode_batch_size` small; batching is for GPUs.

CLAP's audio embedding has no row: on a 2-core CPU a batch of notes through HTSAT costs the
same as the notes one by one (measured), so there is no claim to back.
"""

from __future__ import annotations

import numpy as np
import torch

from instrumentgen.data.synthetic import synth_note, timbre_for
from jobs.benchmarks import private_weights_cache, row, timed

CODEC_HZ = 44100


def _notes(count: int, sample_rate_hz: int, duration_s: float) -> torch.Tensor:
    """[count, L] harmonic notes of varied pitch, velocity and timbre."""
    return torch.from_numpy(
        np.stack(
            [
                synth_note(
                    36 + (5 * i) % 60,
                    40 + (17 * i) % 87,
                    timbre_for(i),
                    sample_rate_hz=sample_rate_hz,
                    duration_s=duration_s,
                )
                for i in range(count)
            ]
        )
    )


def _timed(fn, audio) -> float:
    fn(audio[:1])  # warm-up (allocator, thread pool, lazy init) outside the clock
    return timed(lambda: fn(audio))[0]


def _dac_row(quick: bool) -> dict:
    import dac
    from audiotools import AudioSignal

    from instrumentgen.config import CodecConfig
    from instrumentgen.pretrained.codec import Codec

    count, duration_s, batch = (16, 1.0, 8) if quick else (8, 4.0, 4)
    if quick:
        codec, model_name = Codec.load(CodecConfig(weights="tiny")), "tiny DAC"
    else:
        torch.manual_seed(0)
        codec, model_name = Codec(dac.DAC(), 4, "dac-44khz-architecture-random"), "44.1 kHz DAC architecture"
    audio = _notes(count, CODEC_HZ, duration_s)[:, None]  # [count, 1, L]

    def upstream(notes):
        for note in notes:
            codec.model.compress(AudioSignal(note[None], CODEC_HZ), verbose=False)

    def ours(notes):
        for start in range(0, len(notes), batch):
            codec.encode(notes[start : start + batch])

    baseline_s, ours_s = _timed(upstream, audio), _timed(ours, audio)
    return row(
        f"DAC encode {count} notes x {duration_s:g} s ({model_name})",
        "DAC.compress per note (upstream API)",
        f"Codec.encode, batches of {batch}",
        baseline_s,
        ours_s,
        "none: not a speed claim",
        f"{count / ours_s:.2f} vs {count / baseline_s:.2f} notes/s; compress also normalises loudness",
    )


def run(quick: bool) -> list[dict]:
    """Full: the release architecture; `--quick`: the tiny DAC."""
    with private_weights_cache():
        return [_dac_row(quick)]
