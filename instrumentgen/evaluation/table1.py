"""The paper's Table 1 for checkpoints (and the ground truth) on an NSynth-format test set.

Each test instrument is generated from one fixed cue, as in the paper: its family and source for a
metadata-conditioned model, else a CLAP embedding (`metrics.eval_cue`): that of its reference note
(the note nearest MIDI 60 at the loudest velocity), or the normalised mean of its notes'. It is
generated at the slots (pitch, velocity) the test set has for it. Per instrument
(`InstrumentScores`): TC (normalised, eq. 1), MAD_pitch (YIN), CLAP score (the same CLAP cue vs
each note), and the embeddings for FAD, which is computed per model over all instruments against
the real test notes. `model_row` makes a model's row of Table 1, `summary_table` the table.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F

from instrumentgen.audio import crop_and_resample
from instrumentgen.config import Config, ConfigError
from instrumentgen.data import nsynth
from instrumentgen.instruments.generate import InstrumentCue, generate_instrument
from instrumentgen.metrics.aggregate import finite_mean, score_cell
from instrumentgen.metrics.clap_score import clap_score
from instrumentgen.metrics.fad import Embedder
from instrumentgen.metrics.pitch import pitch_report
from instrumentgen.metrics.tc import l1_matrix, scales_from_config, tc_features, tc_of_features
from instrumentgen.model.quantizer import code_counts, code_usage_from_counts
from instrumentgen.vocab import FAMILIES, NSYNTH_SAMPLE_RATE_HZ, SOURCES

GROUND_TRUTH = "ground_truth"
REFERENCE_PITCH = 60


@dataclass
class TestInstrument:
    """The real notes of one test instrument, at the codec's rate. audio: float32 [S, L]."""

    name: str
    family: int
    source: int
    pitches: list[int]
    velocities: list[int]
    audio: np.ndarray

    def reference_index(self) -> int:
        """The note whose CLAP embedding is the instrument's cue: nearest MIDI 60, loudest velocity."""
        return min(
            range(len(self.pitches)), key=lambda i: (abs(self.pitches[i] - REFERENCE_PITCH), -self.velocities[i])
        )


def load_test_instruments(cfg: Config, max_instruments: int = 0) -> list[TestInstrument]:
    """The valid notes of `cfg.data.source`, grouped by instrument, cropped and resampled to 44.1 kHz."""
    groups: dict[str, list[nsynth.NoteRecord]] = defaultdict(list)
    for note in nsynth.iter_notes(cfg.data.source, cfg.data.format):
        groups[note.instrument_str].append(note)
    names = sorted(groups)[: max_instruments or None]
    instruments = []
    for name in names:
        notes = sorted(groups[name], key=lambda n: (n.pitch, n.velocity))
        audio = crop_and_resample(
            np.stack([n.audio for n in notes]), cfg.data.note_duration_s, NSYNTH_SAMPLE_RATE_HZ, cfg.data.sample_rate_hz
        )
        instruments.append(
            TestInstrument(
                name, notes[0].family, notes[0].source, [n.pitch for n in notes], [n.velocity for n in notes], audio
            )
        )
    return instruments


def instrument_clap_cue(instrument: TestInstrument, clap, sample_rate_hz: int, eval_cue: str) -> torch.Tensor:
    """The instrument's CLAP cue [512], unit norm: its reference note's embedding ("reference_note")
    or the normalised mean of all its notes' embeddings ("mean_embedding")."""
    real = torch.from_numpy(instrument.audio)
    if eval_cue == "reference_note":
        return clap.embed_audio(real[instrument.reference_index()][None], sample_rate_hz)[0].cpu()
    if eval_cue == "mean_embedding":
        return F.normalize(clap.embed_audio(real, sample_rate_hz).cpu().mean(dim=0), dim=0)
    raise ConfigError(f"metrics.eval_cue={eval_cue!r} is not allowed; allowed: reference_note, mean_embedding")


@dataclass
class InstrumentScores:
    """The scores of one test instrument of S notes (generated, or the real notes for the ground truth).

    tc: normalised TC (eq. 1-2: mean over pairs of the mean |y_i - y_j|). mad_pitch: median |f0
    error| in semitones over the voiced notes (None when all are unvoiced); unvoiced: notes without
    a pitch. clap: mean cosine similarity of the CLAP cue and each note's CLAP embedding.
    pitches, velocities: the S slots (MIDI). pitch_errors: float [S], signed f0 error in semitones,
    NaN where unvoiced. tc_matrix: float [S, S], mean |y_i - y_j| per pair of notes.
    embeddings / real_embeddings: float [N, E], FAD embeddings of the generated / real notes (VGGish:
    one per 0.96 s frame of each note, N = S x frames; CLAP: one per note).
    rvq_counts: [Q][bins] how often the model's CLAP quantizer picks each entry for the real notes'
    CLAP embeddings (None for the ground truth and a metadata-conditioned model).
    """

    name: str
    family: str
    source: str
    tc: float
    mad_pitch: float | None
    unvoiced: int
    clap: float
    pitches: list[int]
    velocities: list[int]
    pitch_errors: np.ndarray
    tc_matrix: np.ndarray
    embeddings: np.ndarray
    real_embeddings: np.ndarray
    rvq_counts: list[list[int]] | None = None

    ARRAYS = ("tc_matrix", "embeddings", "real_embeddings")  # the .npz beside the JSON row

    def json_row(self) -> dict:
        """Everything but `ARRAYS`, JSON-ready (unvoiced pitch errors as None)."""
        row = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self.ARRAYS}
        row["pitch_errors"] = [float(e) if np.isfinite(e) else None for e in self.pitch_errors]
        return row

    def arrays(self) -> dict[str, np.ndarray]:
        """{name: array} of `ARRAYS`, for np.savez."""
        return {name: getattr(self, name) for name in self.ARRAYS}


def evaluate_instrument(
    cfg: Config, instrument: TestInstrument, lm, codec, clap, embedder: Embedder
) -> InstrumentScores:
    """Scores of one instrument, generated by `lm` from its fixed cue, or its real notes when `lm` is None."""
    rate = cfg.data.sample_rate_hz
    real = torch.from_numpy(instrument.audio)
    clap_cue = instrument_clap_cue(instrument, clap, rate, cfg.metrics.eval_cue)
    if lm is None:
        audio = real
    else:
        if lm.cfg.conditioning == "metadata":
            cue = InstrumentCue(family=FAMILIES[instrument.family], source=SOURCES[instrument.source])
        else:
            cue = InstrumentCue(clap_embedding=clap_cue)
        slots = list(zip(instrument.pitches, instrument.velocities))
        audio = generate_instrument(lm, codec, clap, cue, cfg.generate, cfg.data.note_duration_s, slots).audio
    features = tc_features(audio, rate, scales_from_config(cfg.metrics), cfg.metrics.tc_power)  # once for both
    pitch = pitch_report(audio, rate, instrument.pitches, cfg.metrics.pitch_estimator)
    return InstrumentScores(
        name=instrument.name,
        family=FAMILIES[instrument.family],
        source=SOURCES[instrument.source],
        tc=tc_of_features(features).normalised.item(),
        mad_pitch=pitch.mad_pitch if np.isfinite(pitch.mad_pitch) else None,
        unvoiced=pitch.unvoiced,
        clap=clap_score(clap_cue, clap.embed_audio(audio, rate).cpu()),
        pitches=list(instrument.pitches),
        velocities=list(instrument.velocities),
        pitch_errors=pitch.error_semitones.numpy(),
        tc_matrix=l1_matrix(features[0]).numpy(),
        embeddings=embedder(audio, rate).numpy(),
        real_embeddings=embedder(real, rate).numpy(),
        rvq_counts=_rvq_counts(lm, clap.embed_audio(real, rate)) if lm and lm.cfg.conditioning == "clap" else None,
    )


def _rvq_counts(lm, clap_embeddings: torch.Tensor) -> list[list[int]]:
    """[S, 512] CLAP embeddings -> [Q][bins] counts of the entries `lm`'s quantizer picks for them."""
    rvq = lm.conditioners.clap.rvq
    return code_counts(rvq.encode(clap_embeddings.to(next(lm.parameters()).device)), rvq.bins).long().tolist()


def rvq_usage(rows: list[dict]) -> dict | None:
    """The summed `rvq_counts` of a model's instruments -> {perplexity: [Q], live: [Q], bins} (None if absent)."""
    counts = [row["rvq_counts"] for row in rows if row.get("rvq_counts") is not None]
    if not counts:
        return None
    total = torch.tensor(counts).sum(dim=0)  # [Q, bins]
    usage = code_usage_from_counts(total)
    return {"perplexity": usage.perplexity.tolist(), "live": usage.live.tolist(), "bins": total.shape[1]}


INSTRUMENT_KEYS = ("name", "family", "source", "tc", "mad_pitch", "unvoiced", "clap")


def model_row(model: str, checkpoint: str, rows: list[dict], fad_value: float) -> dict:
    """The JSON rows (`InstrumentScores.json_row`) of one model's instruments + its FAD -> its row of Table 1.

    clap, tc: means over instruments. mad_pitch: the paper's median absolute deviation, the median
    |pitch error| over the voiced notes of all instruments (None if none is voiced); unvoiced: the
    notes of all instruments without a pitch. Per-instrument medians stay in `instruments`.
    """
    errors = [abs(e) for row in rows for e in row["pitch_errors"] if e is not None]
    return {
        "model": model,
        "checkpoint": checkpoint,
        "fad": fad_value,
        "clap": finite_mean([r["clap"] for r in rows]),
        "mad_pitch": float(np.median(errors)) if errors else None,
        "unvoiced": sum(r["unvoiced"] for r in rows),
        "tc": finite_mean([r["tc"] for r in rows]),
        "instruments": [{key: row[key] for key in INSTRUMENT_KEYS} for row in rows],
        "rvq_usage": rvq_usage(rows),
    }


def summary_table(models: list[dict], embedder: str) -> tuple[dict, str]:
    """Model rows (`model_row`) -> (results JSON, Markdown in the shape of the paper's Table 1 with
    one row per model, then a per-instrument table per model). A missing MAD_pitch reads n/a."""
    results = {"fad_embedder": embedder, "models": models}
    lines = [
        "# Evaluation on the NSynth test set",
        "",
        f"| model | FAD ({embedder}) ↓ | CLAP ↑ | MAD_pitch (semitones) ↓ | unvoiced notes | TC ↓ |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m['model']} | {m['fad']:.4g} | {score_cell(m['clap'])} | {score_cell(m['mad_pitch'])} "
        f"| {m['unvoiced']} | {score_cell(m['tc'])} |"
        for m in models
    ]
    for m in models:
        usage = m.get("rvq_usage")
        if usage:
            lines += [
                "",
                f"CLAP quantizer of {m['model']} on the test notes (perplexity, live of {usage['bins']}): "
                + "; ".join(
                    f"codebook {i}: {p:.1f}, {n}" for i, (p, n) in enumerate(zip(usage["perplexity"], usage["live"]))
                ),
            ]
        lines += [
            "",
            f"## Per instrument: {m['model']}",
            "",
            "| instrument | family | source | CLAP ↑ | MAD_pitch ↓ | unvoiced | TC ↓ |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['name']} | {r['family']} | {r['source']} | {score_cell(r['clap'])} "
            f"| {score_cell(r['mad_pitch'])} | {r['unvoiced']} | {score_cell(r['tc'])} |"
            for r in m["instruments"]
        ]
    return results, "\n".join(lines) + "\n"
