"""Durable instruments without Ray: the runner, the status store and the shard records, with fake
handles running the real rendering and finishing code on tiny models."""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import numpy as np

from instrumentgen import storage
from instrumentgen.config import load_config
from serve import shards
from serve.instruments import Instruments
from serve.runner import Runner
from serve.schema import request_model
from serve.store import StatusStore

BODY = {"prompt": "warm brass", "seed": 3, "keys": {"low": 60, "high": 63}, "velocities": [50, 100]}  # 8 notes


class Replica:
    """One ingress replica's status store, runner and request handling over `root`."""

    def __init__(self, root, deployments, name, *overrides):
        self.cfg = load_config(
            "tiny",
            [
                f"serve.storage={root}",
                "serve.shard_size=2",
                "serve.shard_retries=1",
                "serve.stale_after_s=3",
                *overrides,
            ],
        )
        self.fakes = deployments(self.cfg) if callable(deployments) else deployments
        self.store = StatusStore(self.cfg.serve.storage, self.cfg.serve.stale_after_s)
        self.runner = Runner(self.cfg, self.store, self.fakes.generator, self.fakes.scorer, name)
        self.instruments = Instruments(self.cfg, self.store, self.runner, self.fakes.identity)

    async def submit(self, body=BODY):
        return await self.instruments.submit(request_model(self.cfg).model_validate(body))

    async def settle(self):
        while self.runner.tasks:
            await asyncio.sleep(0.05)


def files(root, instrument):
    url = storage.join(str(root), instrument)
    codes = np.load(storage.join(url, "codes.npy"))
    notes = {n.rsplit("/", 1)[-1]: storage.read_bytes(n) for n in storage.list_files(storage.join(url, "notes"))}
    return codes, notes


def test_a_handed_over_instrument_is_adopted_and_finishes_with_the_same_codes_and_notes(tmp_path, deployments):
    async def run():
        plain = Replica(tmp_path / "plain", deployments, "p")
        code, answer = await plain.submit()
        await plain.settle()
        assert code == 202 and plain.store.status(answer["id"])["status"] == "done"

        first = Replica(tmp_path / "moved", plain.fakes, "a")
        # The first replica renders one shard; its other calls wait until the redeploy cancels them, so
        # the handover always comes mid-instrument, however fast the shards render.
        rendered_one, never = asyncio.Event(), asyncio.Event()

        async def one_shard_then_wait(job):
            if rendered_one.is_set():
                await never.wait()
            rendered_one.set()
            return await plain.fakes.generate_shard(job)

        first.runner.generator = SimpleNamespace(
            embed=plain.fakes.generator.embed, generate_shard=SimpleNamespace(remote=one_shard_then_wait)
        )
        _, moved = await first.submit()
        url = first.store.url(moved["id"])
        while not storage.list_files(shards.folder(url), shards.RESULT):
            await asyncio.sleep(0.05)
        await first.runner.shutdown()  # a redeploy: hand over, not fail
        left = first.store.status(moved["id"])
        assert left["status"] == "stale" and left["owner"] is None and left["notes_done"] == 2
        stored = shards.progress(url, [(p, v) for p in range(60, 64) for v in (50, 100)]).done

        plain.fakes.calls.clear()
        second = Replica(tmp_path / "moved", plain.fakes, "b")
        assert await second.runner.adopt_stale() == [moved["id"]]
        await second.settle()
        await second.runner.shutdown()
        rendered = [slot for method, slots in plain.fakes.calls if method == "generate_shard" for slot in slots]
        return answer["id"], moved["id"], stored, rendered, second.store.status(moved["id"])

    plain_id, moved_id, stored, rendered, status = asyncio.run(run())
    assert plain_id == moved_id and status["status"] == "done" and status["notes_done"] == 8
    assert stored and not stored & set(rendered)  # what was stored before the handover is never rendered again
    claims = shards.progress(str(tmp_path / "moved" / moved_id), []).claims
    assert sorted(claims.values()) == [1, 1, 1, 1]  # 4 shards of 2 slots, each rendered exactly once
    (codes, notes), (moved_codes, moved_notes) = (
        files(tmp_path / "plain", plain_id),
        files(tmp_path / "moved", moved_id),
    )
    np.testing.assert_array_equal(codes, moved_codes)
    assert notes.keys() == moved_notes.keys() and len(notes) == 8
    assert all(notes[name] == moved_notes[name] for name in notes)  # same shards, same shapes: same bytes


def test_a_lost_scorer_is_retried_and_a_lapsed_lease_reads_stale(tmp_path, deployments):
    async def run():
        replica = Replica(tmp_path, deployments, "a")
        replica.fakes.fail["finish"] = 1
        _, answer = await replica.submit()
        await replica.settle()
        status = replica.store.status(answer["id"])
        stale = {**replica.store.raw(answer["id"]), "status": "running", "lease_until": time.time() - 1}
        replica.store.write(stale)
        storage.filesystem(str(tmp_path))[0].rm(str(tmp_path / answer["id"] / "manifest.json"))
        return status, replica.store.status(answer["id"]), replica.fakes.calls

    status, later, calls = asyncio.run(run())
    assert status["status"] == "done" and status["retries"] == 1 and status["notes_done"] == 8
    assert [method for method, _ in calls].count("finish") == 2
    assert later["status"] == "stale"


def test_a_failed_instrument_keeps_its_notes_and_a_repost_renders_only_the_missing_slots(tmp_path, deployments):
    async def run():
        replica = Replica(tmp_path, deployments, "a")
        replica.fakes.fail_slots = {(62, 50)}
        code, answer = await replica.submit()
        await replica.settle()
        failed = replica.store.status(answer["id"])
        replica.fakes.fail_slots, replica.fakes.calls[:] = set(), []
        again = await replica.submit()
        await replica.settle()
        await replica.runner.shutdown()
        return failed, again, replica.store.status(answer["id"]), replica.fakes.calls

    failed, again, done, calls = asyncio.run(run())
    assert failed["status"] == "failed" and failed["notes_done"] == 6
    assert "generate_shard failed 2 times" in failed["error"] and "ActorDiedError" in failed["error"]
    assert again[0] == 202 and done["status"] == "done" and done["notes_done"] == 8
    assert [slots for method, slots in calls if method == "generate_shard"] == [[(62, 50), (62, 100)]]
    assert [method for method, _ in calls].count("embed") == 0  # the embedded cue was stored


def test_finishing_again_after_a_cut_off_finish_gives_the_same_manifest(tmp_path, deployments):
    async def run():
        replica = Replica(tmp_path, deployments, "a")
        _, answer = await replica.submit({**BODY, "candidates": 2})
        await replica.settle()
        return answer["id"], replica

    instrument, replica = asyncio.run(run())
    url = replica.store.url(instrument)
    manifest = storage.read_bytes(storage.join(url, "manifest.json"))
    assert not storage.exists(storage.join(url, "candidates"))  # staging removed: a cut-off retry must restage
    storage.filesystem(url)[0].rm(storage.join(url, "manifest.json"))
    order = [(p, v) for p in range(60, 64) for v in (50, 100)]
    metadata = {k: v for k, v in storage.read_json(storage.join(url, "status.json")).items() if k == "id"}
    again = shards.finish(url, order, {**metadata}, "wav24", replica.cfg.data.note_duration_s)
    assert again.about["tc"] == storage.read_json(storage.join(url, "manifest.json"))["tc"]
    assert [n.candidate for n in again.notes] == [n["candidate"] for n in json.loads(manifest)["notes"]]


def test_missing_runs_keep_slot_order_around_stored_and_claimed_slots():
    order = [(p, v) for p in range(60, 64) for v in (50, 100)]
    taken = {order[2], order[3], order[6]}
    assert shards.missing_runs(order, taken, 3) == [order[0:2], order[4:6], order[7:8]]
    assert shards.missing_runs(order, set(), 3) == [order[0:3], order[3:6], order[6:8]]
    assert shards.slots_of_key(shards.shard_key(order[4:6]), order) == order[4:6]
    assert shards.slots_of_key("070_v050_n2", order) == []
