"""Scorer deployment: gathers the shards' results into the finished instrument (selection, TC,
MAD_pitch, presets, zip, manifest last), off the ingress so its event loop stays responsive."""

from __future__ import annotations

import asyncio

from ray import serve

from instrumentgen.instruments.slices import ShardResult, finish_instrument


@serve.deployment
class Scorer:
    """Runs `instrumentgen.instruments.slices.finish_instrument` in a worker thread."""

    async def finish(
        self,
        url: str,
        shards: list[ShardResult],
        metadata: dict,
        audio_format: str,
        sample_rate_hz: int,
        num_samples: int,
    ) -> dict:
        """The shards of one instrument, in slot order -> its manifest (written last)."""
        return await asyncio.to_thread(
            finish_instrument, url, shards, metadata, audio_format, sample_rate_hz, num_samples
        )
