"""Generator deployment: holds the LM, the codec and CLAP; embeds a cue once, renders shards of slots.

Each replica writes the notes it decodes straight to storage (`instrumentgen.instruments.slices`) and
returns only codes, TC features and pitch estimates. Torch work runs in a worker thread so the
replica's event loop keeps answering health checks and queue probes.
"""

from __future__ import annotations

import asyncio
import dataclasses

import torch
from ray import serve

from instrumentgen.audio import decode_audio
from instrumentgen.config import Config
from instrumentgen.instruments.generate import InstrumentCue
from instrumentgen.instruments.slices import ShardResult, embedded_cue, render_shard
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.pretrained.clap import Clap
from instrumentgen.pretrained.codec import Codec


@serve.deployment
class Generator:
    """One replica: models loaded once, one shard at a time (`serve.max_ongoing_requests`)."""

    def __init__(self, cfg: Config):
        torch.set_num_threads(max(1, round(cfg.serve.num_cpus)))
        device = "cuda" if cfg.serve.num_gpus > 0 and torch.cuda.is_available() else cfg.codec.device
        self.cfg = cfg
        self.lm = InstrumentLM.load(cfg.serve.checkpoint, device)
        self.codec = Codec.load(cfg.codec.weights, device, cfg.codec.n_codebooks)
        uses_clap = self.lm.cfg.conditioning == "clap"
        self.clap = Clap.load(dataclasses.replace(cfg.clap, device=device)) if uses_clap else None
        self.model_id = self.lm.model_id
        self.replica = serve.get_replica_context().replica_id.unique_id

    def info(self) -> dict:
        """What the ingress needs before accepting a request: the model id (part of instrument ids) and
        its conditioning (a metadata model refuses prompts)."""
        return {
            "model_id": self.model_id,
            "conditioning": self.lm.cfg.conditioning,
            "codec_model_id": self.codec.model_id,
            "clap_model_id": getattr(self.clap, "model_id", None),
            "sample_rate_hz": self.codec.sample_rate_hz,
        }

    def _embed(self, cue: dict) -> InstrumentCue:
        reference = None
        if cue.get("reference_audio") is not None:
            audio, rate = decode_audio(cue["reference_audio"], "reference_audio_url")
            reference = (torch.from_numpy(audio[: round(self.cfg.serve.max_reference_seconds * rate)]), rate)
        full = InstrumentCue(
            prompt=cue.get("prompt"), reference_audio=reference, family=cue.get("family"), source=cue.get("source")
        )
        return embedded_cue(full, self.clap, self.lm.cfg)

    async def embed(self, cue: dict) -> InstrumentCue:
        """{prompt | reference_audio (bytes) | family/source} -> the cue every shard uses (CLAP run once)."""
        return await asyncio.to_thread(self._embed, cue)

    async def generate_shard(self, job: dict) -> ShardResult:
        """job: cue, gen (GenerateConfig), slots, url, format, candidates -> `ShardResult` (notes written)."""
        return await asyncio.to_thread(
            render_shard,
            self.lm,
            self.codec,
            None,
            cue=job["cue"],
            gen_cfg=job["gen"],
            duration_s=self.cfg.data.note_duration_s,
            slots=job["slots"],
            url=job["url"],
            audio_format=job["format"],
            candidates=job["candidates"],
            metrics_cfg=self.cfg.metrics,
            worker=self.replica,
        )

    def check_health(self) -> None:
        """Serve restarts a replica whose models are gone (a failed CUDA context, say)."""
        if self.lm is None or self.codec is None:
            raise RuntimeError("models are not loaded")
