"""The ingress's background work without Serve: fake Generator and Scorer handles."""

from __future__ import annotations

import asyncio

import pytest

from instrumentgen import storage
from instrumentgen.config import load_config
from serve.instruments import InstrumentService, instrument_id, request_slots
from serve.schema import request_model


class Call:
    def __init__(self, fn):
        self.fn = fn

    async def remote(self, *args):
        return await self.fn(*args)


class Handle:
    def __init__(self, **methods):
        for name, fn in methods.items():
            setattr(self, name, Call(fn))


async def info():
    return {
        "model_id": "m",
        "conditioning": "clap",
        "codec_model_id": "c",
        "clap_model_id": "k",
        "sample_rate_hz": 44100,
    }


def service(tmp_path, shard):
    cfg = load_config("tiny", [f"serve.storage={tmp_path}", "serve.shard_retries=1", "serve.shard_size=4"])

    async def embed(cue):
        return cue

    async def finish(*args):
        raise AssertionError("a failed instrument is never finished")

    return InstrumentService(cfg, Handle(info=info, embed=embed, generate_shard=shard), Handle(finish=finish)), cfg


def test_a_shard_failing_every_try_fails_the_instrument_with_a_reason_and_no_manifest(tmp_path):
    calls = []

    async def shard(job):
        calls.append(job["slots"])
        raise RuntimeError("replica lost")

    async def run():
        svc, cfg = service(tmp_path, shard)
        body = request_model(cfg).model_validate({"prompt": "p", "seed": 1, "keys": {"low": 60, "high": 61}})
        code, answer = await svc.submit(body)
        assert code == 202
        while svc.tasks:
            await asyncio.sleep(0.05)
        return svc.status(answer["id"]), answer

    status, answer = asyncio.run(run())
    assert status["status"] == "failed" and "failed 2 times" in status["error"] and "replica lost" in status["error"]
    assert status["retries"] >= 2 and len(calls) >= 2
    assert not storage.exists(storage.join(str(tmp_path), answer["id"], "manifest.json"))


def test_ids_depend_on_request_seed_and_model_only():
    request = {"prompt": "p", "keys": {"low": 21, "high": 108}}
    first = instrument_id(request, 1, "m")
    assert first == instrument_id(dict(reversed(list(request.items()))), 1, "m") and len(first) == 32
    assert len({first, instrument_id(request, 2, "m"), instrument_id(request, 1, "n")}) == 3


@pytest.mark.parametrize("keys, velocities, count", [((21, 108), [25, 50, 75, 100, 127], 440), ((60, 60), [127], 1)])
def test_request_slots_follow_the_instrument_grid(keys, velocities, count):
    slots = request_slots({"keys": {"low": keys[0], "high": keys[1]}, "velocities": velocities})
    assert len(slots) == count and slots == sorted(slots)
