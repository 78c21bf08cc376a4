"""Shared by the serve tests: an untrained tiny checkpoint, tiny models, and fake deployment handles
that run the same library code as the real deployments in this process (no Ray)."""

from __future__ import annotations

import asyncio

import pytest
import torch

from instrumentgen.config import load_config
from instrumentgen.instruments.generate import InstrumentCue
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.pretrained.clap import Clap
from instrumentgen.pretrained.codec import Codec
from serve import shards
from serve.api import build_api
from serve.instruments import Instruments
from serve.runner import Runner
from serve.store import StatusStore


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    """An untrained tiny InstrumentLM saved like jobs.train exports it; tiny codec/CLAP files made once."""
    cfg = load_config("tiny")
    Codec.load(cfg.codec)  # write the tiny weight files before the replicas race for them
    Clap.load(cfg.clap)
    torch.manual_seed(0)
    return InstrumentLM(cfg.model).save(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))


class Call:
    """`handle.method.remote(*args)` of a fake deployment handle."""

    def __init__(self, fn):
        self.fn = fn

    async def remote(self, *args):
        return await self.fn(*args)


class Handle:
    """A fake deployment handle whose methods are the given coroutine functions."""

    def __init__(self, **methods):
        for name, fn in methods.items():
            setattr(self, name, Call(fn))


class Deployments:
    """Generator and Scorer handles that run the real rendering and finishing code in this process;
    `calls` records (method, slots) of every call, `fail` maps a method to how many calls raise."""

    def __init__(self, cfg, checkpoint):
        self.cfg = cfg
        self.lm = InstrumentLM.load(checkpoint)
        self.codec, self.clap = Codec.load(cfg.codec), Clap.load(cfg.clap)
        self.calls, self.fail, self.fail_slots = [], {}, set()
        self.info = {
            "model_id": self.lm.model_id,
            "conditioning": self.lm.cfg.conditioning,
            "codec_model_id": self.codec.model_id,
            "clap_model_id": self.clap.model_id,
            "sample_rate_hz": self.codec.sample_rate_hz,
        }
        self.generator = Handle(embed=self.embed, generate_shard=self.generate_shard)
        self.scorer = Handle(finish=self.finish)

    def _maybe_fail(self, method):
        if self.fail.get(method, 0) > 0:
            self.fail[method] -= 1
            raise RuntimeError(f"ActorDiedError: the {method} replica died")

    async def embed(self, cue):
        self.calls.append(("embed", None))
        return shards.embed_request_cue(cue, self.clap, self.lm.cfg, self.cfg.serve.max_reference_seconds)

    async def generate_shard(self, job):
        self.calls.append(("generate_shard", list(job.slots)))
        self._maybe_fail("generate_shard")
        if self.fail_slots & set(job.slots):
            raise RuntimeError("ActorDiedError: the replica rendering these slots died")
        render = lambda j: shards.render_and_store(j, self.lm, self.codec, self.cfg, "fake", self.info)  # noqa: E731
        return await shards.render_once(job, render, "fake")

    async def finish(self, *args):
        self.calls.append(("finish", None))
        self._maybe_fail("finish")
        return await asyncio.to_thread(shards.finish, args[0], [tuple(s) for s in args[1]], *args[2:])

    async def identity(self):
        return {"model_id": self.info["model_id"], "conditioning": self.info["conditioning"]}


@pytest.fixture(scope="session")
def deployments(checkpoint):
    """A factory: `deployments(cfg)` -> fresh `Deployments` over the session's tiny checkpoint."""
    return lambda cfg: Deployments(cfg, checkpoint)


class Refusing:
    """Handles whose Generator dies on every shard: instruments fail at once (contract tests need no audio)."""

    def __init__(self):
        self.generator = Handle(embed=self.embed, generate_shard=self.generate_shard)
        self.scorer = Handle(finish=self.generate_shard)

    async def embed(self, cue):
        return InstrumentCue(family=cue.get("family"), source=cue.get("source"))

    async def generate_shard(self, *args):
        raise RuntimeError("ActorDiedError: no Generator in a contract test")

    async def identity(self):
        return {"model_id": "instrumentlm-fake", "conditioning": "clap"}


@pytest.fixture(scope="session")
def make_api():
    """`make_api(cfg, fakes, keys=[], read=None, uploaded=None)` -> the FastAPI app of one ingress replica
    over fake handles."""

    def make(cfg, fakes, keys=(), read=None, uploaded=None):
        store = StatusStore(cfg.serve.storage, cfg.serve.stale_after_s)
        runner = Runner(cfg, store, fakes.generator, fakes.scorer, "fake-ingress")
        return build_api(Instruments(cfg, store, runner, fakes.identity, read, uploaded), cfg, list(keys))

    return make


@pytest.fixture(scope="session")
def refusing():
    return Refusing()


@pytest.fixture(scope="session")
def uvicorn_serving():
    """`with uvicorn_serving(app) as base:` the app on a free 127.0.0.1 port in a thread."""
    import contextlib
    import threading
    import time

    import uvicorn

    from serve.local import free_port

    @contextlib.contextmanager
    def serving(app):
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(30)

    return serving


class Blocking(Refusing):
    """Handles whose Generator never answers: instruments stay in flight (the in-flight cap)."""

    async def generate_shard(self, *args):
        await asyncio.Event().wait()


@pytest.fixture(scope="session")
def blocking():
    return Blocking()
