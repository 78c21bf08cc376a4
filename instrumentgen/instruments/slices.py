"""An instrument rendered in shards: any worker generates, decodes and writes a few slots; one
step gathers the small results, selects candidates and scores; one step writes the instrument.

    render_shard(lm, codec, clap, cue=, gen_cfg=, duration_s=, slots=, url=, ...) -> ShardResult
    score_shards([ShardResult, ...])                                       -> ScoredInstrument
    write_instrument(url, scored, metadata, ...)                            -> manifest
    finish_instrument(url, shards, metadata, ...) = write_instrument(url, score_shards(shards), ...)

This is the one rendering path. The Serve application runs `render_shard` in its Generator
replicas and `finish_instrument` in its Scorer; the batch render job (`instrumentgen.instruments.render`) runs
`render_shard` over all slots of an attempt, `score_shards`, its quality gate on those scores (a
retry is `attempt` > 0 with a new seed), then `write_instrument`. So the same cue, seed and slots
give the same notes, codes and scores either way. Only codes, TC features and pitch estimates
travel back from a shard: its notes are written to storage by the worker that decoded them.

Seeds: candidate c of every slot is generated with the instrument seed `candidate_seeds(seed, k)[c]`
(candidate 0 is the seed itself) and the per-slot streams of `generate.slot_seeds`, so a shard's
notes do not depend on which slots share its shard or which worker renders it: with k = 1 the
codes equal those of `generate_instrument` with the same seed.

Level policy (`audio.note_gains`, the same as `Instrument.write`'s): a shard cannot know the other
shards' peaks, so every note is written at its generated level except a note whose peak exceeds
`audio.NOTE_PEAK`, which alone is scaled down to it; the gain of each note is in the manifest.
Nothing is normalised when no note clips, the usual case.

Layout under `url` (on top of `Instrument.write`'s notes/, instrument.sfz, instrument.dspreset, instrument.sf2,
manifest.json): staged notes while k > 1 candidates exist (candidates/<c>/notes/...) or for a
quality-gate retry (candidates/retry<a>/<c>/notes/...), removed once the kept notes are copied to
notes/; codes.npy (int16 [S, K, N] of the kept notes), instrument.zip (notes + presets + manifest).
manifest.json is written last: a folder without it is unfinished.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import math
import tempfile
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from instrumentgen import storage
from instrumentgen.audio import encode_audio, note_gains
from instrumentgen.config import GenerateConfig, MetricsConfig, ModelConfig
from instrumentgen.instruments.export import DSPRESET_FILE, SF2_FILE, SFZ_FILE, note_file, write_presets
from instrumentgen.instruments.generate import (
    GenerateError,
    InstrumentCue,
    cue_embedding,
    decode_notes,
    generate_codes,
    instrument_cues,
)
from instrumentgen.instruments.instrument import WRITE_THREADS
from instrumentgen.instruments.manifest import InstrumentManifest, NoteEntry
from instrumentgen.instruments.selection import candidate_seeds, select_candidates
from instrumentgen.metrics.pitch import pitch_report
from instrumentgen.metrics.tc import liftered_log_mel, scales_from_config, tc_of_features
from instrumentgen.vocab import midi_to_hz

CODES_FILE, BUNDLE_FILE, CANDIDATES_DIR = "codes.npy", "instrument.zip", "candidates"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # zip's earliest date: a bundle's bytes do not depend on when it was written


@dataclass
class ShardResult:
    """What one shard sends back: small tensors, no audio. C candidates of S slots.

    codes [C, S, K, N] int16; features [C, S, F] float32 (TC features: the liftered log-mel of every
    TC scale, flattened and concatenated, `feature_sizes` values per scale); f0_hz [C, S] float32
    (NaN: unvoiced); gains [C, S] float32 (the level policy's scale of each written note); attempt:
    the quality-gate attempt (0: the first), which with the candidate says where the notes were written;
    notes: the encoded files as written, only when the caller keeps them in memory (the batch renderer:
    its CLAP score and zip then read nothing back), else None (Serve: no audio travels).
    """

    slots: list[tuple[int, int]]
    codes: torch.Tensor
    features: torch.Tensor
    f0_hz: torch.Tensor
    gains: torch.Tensor
    feature_sizes: list[int]
    worker: str = ""
    attempt: int = 0
    notes: list[list[bytes]] | None = None  # [C][S] the encoded notes as written (`keep_notes`), else None


def embedded_cue(cue: InstrumentCue, clap, model_cfg: ModelConfig) -> InstrumentCue:
    """The cue with its CLAP embedding computed once (prompt / reference audio -> clap_embedding), so
    shards need neither CLAP nor the reference recording; a metadata cue is returned as is."""
    embedding = cue_embedding(cue, clap, model_cfg)
    if embedding is None:
        return cue
    return InstrumentCue(clap_embedding=embedding, family=cue.family, source=cue.source)


def candidate_url(url: str, candidate: int, candidates: int, attempt: int = 0) -> str:
    """The folder that candidate `candidate`'s notes of `attempt` are written to: the instrument at `url`
    itself for the only candidate of the first attempt, else a staging folder inside it."""
    if attempt:
        return storage.join(url, CANDIDATES_DIR, f"retry{attempt}", str(candidate))
    # Never join an empty part: "<url>//notes/..." is another key than "<url>/notes/..." in an object store.
    return url if candidates == 1 else storage.join(url, CANDIDATES_DIR, str(candidate))


def note_features(
    audio: torch.Tensor, sample_rate_hz: int, metrics_cfg: MetricsConfig
) -> tuple[torch.Tensor, list[int]]:
    """audio [S, L] -> (TC features [S, F] float32, values per TC scale): the liftered log-mel of
    `metrics/tc.py` at every configured scale, flattened and concatenated."""
    per_scale = [
        liftered_log_mel(audio, sample_rate_hz, scale, metrics_cfg.tc_power).flatten(1)
        for scale in scales_from_config(metrics_cfg)
    ]
    return torch.cat(per_scale, dim=1).float(), [part.shape[1] for part in per_scale]


def features_tc(features: torch.Tensor, feature_sizes: list[int]) -> float | None:
    """features [S, F] of one instrument -> its normalised TC (as `metrics.tc.tc`: mean over pairs of
    the mean |y_i - y_j|, averaged over scales); None for fewer than 2 notes."""
    if features.shape[0] < 2:
        return None
    return float(tc_of_features(list(features.split(feature_sizes, dim=1))).normalised)


def _write_notes(
    folder: str, slots: list[tuple[int, int]], audio: np.ndarray, sample_rate_hz: int, audio_format: str
) -> list[bytes]:
    """Encode and write the notes audio [S, L] of `slots` under `folder`; returns the encoded files."""

    def write(i: int) -> bytes:
        pitch, velocity = slots[i]
        data = encode_audio(audio[i], sample_rate_hz, audio_format)
        storage.write_bytes(storage.join(folder, note_file(pitch, velocity, audio_format)), data)
        return data

    with concurrent.futures.ThreadPoolExecutor(WRITE_THREADS) as pool:
        return list(pool.map(write, range(len(slots))))


def render_shard(
    lm,
    codec,
    clap,
    *,
    cue: InstrumentCue,
    gen_cfg: GenerateConfig,
    duration_s: float,
    slots: list[tuple[int, int]],
    url: str,
    audio_format: str = "wav24",
    candidates: int = 1,
    metrics_cfg: MetricsConfig | None = None,
    worker: str = "",
    attempt: int = 0,
    keep_notes: bool = False,
) -> ShardResult:
    """Generate, decode and write `slots` of the instrument at `url` (k = `candidates` per slot, seeded by
    `gen_cfg.seed`), returning codes, TC features and pitch estimates. clap may be None for a cue from
    `embedded_cue`. `attempt` > 0 (a quality-gate retry) stages every note, keeping the first attempt's.
    `keep_notes`: also return the encoded notes as written ([C][S] bytes), for a caller in this process."""
    metrics_cfg = metrics_cfg or MetricsConfig()
    cues = instrument_cues(cue, cue_embedding(cue, clap, lm.cfg), slots)
    num_frames = codec.frames_for(duration_s)
    codes, features, f0, gains, notes = [], [], [], [], []
    for index, seed in enumerate(candidate_seeds(gen_cfg.seed, candidates)):
        candidate_codes = generate_codes(lm, cues, num_frames, dataclasses.replace(gen_cfg, seed=seed))
        audio = decode_notes(codec, candidate_codes, duration_s, gen_cfg.batch_size)
        if not torch.isfinite(audio).all():
            raise GenerateError("the codec produced NaN or inf audio; refusing to write a broken note")
        gain = note_gains(audio)
        written = _write_notes(
            candidate_url(url, index, candidates, attempt),
            slots,
            (audio * gain[:, None]).numpy(),
            codec.sample_rate_hz,
            audio_format,
        )
        candidate_features, sizes = note_features(audio, codec.sample_rate_hz, metrics_cfg)
        report = pitch_report(audio, codec.sample_rate_hz, [p for p, _ in slots], metrics_cfg.pitch_estimator)
        codes.append(candidate_codes.to(torch.int16))
        features.append(candidate_features)
        f0.append(report.f0_hz.float())
        gains.append(gain.float())
        notes.append(written)
    return ShardResult(
        list(slots),
        torch.stack(codes),
        torch.stack(features),
        torch.stack(f0),
        torch.stack(gains),
        sizes,
        worker,
        attempt,
        notes if keep_notes else None,
    )


def _finite(value: float) -> float | None:
    """JSON has no NaN: an unvoiced note's pitch is null."""
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class ScoredInstrument:
    """The instrument the shards make once one candidate per slot is kept, and its scores; no audio.

    slots: S (pitch, velocity) in slot order; chosen [S] long: the candidate kept per slot (of
    `candidates`); codes [S, K, N] int16, f0_hz [S], pitch_error [S] float64 semitones (NaN: unvoiced)
    and gains [S] of the kept notes; attempt: the `render_shard` attempt whose notes these are.
    tc / tc_without_selection: normalised TC of the kept notes / of candidate 0 everywhere (None
    under two notes); mad_pitch: median |pitch_error| over voiced notes (None if none is voiced);
    notes: S encoded kept notes as written, when every shard kept them (`keep_notes`), else None.
    """

    slots: list[tuple[int, int]]
    chosen: torch.Tensor
    codes: torch.Tensor
    f0_hz: torch.Tensor
    pitch_error: torch.Tensor
    gains: torch.Tensor
    candidates: int
    attempt: int
    workers: list[str]
    tc: float | None
    tc_without_selection: float | None
    mad_pitch: float | None
    unvoiced: int
    notes: list[bytes] | None = None

    def scores(self) -> dict:
        """The scores that the manifest, the quality gate, an index row and an HTTP status carry (JSON-able)."""
        return {
            "tc": self.tc,
            "tc_without_selection": self.tc_without_selection,
            "mad_pitch": self.mad_pitch,
            "unvoiced": self.unvoiced,
            "candidates": self.candidates,
            "candidates_kept": torch.bincount(self.chosen, minlength=self.candidates).tolist(),
        }


def score_shards(shards: list[ShardResult]) -> ScoredInstrument:
    """Gather the shards of one attempt (slot order as given), keep one candidate per slot (consistency
    selection when k > 1) and score: TC with and without selection, MAD_pitch, per-note pitch error."""
    if not shards:
        raise GenerateError("no shards to finish; allowed: the results of render_shard for every slot")
    slots = [slot for shard in shards for slot in shard.slots]
    if len(set(slots)) != len(slots):
        raise GenerateError("two shards hold the same (pitch, velocity) slot; each slot is rendered once")
    if len({shard.attempt for shard in shards}) != 1:
        raise GenerateError("the shards come from different attempts; allowed: the shards of one attempt")
    features = torch.cat([s.features for s in shards], dim=1)  # [C, S, F]
    count, num_slots = features.shape[:2]
    rows = torch.arange(num_slots)
    chosen = select_candidates(features) if count > 1 else torch.zeros(num_slots, dtype=torch.long)
    f0 = torch.cat([s.f0_hz for s in shards], dim=1)[chosen, rows]
    sizes = shards[0].feature_sizes
    error = 12 * torch.log2(f0.double() / torch.tensor([midi_to_hz(p) for p, _ in slots], dtype=torch.float64))
    voiced = torch.isfinite(error)
    kept_notes = None
    if all(s.notes is not None for s in shards):
        per_slot = [[s.notes[c][i] for c in range(count)] for s in shards for i in range(len(s.slots))]
        kept_notes = [per_slot[slot][c] for slot, c in enumerate(chosen.tolist())]
    return ScoredInstrument(
        slots=slots,
        chosen=chosen,
        codes=torch.cat([s.codes for s in shards], dim=1)[chosen, rows],
        f0_hz=f0,
        pitch_error=error,
        gains=torch.cat([s.gains for s in shards], dim=1)[chosen, rows],
        candidates=count,
        attempt=shards[0].attempt,
        workers=sorted({s.worker for s in shards if s.worker}),
        tc=features_tc(features[chosen, rows], sizes),
        tc_without_selection=features_tc(features[0], sizes),
        mad_pitch=_finite(error[voiced].abs().median().item()) if voiced.any() else None,
        unvoiced=int((~voiced).sum()),
        notes=kept_notes,
    )


def kept_note_urls(url: str, scored: ScoredInstrument, audio_format: str) -> list[str]:
    """Where `render_shard` wrote each kept note of the instrument at `url` (slot order)."""
    return [
        storage.join(
            candidate_url(url, candidate, scored.candidates, scored.attempt), note_file(pitch, velocity, audio_format)
        )
        for (pitch, velocity), candidate in zip(scored.slots, scored.chosen.tolist())
    ]


def _bundle(url: str, files: list[str], manifest_bytes: bytes, in_memory: dict[str, bytes]) -> None:
    """instrument.zip of `files` (stored, not deflated: audio does not compress) and the manifest. Entries
    carry a fixed date, so the same instrument gives the same bytes whenever it is rendered. A file of
    `in_memory` ({name: bytes as written}) is not read back."""
    with tempfile.TemporaryFile() as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as bundle:
            for name in files:
                data = in_memory[name] if name in in_memory else storage.read_bytes(storage.join(url, name))
                bundle.writestr(_zip_entry(name), data)
            bundle.writestr(_zip_entry(storage.MANIFEST), manifest_bytes)
        tmp.seek(0)
        storage.write_bytes(storage.join(url, BUNDLE_FILE), tmp.read())


def _zip_entry(name: str) -> zipfile.ZipInfo:
    entry = zipfile.ZipInfo(name, date_time=ZIP_DATE)
    entry.external_attr = 0o644 << 16  # a plain readable file once unzipped
    return entry


def remove_staging(url: str) -> None:
    """Remove the candidates/ folder of the instrument at `url` (the notes not kept), if there is one."""
    storage.remove(storage.join(url, CANDIDATES_DIR))


def write_instrument(
    url: str,
    scored: ScoredInstrument,
    metadata: dict,
    audio_format: str,
    sample_rate_hz: int,
    num_samples: int,
    title: str | None = None,
    before_manifest: Callable[[], None] | None = None,
) -> InstrumentManifest:
    """Write the instrument at `url`: the kept notes to notes/ (copied from where `render_shard` staged
    them), codes.npy, SFZ, DecentSampler preset, SF2, the zip bundle, remove the staged candidates and, last,
    the manifest (`metadata` + layout + `scored.scores()` + one entry per note); returns the manifest.
    `before_manifest` runs just before the manifest is written (a fault point)."""
    pitches, velocities = [p for p, _ in scored.slots], [v for _, v in scored.slots]
    files = [note_file(p, v, audio_format) for p, v in scored.slots]
    copies = [
        (source, storage.join(url, file))
        for source, file in zip(kept_note_urls(url, scored, audio_format), files)
        if source != storage.join(url, file)
    ]
    kept = dict(zip(kept_note_urls(url, scored, audio_format), scored.notes)) if scored.notes is not None else {}

    def copy(job: tuple[str, str]) -> None:
        source, dest = job
        storage.write_bytes(dest, kept[source] if source in kept else storage.read_bytes(source))

    with concurrent.futures.ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(copy, copies))
    buffer = io.BytesIO()
    np.save(buffer, scored.codes.numpy())
    storage.write_bytes(storage.join(url, CODES_FILE), buffer.getvalue())
    presets = write_presets(
        url, pitches, velocities, audio_format, title or metadata.get("prompt"), note_bytes=scored.notes
    )
    about = {**metadata, **scored.scores(), "codes": CODES_FILE, "bundle": BUNDLE_FILE, "workers": scored.workers}
    notes = [
        NoteEntry(p, v, file, float(g), int(c), _finite(float(hz)), _finite(float(e)))
        for p, v, file, g, c, hz, e in zip(
            pitches,
            velocities,
            files,
            scored.gains.tolist(),
            scored.chosen.tolist(),
            scored.f0_hz.tolist(),
            scored.pitch_error.tolist(),
        )
    ]
    manifest = InstrumentManifest(notes, sample_rate_hz, num_samples, presets, about)
    manifest_bytes = manifest.to_bytes()
    in_memory = dict(zip(files, scored.notes)) if scored.notes is not None else {}
    _bundle(url, [*files, SFZ_FILE, DSPRESET_FILE, SF2_FILE], manifest_bytes, in_memory)
    remove_staging(url)
    if before_manifest is not None:
        before_manifest()
    manifest.write(url)  # last: the instrument is complete
    return manifest


def finish_instrument(
    url: str,
    shards: list[ShardResult],
    metadata: dict,
    audio_format: str,
    sample_rate_hz: int,
    num_samples: int,
    title: str | None = None,
) -> InstrumentManifest:
    """`score_shards` then `write_instrument`: the shards of one instrument -> its manifest (written last)."""
    return write_instrument(url, score_shards(shards), metadata, audio_format, sample_rate_hz, num_samples, title)
