"""One requested instrument -> its folder in the library: generate, select, score, gate, write (manifest last).

`Renderer` holds the loaded LM, codec and CLAP (load once, render many). `render(request, url)`:

1. the cue: the prompt, the family/source, or the reference recording read from its URL;
2. per attempt (the request's seed, then up to `render.retries` new seeds from `retry_seed`):
   `candidates` = k instruments with the seeds of `selection.candidate_seeds`; per slot the note
   that `selection.select_candidates` keeps, from the TC features (`metrics.tc.liftered_log_mel`);
3. scores of the kept notes: TC (normalised), MAD_pitch (YIN), the CLAP score against the cue's
   embedding (prompt text or reference audio; none for a metadata cue), and the TC of candidate 0
   alone (`tc_without_selection`: what plain generation would have given);
4. the quality gate (`render.max_tc`, `render.max_mad_pitch`; 0 = off): an attempt over either
   threshold is retried with a new seed; after the last one the lowest-TC attempt is kept and
   flagged (`render.on_fail=keep`) or nothing is written (`drop`);
5. `Instrument.write`: notes, SFZ, .dspreset, and last the manifest (prompt, name, seed, checkpoint,
   scores, timings). `fault` fires between the notes and the manifest.

Returns a small JSON-able row (id, status, scores); audio never leaves this function.
"""
from __future__ import annotations

import dataclasses
import io
import math
import time

import numpy as np
import torch

from instrumentgen import storage
from instrumentgen.audio import decode_audio
from instrumentgen.config import Config
from instrumentgen.faults import Fault, fault_point
from instrumentgen.generate import InstrumentCue, cue_embedding, generate_instrument
from instrumentgen.instrument import Instrument
from instrumentgen.metrics.clap_score import clap_score
from instrumentgen.metrics.pitch import pitch_report
from instrumentgen.metrics.tc import liftered_log_mel, scales_from_config, tc
from instrumentgen.model.sampling import mix_seed
from instrumentgen.prompts import RenderRequest
from instrumentgen.selection import candidate_seeds, select_candidates

RETRY_STREAM = 0x2E7A1D  # keeps retry seeds apart from candidate seeds and every other use of mix_seed
FAULT_POINT = "render.instrument"


def checkpoint_id(url: str) -> str:
    """The `model_id` an exported checkpoint was saved with (no model is built)."""
    from instrumentgen.model.lm import LMError

    if not storage.exists(url):
        raise LMError(f"checkpoint={url!r} does not exist; give the path or URL of a file written by InstrumentLM.save")
    try:
        return torch.load(io.BytesIO(storage.read_bytes(url)), map_location="cpu", weights_only=True)["model_id"]
    except Exception as e:  # a foreign or truncated file: say which, not a pickle traceback
        raise LMError(f"checkpoint={url!r} is not an InstrumentLM checkpoint ({type(e).__name__}: {e})") from None


def render_settings(cfg: Config) -> dict:
    """Every setting that changes an instrument's files for a given (cue, seed, checkpoint): part of its id."""
    generate = {k: v for k, v in dataclasses.asdict(cfg.generate).items() if k not in ("seed", "batch_size")}
    gate = {k: getattr(cfg.render, k) for k in ("max_tc", "max_mad_pitch", "retries", "on_fail", "audio_format")}
    return {"generate": generate, "duration_s": cfg.data.note_duration_s, "codec": cfg.codec.weights,
            "n_codebooks": cfg.codec.n_codebooks, "clap": cfg.clap.weights, "metrics": dataclasses.asdict(cfg.metrics),
            "render": gate}


def retry_seed(seed: int, attempt: int) -> int:
    """The instrument seed of quality-gate attempt `attempt` (0: the requested seed itself)."""
    return seed if attempt == 0 else int(mix_seed(RETRY_STREAM, seed, attempt))


def passes_gate(scores: dict, max_tc: float, max_mad_pitch: float) -> bool:
    """Whether scores are within the thresholds (0 = no threshold); an all-unvoiced instrument fails a pitch gate."""
    if max_tc and not scores["tc"] <= max_tc:
        return False
    mad = scores["mad_pitch"]
    return not (max_mad_pitch and (mad is None or not mad <= max_mad_pitch))


def _finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None


class Renderer:
    """The LM, codec and CLAP of one render worker, loaded once; `render` writes one instrument per call."""

    def __init__(self, cfg: Config, checkpoint: str):
        from instrumentgen.clap import Clap
        from instrumentgen.codec import Codec
        from instrumentgen.model.lm import InstrumentLM

        self.cfg, self.checkpoint = cfg, checkpoint
        self.lm = InstrumentLM.load(checkpoint, cfg.codec.device)
        self.codec = Codec.load(cfg.codec.weights, cfg.codec.device, cfg.codec.n_codebooks)
        self.clap = Clap.load(cfg.clap) if self.lm.cfg.conditioning == "clap" else None
        self.scale = scales_from_config(cfg.metrics)

    def cue(self, request: RenderRequest) -> InstrumentCue:
        """The request's cue; the reference recording is read and decoded here (`AudioError` if it is not audio)."""
        reference = None
        if request.reference_audio is not None:
            audio, rate = decode_audio(storage.read_bytes(request.reference_audio), request.reference_audio)
            reference = (torch.from_numpy(audio), rate)
        return InstrumentCue(prompt=request.prompt, reference_audio=reference, family=request.family,
                             source=request.source)

    def attempt(self, cue: InstrumentCue, seed: int, candidates: int, slots: list[tuple[int, int]]) -> Instrument:
        """k candidate instruments of `seed` -> one instrument of the notes kept per slot, with its scores."""
        gen = self.cfg.generate
        made = [generate_instrument(self.lm, self.codec, self.clap, cue, dataclasses.replace(gen, seed=s),
                                    self.cfg.data.note_duration_s, slots)
                for s in candidate_seeds(seed, candidates)]
        rate, power = made[0].sample_rate_hz, self.cfg.metrics.tc_power
        if candidates == 1:
            chosen = torch.zeros(len(slots), dtype=torch.long)
        else:
            features = torch.stack([liftered_log_mel(m.audio, rate, self.scale[0], power).flatten(1) for m in made])
            chosen = select_candidates(features)  # [S]
        audio = torch.stack([made[c].audio[s] for s, c in enumerate(chosen.tolist())])  # [S, L]
        plain_tc = tc(made[0].audio, rate, self.scale, power).normalised.item()
        pitch = pitch_report(audio, rate, made[0].pitches, self.cfg.metrics.pitch_estimator)
        embedding = cue_embedding(cue, self.clap, self.lm.cfg)
        cue_score = None if embedding is None else clap_score(embedding, self.clap.embed_audio(audio, rate).cpu())
        scores = {"tc": tc(audio, rate, self.scale, power).normalised.item(), "tc_without_selection": plain_tc,
                  "mad_pitch": _finite(pitch.mad_pitch), "unvoiced": pitch.unvoiced,
                  "clap_score": cue_score,
                  "candidates_kept": np.bincount(chosen.numpy(), minlength=candidates).tolist()}
        return Instrument(audio, made[0].pitches, made[0].velocities, rate,
                          {**made[0].metadata, "seed": seed, "scores": scores})

    @torch.no_grad()
    def render(self, request: RenderRequest, instrument_id: str, url: str, fault: Fault | None = None,
               count: int = 0) -> dict:
        """Render `request` into `url` (its folder); returns {id, line, name, status, reason, scores...}."""
        render_cfg, start = self.cfg.render, time.perf_counter()
        row = {"id": instrument_id, "line": request.line, "name": request.name, "prompt": request.prompt,
               "seed": request.seed}
        cue = self.cue(request)
        attempts = []
        for attempt in range(render_cfg.retries + 1):
            instrument = self.attempt(cue, retry_seed(request.seed, attempt), request.candidates, request.slots())
            attempts.append(instrument)
            if passes_gate(instrument.metadata["scores"], render_cfg.max_tc, render_cfg.max_mad_pitch):
                break
        passed = passes_gate(attempts[-1].metadata["scores"], render_cfg.max_tc, render_cfg.max_mad_pitch)
        kept = attempts[-1] if passed else min(attempts, key=lambda i: i.metadata["scores"]["tc"])
        scores = kept.metadata.pop("scores")
        row.update(scores, attempts=len(attempts), quality="passed" if passed else "flagged")
        if not passed and render_cfg.on_fail == "drop":
            return {**row, "status": "failed", "reason": "quality_gate",
                    "message": f"TC {scores['tc']:.3f} / MAD_pitch {scores['mad_pitch']} over the gate after "
                               f"{len(attempts)} attempts"}
        generate_s = time.perf_counter() - start
        kept.metadata.update(
            id=instrument_id, name=request.name, line=request.line, requested_seed=request.seed,
            variation=request.variation, reference_audio=request.reference_audio, checkpoint=self.checkpoint,
            candidates=request.candidates, attempts=len(attempts), quality=row["quality"], **scores,
            timings={"render_s": round(generate_s, 3)})
        kept.write(url, request.name, render_cfg.audio_format,
                   before_manifest=lambda: fault_point(fault, FAULT_POINT, count))
        return {**row, "status": "rendered", "reason": None, "message": None, "used_seed": kept.metadata["seed"]}
