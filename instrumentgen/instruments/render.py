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

Returns a small JSON-able row (id, status, scores, its index row); audio never leaves this function.

The parts, one job each: `load_models` (the models, loaded once), `instrument_metadata` (what the
manifest says made an instrument), `Renderer` (the steps above), `RetryPolicy` (how often a
transient failure is tried again) and `render_isolated`, which a batch job calls per instrument:
it skips a complete folder, clears an incomplete one, retries transient failures and turns any
other exception into a failure row, so one instrument never ends a run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import numpy as np
import torch

from instrumentgen import storage
from instrumentgen.audio import decode_audio
from instrumentgen.config import Config, config_hash
from instrumentgen.errors import UserError
from instrumentgen.faults import Fault, fault_point
from instrumentgen.instruments.generate import InstrumentCue
from instrumentgen.instruments.library import index_row
from instrumentgen.instruments.manifest import InstrumentManifest
from instrumentgen.instruments.prompts import RenderRequest
from instrumentgen.instruments.slices import (
    ScoredInstrument,
    embedded_cue,
    render_shard,
    score_shards,
    write_instrument,
)
from instrumentgen.metrics.clap_score import clap_score
from instrumentgen.model.sampling import mix_seed
from instrumentgen.pretrained.loading import Models, load_models

T = TypeVar("T")
RETRY_STREAM = 0x2E7A1D  # keeps retry seeds apart from candidate seeds and every other use of mix_seed
FAULT_POINT = "render.instrument"


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


def decode_notes_bytes(files: list[bytes]) -> torch.Tensor:
    """Encoded notes (as written) -> [S, L] float32, the audio a reader of those files gets."""
    return torch.from_numpy(np.stack([decode_audio(data, "note")[0] for data in files]))


@dataclass(frozen=True)
class RetryPolicy:
    """How often one instrument is tried when storage or a worker fails transiently: `tries` in all,
    waiting `backoff_s`, then twice that, ... between them. A user error is never retried."""

    tries: int = 3
    backoff_s: float = 1.0

    @staticmethod
    def transient(error: BaseException) -> bool:
        """Whether a later try may not meet `error`: unreachable or throttled storage, a dropped connection."""
        if isinstance(error, storage.TransientStorageError):
            return True
        return not isinstance(error, UserError) and isinstance(error, (ConnectionError, TimeoutError))

    def run(self, work: Callable[[], T], sleep: Callable[[float], None] = time.sleep) -> tuple[T, int]:
        """`work()` until it returns or fails for good -> (its result, tries used); the last error is raised."""
        for attempt in range(1, self.tries + 1):
            try:
                return work(), attempt
            except Exception as e:
                if attempt == self.tries or not self.transient(e):
                    raise
                sleep(self.backoff_s * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover


def instrument_metadata(
    cue: InstrumentCue,
    request: RenderRequest,
    instrument_id: str,
    seed: int,
    checkpoint: str,
    models: Models,
    cfg: Config,
    attempts: int,
    quality: str,
    clap_score: float | None,
    render_s: float,
) -> dict:
    """What the manifest says made the instrument (beside its scores and notes, which `write_instrument` adds)."""
    gen = dataclasses.replace(cfg.generate, seed=seed)
    return {
        **cue.describe(),
        "id": instrument_id,
        "name": request.name,
        "line": request.line,
        "seed": seed,
        "requested_seed": request.seed,
        "variation": request.variation,
        "reference_audio": request.reference_audio,
        "checkpoint": checkpoint,
        "model_id": models.lm.model_id,
        "codec_model_id": models.codec.model_id,
        "clap_model_id": getattr(models.clap, "model_id", None),
        "generate": config_hash(vars(gen)),
        "duration_s": cfg.data.note_duration_s,
        "num_frames": models.codec.frames_for(cfg.data.note_duration_s),
        "attempts": attempts,
        "quality": quality,
        "clap_score": clap_score,
        "timings": {"render_s": round(render_s, 3)},
    }


class Renderer:
    """Renders one instrument per `render` call with models loaded once (`load_models`)."""

    def __init__(self, cfg: Config, checkpoint: str, models: Models | None = None):
        self.cfg, self.checkpoint = cfg, checkpoint
        self.models = models or load_models(cfg, checkpoint)

    @property
    def lm(self):
        return self.models.lm

    @property
    def codec(self):
        return self.models.codec

    @property
    def clap(self):
        return self.models.clap

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
        `seed`, as one shard (`render_shard`, notes written and kept in memory), then the kept notes and scores."""
        shard = render_shard(
            self.lm,
            self.codec,
            None,
            cue=cue,
            gen_cfg=dataclasses.replace(self.cfg.generate, seed=seed),
            duration_s=self.cfg.data.note_duration_s,
            slots=slots,
            url=url,
            audio_format=self.cfg.render.audio_format,
            candidates=candidates,
            metrics_cfg=self.cfg.metrics,
            attempt=attempt,
            keep_notes=True,
        )
        return score_shards([shard])

    def cue_score(self, cue: InstrumentCue, scored: ScoredInstrument) -> float | None:
        """CLAP score of the kept notes (as written, decoded from memory) against the cue's embedding;
        None for a metadata cue."""
        if cue.clap_embedding is None:
            return None
        audio = decode_notes_bytes(scored.notes)
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
            storage.remove(url)  # no manifest was written: nothing of this instrument is kept
            return {
                **row,
                "status": "failed",
                "reason": "quality_gate",
                "message": f"TC {_score_text(scores['tc'])} / MAD_pitch {_score_text(scores['mad_pitch'])} "
                f"over the gate after {len(attempts)} attempts",
            }
        row["clap_score"] = self.cue_score(embedded, kept)
        metadata = instrument_metadata(
            cue,
            request,
            instrument_id,
            seed,
            self.checkpoint,
            self.models,
            self.cfg,
            len(attempts),
            row["quality"],
            row["clap_score"],
            time.perf_counter() - start,
        )
        num_samples = round(self.cfg.data.note_duration_s * self.codec.sample_rate_hz)
        manifest = write_instrument(
            url,
            kept,
            metadata,
            render_cfg.audio_format,
            self.codec.sample_rate_hz,
            num_samples,
            request.name,
            before_manifest=lambda: fault_point(fault, FAULT_POINT, count),
        )
        return {
            **row,
            "status": "rendered",
            "reason": None,
            "message": None,
            "used_seed": seed,
            "index": index_row(manifest),
        }


def failure_row(request: RenderRequest, instrument_id: str, error: BaseException, tries: int) -> dict:
    """The result row of an instrument that failed for good: its line, a reason (the error's type) and
    the message's first line (at most 300 characters)."""
    lines = str(error).strip().splitlines()
    message = lines[0] if lines else type(error).__name__
    return {
        "id": instrument_id,
        "line": request.line,
        "name": request.name,
        "status": "failed",
        "reason": type(error).__name__,
        "message": message[:300],
        "tries": tries,
    }


def prepare_folder(url: str) -> InstrumentManifest | None:
    """The manifest of the complete instrument at `url` (nothing to render), else None after removing
    whatever an interrupted render left there (temporary files included): one listing."""
    with storage.storage_errors(url, "list"):
        fs, path = storage.filesystem(url)
        fs.invalidate_cache(path)
        found = fs.find(path)
    if f"{path.rstrip('/')}/{storage.MANIFEST}" in found:
        return InstrumentManifest.read(url)
    if found:
        storage.remove(url)
    return None


def render_isolated(
    renderer: Renderer,
    request: RenderRequest,
    instrument_id: str,
    url: str,
    policy: RetryPolicy = RetryPolicy(),
    fault: Fault | None = None,
    count: int = 0,
) -> dict:
    """`renderer.render` for one instrument of a batch: never raises. A complete folder is not rendered
    again (its row comes from the manifest); an incomplete one is cleared first; a transient failure is
    tried again (`policy`); any other exception, or the last transient one, is a failure row."""
    tries = 0

    def once() -> dict:
        nonlocal tries
        tries += 1
        manifest = prepare_folder(url)
        if manifest is not None:
            return {
                "id": instrument_id,
                "line": request.line,
                "name": request.name,
                "status": "rendered",
                "reason": None,
                "message": None,
                "quality": manifest.about.get("quality"),
                "index": index_row(manifest),
            }
        return renderer.render(request, instrument_id, url, fault, count)

    try:
        row, _ = policy.run(once)
    except Exception as e:  # this instrument's failure, whatever it is, is a row: the run goes on
        return failure_row(request, instrument_id, e, tries)
    return {**row, "tries": tries}
