"""One requested instrument -> its folder in the library: generate, select, score, gate, write (manifest last).

`Renderer` holds the loaded LM, codec and CLAP (load once, render many). `render(request, url)`
runs the same library functions as the Serve application (`instrumentgen.instruments.slices`), so an
instrument rendered here equals the one served for the same cue, seed and slots, file for file in
its notes and codes, with the same level policy, selection and scores:

1. the cue: the prompt, the family/source, or the reference recording read from its URL; its CLAP
   embedding is computed once (`embedded_cue`);
2. per attempt (the request's seed, then up to `render.retries` new seeds from `retry_seed`):
   `render_shard` over all slots as one shard (k = `candidates` per slot, notes written; a retry's
   notes are staged), then `score_shards`: the kept candidate per slot, TC with and without
   selection, MAD_pitch;
3. the quality gate (`render.max_tc`, `render.max_mad_pitch`; 0 = off) on those scores: an attempt
   over either threshold is retried with a new seed; after the last one the lowest-TC attempt is
   kept and flagged (`render.on_fail=keep`) or the folder is removed (`drop`);
4. the CLAP score of the kept notes (as written) against the cue's embedding (none for a metadata cue);
5. `write_instrument`: the kept notes, codes.npy, SFZ, .dspreset, zip, and last the manifest (prompt,
   name, seed, checkpoint, scores, timings). `fault` fires just before the manifest.

Returns a small JSON-able row (id, status, scores); audio never leaves this function.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import time

import numpy as np
import torch

from instrumentgen import storage
from instrumentgen.audio import decode_audio
from instrumentgen.config import Config, config_hash
from instrumentgen.faults import Fault, fault_point
from instrumentgen.instruments.generate import InstrumentCue
from instrumentgen.instruments.instrument import WRITE_THREADS
from instrumentgen.instruments.prompts import RenderRequest
from instrumentgen.instruments.slices import (
    ScoredInstrument,
    embedded_cue,
    kept_note_urls,
    render_shard,
    score_shards,
    write_instrument,
)
from instrumentgen.metrics.clap_score import clap_score
from instrumentgen.model.sampling import mix_seed

RETRY_STREAM = 0x2E7A1D  # keeps retry seeds apart from candidate seeds and every other use of mix_seed
FAULT_POINT = "render.instrument"


def checkpoint_id(url: str) -> str:
    """The `model_id` an exported checkpoint was saved with (no model is built)."""
    from instrumentgen.model.lm import LMError, read_checkpoint

    checkpoint, _ = read_checkpoint(url)
    if "model_id" not in checkpoint:
        raise LMError(f"checkpoint={url!r} has no model_id; give a file written by InstrumentLM.save")
    return checkpoint["model_id"]


def render_settings(cfg: Config) -> dict:
    """Every setting that changes an instrument's files for a given (cue, seed, checkpoint): part of its id."""
    generate = {k: v for k, v in dataclasses.asdict(cfg.generate).items() if k not in ("seed", "batch_size")}
    gate = {k: getattr(cfg.render, k) for k in ("max_tc", "max_mad_pitch", "retries", "on_fail", "audio_format")}
    return {
        "generate": generate,
        "duration_s": cfg.data.note_duration_s,
        "codec": cfg.codec.weights,
        "n_codebooks": cfg.codec.n_codebooks,
        "clap": cfg.clap.weights,
        "metrics": dataclasses.asdict(cfg.metrics),
        "render": gate,
    }


def retry_seed(seed: int, attempt: int) -> int:
    """The instrument seed of quality-gate attempt `attempt` (0: the requested seed itself)."""
    return seed if attempt == 0 else int(mix_seed(RETRY_STREAM, seed, attempt))


def passes_gate(scores: dict, max_tc: float, max_mad_pitch: float) -> bool:
    """Whether scores are within the thresholds (0 = no threshold); an all-unvoiced instrument fails a pitch
    gate; a one-note instrument (no TC: nothing to be consistent with) passes a TC gate."""
    tc = scores["tc"]
    if max_tc and tc is not None and not tc <= max_tc:
        return False
    mad = scores["mad_pitch"]
    return not (max_mad_pitch and (mad is None or not mad <= max_mad_pitch))


def _score_text(value: float | None) -> str:
    return "none" if value is None else f"{value:.3f}"


def read_notes(urls: list[str]) -> torch.Tensor:
    """The audio files at `urls` -> [S, L] float32, read several at once (object stores are latency-bound)."""

    def read(url: str) -> np.ndarray:
        return decode_audio(storage.read_bytes(url), url)[0]

    with concurrent.futures.ThreadPoolExecutor(WRITE_THREADS) as pool:
        return torch.from_numpy(np.stack(list(pool.map(read, urls))))


class Renderer:
    """The LM, codec and CLAP of one render worker, loaded once; `render` writes one instrument per call."""

    def __init__(self, cfg: Config, checkpoint: str):
        from instrumentgen.pretrained.loading import load_models

        self.cfg, self.checkpoint = cfg, checkpoint
        self.lm, self.codec, self.clap = load_models(cfg, checkpoint)

    def cue(self, request: RenderRequest) -> InstrumentCue:
        """The request's cue; the reference recording is read and decoded here (`AudioError` if it is not audio)."""
        reference = None
        if request.reference_audio is not None:
            audio, rate = decode_audio(storage.read_bytes(request.reference_audio), request.reference_audio)
            reference = (torch.from_numpy(audio), rate)
        return InstrumentCue(
            prompt=request.prompt, reference_audio=reference, family=request.family, source=request.source
        )

    def attempt(
        self, cue: InstrumentCue, seed: int, candidates: int, slots: list[tuple[int, int]], url: str, attempt: int = 0
    ) -> ScoredInstrument:
        """Attempt `attempt` of the instrument at `url`: k candidates of every slot with instrument seed
        `seed`, as one shard (`render_shard`, notes written), then the kept notes and their scores."""
        gen = dataclasses.replace(self.cfg.generate, seed=seed)
        shard = render_shard(
            self.lm,
            self.codec,
            None,
            cue,
            gen,
            self.cfg.data.note_duration_s,
            slots,
            url,
            self.cfg.render.audio_format,
            candidates,
            self.cfg.metrics,
            attempt=attempt,
        )
        return score_shards([shard])

    def cue_score(self, cue: InstrumentCue, url: str, scored: ScoredInstrument) -> float | None:
        """CLAP score of the kept notes (as written) against the cue's embedding; None for a metadata cue."""
        if cue.clap_embedding is None:
            return None
        audio = read_notes(kept_note_urls(url, scored, self.cfg.render.audio_format))
        return clap_score(cue.clap_embedding, self.clap.embed_audio(audio, self.codec.sample_rate_hz).cpu())

    @torch.no_grad()
    def render(
        self, request: RenderRequest, instrument_id: str, url: str, fault: Fault | None = None, count: int = 0
    ) -> dict:
        """Render `request` into `url` (its folder); returns {id, line, name, status, reason, scores...}."""
        render_cfg, start = self.cfg.render, time.perf_counter()
        row = {
            "id": instrument_id,
            "line": request.line,
            "name": request.name,
            "prompt": request.prompt,
            "seed": request.seed,
        }
        cue = self.cue(request)
        embedded = embedded_cue(cue, self.clap, self.lm.cfg)  # CLAP once, for every attempt and the score
        attempts, passed = [], False
        for attempt in range(render_cfg.retries + 1):
            seed = retry_seed(request.seed, attempt)
            scored = self.attempt(embedded, seed, request.candidates, request.slots(), url, attempt)
            attempts.append((seed, scored))
            passed = passes_gate(scored.scores(), render_cfg.max_tc, render_cfg.max_mad_pitch)
            if passed:
                break
        seed, kept = attempts[-1] if passed else min(attempts, key=lambda a: math.inf if a[1].tc is None else a[1].tc)
        scores = kept.scores()
        row.update(scores, attempts=len(attempts), quality="passed" if passed else "flagged")
        if not passed and render_cfg.on_fail == "drop":
            fs, path = storage.filesystem(url)
            fs.rm(path, recursive=True)  # no manifest was written: nothing of this instrument is kept
            return {
                **row,
                "status": "failed",
                "reason": "quality_gate",
                "message": f"TC {_score_text(scores['tc'])} / MAD_pitch {_score_text(scores['mad_pitch'])} "
                f"over the gate after {len(attempts)} attempts",
            }
        row["clap_score"] = self.cue_score(embedded, url, kept)
        gen = dataclasses.replace(self.cfg.generate, seed=seed)
        metadata = {
            **cue.describe(),
            "id": instrument_id,
            "name": request.name,
            "line": request.line,
            "seed": seed,
            "requested_seed": request.seed,
            "variation": request.variation,
            "reference_audio": request.reference_audio,
            "checkpoint": self.checkpoint,
            "model_id": self.lm.model_id,
            "codec_model_id": self.codec.model_id,
            "clap_model_id": getattr(self.clap, "model_id", None),
            "generate": config_hash(vars(gen)),
            "duration_s": self.cfg.data.note_duration_s,
            "num_frames": self.codec.frames_for(self.cfg.data.note_duration_s),
            "attempts": len(attempts),
            "quality": row["quality"],
            "clap_score": row["clap_score"],
            "timings": {"render_s": round(time.perf_counter() - start, 3)},
        }
        num_samples = round(self.cfg.data.note_duration_s * self.codec.sample_rate_hz)
        write_instrument(
            url,
            kept,
            metadata,
            render_cfg.audio_format,
            self.codec.sample_rate_hz,
            num_samples,
            request.name,
            before_manifest=lambda: fault_point(fault, FAULT_POINT, count),
        )
        return {**row, "status": "rendered", "reason": None, "message": None, "used_seed": seed}
