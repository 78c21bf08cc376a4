"""Ingress deployment: the HTTP API of `serve.api`, its instruments' status in storage (`serve.store`)
and their background work (`serve.runner`), which outlives this replica: another replica, or this
one restarted, adopts what it leaves."""

import asyncio
import os

from fastapi import FastAPI
from ray import serve

from instrumentgen.config import Config
from serve.api import build_api
from serve.instruments import Instruments, model_identity
from serve.runner import Runner
from serve.store import StatusStore

API_KEYS_ENV = "INSTRUMENTGEN_API_KEYS"  # comma-separated; added to serve.api_keys


def api_keys(cfg: Config) -> list[str]:
    """The accepted keys: `serve.api_keys` and those of $INSTRUMENTGEN_API_KEYS (empty: no key needed)."""
    extra = [key.strip() for key in os.environ.get(API_KEYS_ENV, "").split(",") if key.strip()]
    return [*cfg.serve.api_keys, *extra]


@serve.deployment
@serve.ingress()
class Ingress:
    """The HTTP entry: validates, answers at once, runs each instrument in the background (shards to the
    Generator deployment, then the Scorer), adopts instruments whose owner's lease has ended."""

    def __init__(self, generator, scorer, cfg: Config):
        self.cfg = cfg
        replica = serve.get_replica_context().replica_id.unique_id
        self.store = StatusStore(cfg.serve.storage, cfg.serve.stale_after_s)
        self.runner = Runner(cfg, self.store, generator, scorer, replica)
        self._identity: asyncio.Future | None = None
        self.instruments = Instruments(cfg, self.store, self.runner, self.identity)
        try:  # the checkpoint is read and the adoption scan starts now, not on the first request
            asyncio.get_running_loop()
            self._start()
        except RuntimeError:
            pass

    def _start(self) -> None:
        self.runner.ensure_started()
        if self._identity is None:
            self._identity = asyncio.ensure_future(asyncio.to_thread(model_identity, self.cfg.serve.checkpoint))

    async def identity(self) -> dict:
        """{model_id, conditioning} of the served checkpoint, read once per replica."""
        self._start()
        return await asyncio.shield(self._identity)

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.instruments, self.cfg, api_keys(self.cfg))

    async def check_health(self) -> None:
        self._start()

    async def __del__(self):
        await self.runner.shutdown()
