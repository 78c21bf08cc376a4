"""An instrument rendered in shards: any worker generates, decodes and writes a few slots; one
step gathers the small results, selects candidates, scores and finishes the instrument.

    render_shard(lm, codec, clap, cue, gen_cfg, duration_s, slots, url)   -> ShardResult
    finish_instrument(url, [ShardResult, ...], metadata, ...)               -> manifest

The Serve application runs `render_shard` in its Generator replicas and `finish_instrument` in its
Scorer; the batch render job can run them in Ray tasks or in one process. Only codes, TC
features and pitch estimates travel back from a shard: its notes are written to storage by the
worker that decoded them.

Seeds: candidate c of every slot is generated with the instrument seed `candidate_seeds(seed, k)[c]`
(candidate 0 is the seed itself) and the per-slot streams of `generate.slot_seeds`, so a shard's
notes do not depend on which slots share its shard or which worker renders it: with k = 1 the
codes equal those of `generate_instrument` with the same seed.

Level policy (differs from `Instrument.write`, which scales the whole instrument by its peak):
a shard cannot know the other shards' peaks, so every note is written at its generated level
except a note whose peak exceeds `NOTE_PEAK`, which alone is scaled down to it; the gain of each
note is in the manifest. Nothing is normalised when no note clips, the usual case.

Layout under `url` (on top of `Instrument.write`'s notes/, instrument.sfz, instrument.dspreset,
manifest.json): candidates/<c>/notes/... while k > 1 candidates exist (removed once the chosen
notes are copied to notes/), codes.npy (int16 [S, K, N] of the chosen notes), instrument.zip
(notes + presets + manifest). manifest.json is written last: a folder without it is unfinished.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import math
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np
import torch

from instrumentgen import storage
from instrumentgen.audio import encode_audio
from instrumentgen.config import GenerateConfig, MetricsConfig, ModelConfig
from instrumentgen.generate import (
    GenerateError,
    InstrumentCue,
    cue_embedding,
    decode_notes,
    generate_codes,
    instrument_cues,
)
from instrumentgen.instrument import DSPRESET_FILE, SFZ_FILE, WRITE_THREADS, dspreset_xml, note_file, sfz_text
from instrumentgen.metrics.pitch import pitch_report
from instrumentgen.metrics.tc import liftered_log_mel, pairwise_l1_sum, scales_from_config
from instrumentgen.selection import candidate_seeds, select_candidates
from instrumentgen.vocab import midi_to_hz

NOTE_PEAK = 0.99  # a note louder than this is scaled down to it (no clipping in 24-bit PCM)
CODES_FILE, BUNDLE_FILE, CANDIDATES_DIR = "codes.npy", "instrument.zip", "candidates"


@dataclass
class ShardResult:
    """What one shard sends back: small tensors, no audio. C candidates of S slots.

    codes [C, S, K, N] int16; features [C, S, F] float32 (TC features: the liftered log-mel of every
    TC scale, flattened and concatenated, `feature_sizes` values per scale); f0_hz [C, S] float32
    (NaN: unvoiced); gains [C, S] float32 (the level policy's scale of each written note).
    """

    slots: list[tuple[int, int]]
    codes: torch.Tensor
    features: torch.Tensor
    f0_hz: torch.Tensor
    gains: torch.Tensor
    feature_sizes: list[int]
    worker: str = ""


def embedded_cue(cue: InstrumentCue, clap, model_cfg: ModelConfig) -> InstrumentCue:
    """The cue with its CLAP embedding computed once (prompt / reference audio -> clap_embedding), so
    shards need neither CLAP nor the reference recording; a metadata cue is returned as is."""
    embedding = cue_embedding(cue, clap, model_cfg)
    if embedding is None:
        return cue
    return InstrumentCue(clap_embedding=embedding, family=cue.family, source=cue.source)


def note_gains(audio: torch.Tensor) -> torch.Tensor:
    """audio [S, L] -> [S] gain per note: NOTE_PEAK / peak where the peak exceeds NOTE_PEAK, else 1."""
    peaks = audio.abs().amax(dim=-1)
    return torch.where(peaks > NOTE_PEAK, NOTE_PEAK / peaks.clamp_min(1e-12), torch.ones_like(peaks))


def candidate_dir(candidate: int, candidates: int) -> str:
    """The folder (inside the instrument) that candidate `candidate`'s notes are written to."""
    return "" if candidates == 1 else f"{CANDIDATES_DIR}/{candidate}"


def note_features(audio: torch.Tensor, sample_rate_hz: int,
                  metrics_cfg: MetricsConfig) -> tuple[torch.Tensor, list[int]]:
    """audio [S, L] -> (TC features [S, F] float32, values per TC scale): the liftered log-mel of
    `metrics/tc.py` at every configured scale, flattened and concatenated."""
    per_scale = [liftered_log_mel(audio, sample_rate_hz, scale, metrics_cfg.tc_power).flatten(1)
                 for scale in scales_from_config(metrics_cfg)]
    return torch.cat(per_scale, dim=1).float(), [part.shape[1] for part in per_scale]


def features_tc(features: torch.Tensor, feature_sizes: list[int]) -> float | None:
    """features [S, F] of one instrument -> its normalised TC (as `metrics.tc.tc`: mean over pairs of
    the mean |y_i - y_j|, averaged over scales); None for fewer than 2 notes."""
    count = features.shape[0]
    if count < 2:
        return None
    pairs = count * (count - 1) // 2
    parts = features.split(feature_sizes, dim=1)
    return float(torch.stack([pairwise_l1_sum(part) / (pairs * part.shape[1]) for part in parts]).mean())


def _write_notes(url: str, folder: str, slots: list[tuple[int, int]], audio: np.ndarray, sample_rate_hz: int,
                 audio_format: str) -> None:
    def write(i: int) -> None:
        pitch, velocity = slots[i]
        data = encode_audio(audio[i], sample_rate_hz, audio_format)
        storage.write_bytes(storage.join(url, folder, note_file(pitch, velocity, audio_format)), data)

    with concurrent.futures.ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(write, range(len(slots))))


def render_shard(lm, codec, clap, cue: InstrumentCue, gen_cfg: GenerateConfig, duration_s: float,
                 slots: list[tuple[int, int]], url: str, audio_format: str = "wav24", candidates: int = 1,
                 metrics_cfg: MetricsConfig | None = None, worker: str = "") -> ShardResult:
    """Generate, decode and write `slots` of the instrument at `url` (k = `candidates` per slot),
    returning codes, TC features and pitch estimates. clap may be None for a cue from `embedded_cue`."""
    metrics_cfg = metrics_cfg or MetricsConfig()
    cues = instrument_cues(cue, cue_embedding(cue, clap, lm.cfg), slots)
    num_frames = codec.frames_for(duration_s)
    codes, features, f0, gains = [], [], [], []
    for index, seed in enumerate(candidate_seeds(gen_cfg.seed, candidates)):
        candidate_codes = generate_codes(lm, cues, num_frames, dataclasses.replace(gen_cfg, seed=seed))
        audio = decode_notes(codec, candidate_codes, duration_s, gen_cfg.batch_size)
        if not torch.isfinite(audio).all():
            raise GenerateError("the codec produced NaN or inf audio; refusing to write a broken note")
        gain = note_gains(audio)
        _write_notes(url, candidate_dir(index, candidates), slots, (audio * gain[:, None]).numpy(),
                     codec.sample_rate_hz, audio_format)
        candidate_features, sizes = note_features(audio, codec.sample_rate_hz, metrics_cfg)
        report = pitch_report(audio, codec.sample_rate_hz, [p for p, _ in slots], metrics_cfg.pitch_estimator)
        codes.append(candidate_codes.to(torch.int16))
        features.append(candidate_features)
        f0.append(report.f0_hz.float())
        gains.append(gain.float())
    return ShardResult(list(slots), torch.stack(codes), torch.stack(features), torch.stack(f0), torch.stack(gains),
                       sizes, worker)


def _finite(value: float) -> float | None:
    """JSON has no NaN: an unvoiced note's pitch is null."""
    return None if value is None or not math.isfinite(value) else float(value)


def _bundle(url: str, files: list[str], manifest_bytes: bytes) -> None:
    """instrument.zip of `files` (stored, not deflated: audio does not compress) and the manifest."""
    with tempfile.TemporaryFile() as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as bundle:
            for name in files:
                bundle.writestr(name, storage.read_bytes(storage.join(url, name)))
            bundle.writestr(storage.MANIFEST, manifest_bytes)
        tmp.seek(0)
        storage.write_bytes(storage.join(url, BUNDLE_FILE), tmp.read())


def finish_instrument(url: str, shards: list[ShardResult], metadata: dict, audio_format: str,
                      sample_rate_hz: int, num_samples: int, title: str | None = None) -> dict:
    """Gather the shards (in slot order as given), keep one candidate per slot (consistency selection
    when k > 1), score (TC with and without selection, MAD_pitch, per-note pitch error), write the
    chosen notes to notes/, codes.npy, SFZ, DecentSampler preset, the zip bundle and, last, the
    manifest; returns the manifest."""
    if not shards:
        raise GenerateError("no shards to finish; allowed: the results of render_shard for every slot")
    slots = [slot for shard in shards for slot in shard.slots]
    if len(set(slots)) != len(slots):
        raise GenerateError("two shards hold the same (pitch, velocity) slot; each slot is rendered once")
    features = torch.cat([s.features for s in shards], dim=1)  # [C, S, F]
    count, num_slots = features.shape[:2]
    rows = torch.arange(num_slots)
    chosen = select_candidates(features) if count > 1 else torch.zeros(num_slots, dtype=torch.long)
    codes = torch.cat([s.codes for s in shards], dim=1)[chosen, rows]  # [S, K, N]
    f0 = torch.cat([s.f0_hz for s in shards], dim=1)[chosen, rows]
    gains = torch.cat([s.gains for s in shards], dim=1)[chosen, rows]
    sizes = shards[0].feature_sizes
    pitches, velocities = [p for p, _ in slots], [v for _, v in slots]
    files = [note_file(p, v, audio_format) for p, v in slots]
    if count > 1:  # the chosen candidates become the instrument's notes
        for file, candidate in zip(files, chosen.tolist()):
            data = storage.read_bytes(storage.join(url, candidate_dir(candidate, count), file))
            storage.write_bytes(storage.join(url, file), data)
    buffer = io.BytesIO()
    np.save(buffer, codes.numpy())
    storage.write_bytes(storage.join(url, CODES_FILE), buffer.getvalue())
    title = title or metadata.get("prompt") or "InstrumentGen instrument"
    storage.write_bytes(storage.join(url, SFZ_FILE), sfz_text(pitches, velocities, audio_format).encode())
    preset = dspreset_xml(pitches, velocities, title, audio_format)
    storage.write_bytes(storage.join(url, DSPRESET_FILE), preset.encode())
    error = 12 * torch.log2(f0.double() / torch.tensor([midi_to_hz(p) for p in pitches], dtype=torch.float64))
    voiced = torch.isfinite(error)
    manifest = {
        **metadata, "sample_rate_hz": sample_rate_hz, "num_samples": num_samples, "gain": "per_note",
        "sfz": SFZ_FILE, "dspreset": DSPRESET_FILE, "format": audio_format, "codes": CODES_FILE, "bundle": BUNDLE_FILE,
        "candidates": count,
        "tc": {"selected": features_tc(features[chosen, rows], sizes),
               "without_selection": features_tc(features[0], sizes)},
        "mad_pitch": _finite(error[voiced].abs().median().item()) if voiced.any() else None,
        "unvoiced": int((~voiced).sum()),
        "workers": sorted({s.worker for s in shards if s.worker}),
        "notes": [{"pitch": p, "velocity": v, "file": file, "gain": float(g), "candidate": int(c),
                   "f0_hz": _finite(float(hz)), "pitch_error_semitones": _finite(float(e))}
                  for p, v, file, g, c, hz, e in zip(pitches, velocities, files, gains.tolist(), chosen.tolist(),
                                                     f0.tolist(), error.tolist())],
    }
    manifest_bytes = json.dumps(manifest, indent=2, sort_keys=True).encode()
    _bundle(url, [*files, SFZ_FILE, DSPRESET_FILE], manifest_bytes)
    storage.write_bytes(storage.join(url, storage.MANIFEST), manifest_bytes)  # last: the instrument is complete
    if count > 1:
        fs, path = storage.filesystem(storage.join(url, CANDIDATES_DIR))
        fs.rm(path, recursive=True)
    return manifest
