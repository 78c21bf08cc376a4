"""Generator deployment: holds the LM, the codec and CLAP; embeds a cue once, renders shards of slots.

Each replica writes the notes it decodes straight to storage (`instrumentgen.instruments.slices`) and
stores its shard's result beside them (`serve.shards`), so the work outlives the ingress that asked
for it. Torch work runs in a worker thread so the replica's event loop keeps answering health checks.
"""

from __future__ import annotations

import asyncio

import torch
from ray import serve

from instrumentgen.config import Config
from instrumentgen.instruments.generate import InstrumentCue
from instrumentgen.pretrained.loading import device_for, load_models
from serve import shards
from serve.shards import ShardJob


@serve.deployment
class Generator:
    """One replica: models loaded once, one shard at a time (`serve.max_ongoing_requests`)."""

    def __init__(self, cfg: Config):
        torch.set_num_threads(max(1, round(cfg.serve.num_cpus)))
        device = device_for(cfg.serve.num_gpus, "serve.num_gpus", cfg.codec.device)
        self.cfg = cfg
        self.lm, self.codec, self.clap = load_models(cfg, cfg.serve.checkpoint, device)
        self.model_id = self.lm.model_id
        self.replica = serve.get_replica_context().replica_id.unique_id

    def info(self) -> dict:
        """The models this replica runs: stored with every shard result (the manifest names them)."""
        return {
            "model_id": self.model_id,
            "conditioning": self.lm.cfg.conditioning,
            "codec_model_id": self.codec.model_id,
            "clap_model_id": getattr(self.clap, "model_id", None),
            "sample_rate_hz": self.codec.sample_rate_hz,
        }

    async def embed(self, cue: dict) -> InstrumentCue:
        """{prompt | reference_audio (bytes) | family/source} -> the cue every shard uses (CLAP run once)."""
        return await asyncio.to_thread(
            shards.embed_request_cue, cue, self.clap, self.lm.cfg, self.cfg.serve.max_reference_seconds
        )

    async def generate_shard(self, job: ShardJob) -> dict:
        """Render the slots of `job` unless stored or being rendered (`serve.shards.render_once`)."""
        return await shards.render_once(job, self._render, self.replica)

    def _render(self, job: ShardJob) -> None:
        shards.render_and_store(job, self.lm, self.codec, self.cfg, self.replica, self.info())

    def check_health(self) -> None:
        """Serve restarts a replica whose models are gone (a failed CUDA context, say)."""
        if self.lm is None or self.codec is None:
            raise RuntimeError("models are not loaded")
