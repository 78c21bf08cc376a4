"""Scorer deployment: finishes an instrument from the shard results in storage (selection, TC,
MAD_pitch, presets, zip, manifest last), off the ingress so its event loop stays responsive."""

from __future__ import annotations

import asyncio

from ray import serve

from serve.shards import finish


@serve.deployment
class Scorer:
    """Runs `serve.shards.finish` in a worker thread; finishing is idempotent, so a call whose replica
    died is simply made again."""

    async def finish(self, url: str, slots: list, metadata: dict, audio_format: str, duration_s: float) -> dict:
        """The instrument at `url` (slot order `slots`) -> its manifest (written last)."""
        return await asyncio.to_thread(finish, url, [tuple(s) for s in slots], metadata, audio_format, duration_s)
