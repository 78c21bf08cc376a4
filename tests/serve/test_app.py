"""The Serve application end to end on 127.0.0.1: tiny config, two Generator replicas, a real HTTP client.

One undisturbed instrument of every key in two velocity layers (176 notes in 8 shards of 22, equal to
direct generation; the demo's test serves a whole 440-note instrument), then the same instrument again
with its folder removed and the app disturbed (marked slow): SIGKILL of the Ingress replica's
process, SIGKILL of the Scorer while it finishes, a redeploy. Each must end
with the same codes and the same note files, byte for byte (the same shards run: same shapes).
One short run of the issue-26 routes: an uploaded recording, a regenerated key, the library.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import time

import numpy as np
import pytest
import requests
from ray import serve

from instrumentgen import storage
from instrumentgen.config import load_config
from instrumentgen.instruments.generate import InstrumentCue, generate_codes, instrument_cues
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.pretrained.clap import Clap
from instrumentgen.pretrained.codec import Codec
from serve import shards
from serve.local import replica_pid, serving

BODY = {"prompt": "warm analog brass", "seed": 11, "velocities": [50, 100]}  # 88 keys x 2: 8 shards of 22
NOTES = 176


@pytest.fixture(scope="module")
def app(ray_local, checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("instruments")
    overrides = [
        f"serve.checkpoint={checkpoint}",
        f"serve.storage={root}",
        "serve.min_replicas=2",
        "serve.max_replicas=2",
        "serve.shard_size=22",
        "serve.shard_retries=3",
        "serve.stale_after_s=3",  # the lease: a dead ingress's instruments are adopted within ~5 s
        f"serve.library={root / 'library'}",
    ]
    cfg = load_config("tiny", overrides)
    with serving(cfg) as base:
        yield base, cfg, str(root)


def status_of(base, instrument):
    """GET the status; None while no ingress answers (one was just killed)."""
    try:
        answer = requests.get(f"{base}/v1/instruments/{instrument}", timeout=10)
        return answer.json() if answer.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def wait(base, instrument, until, timeout_s=300):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        status = status_of(base, instrument)
        if status is not None and until(status):
            return status
        time.sleep(0.02)
    raise TimeoutError(f"{instrument}: {status_of(base, instrument)}")


def finished(status):
    assert status["status"] != "failed", status
    return status["status"] == "done"


def record(root, instrument):
    """(codes, {note file: bytes}, claims per shard) of a finished instrument."""
    url = storage.join(root, instrument)
    codes = np.load(storage.join(url, "codes.npy"))
    notes = {n.rsplit("/", 1)[-1]: storage.read_bytes(n) for n in storage.list_files(storage.join(url, "notes"))}
    return codes, notes, shards.progress(url, []).claims


@pytest.fixture(scope="module")
def undisturbed(app):
    base, _, root = app
    accepted = requests.post(f"{base}/v1/instruments", json=BODY, timeout=60)
    assert accepted.status_code == 202, accepted.text
    status = wait(base, accepted.json()["id"], finished)
    return status, record(root, status["id"])


def test_a_full_instrument_equals_direct_generation_and_used_both_replicas(app, undisturbed):
    base, cfg, root = app
    status, (codes, notes, claims) = undisturbed
    assert status["notes_total"] == status["notes_done"] == NOTES and len(status["notes"]) == NOTES
    assert len(status["workers"]) == 2 and len(notes) == NOTES and sorted(claims.values()) == [1] * 8
    manifest = storage.read_json(storage.join(root, status["id"], "manifest.json"))
    assert manifest["tc"] > 0 and "mad_pitch" in manifest and len(manifest["notes"]) == NOTES
    for name in ("sfz", "dspreset", "bundle"):
        answer = requests.get(f"{base}{status[name]}", timeout=60)
        assert answer.status_code == 200 and int(answer.headers["Content-Length"]) == len(answer.content) > 100

    lm = InstrumentLM.load(cfg.serve.checkpoint)
    codec, clap = Codec.load(cfg.codec), Clap.load(cfg.clap)
    cue = InstrumentCue(prompt=BODY["prompt"])
    gen = dataclasses.replace(cfg.generate, seed=BODY["seed"], batch_size=cfg.serve.shard_size)  # a shard's shapes
    slots = shards.request_slots({"keys": {"low": 21, "high": 108}, "velocities": BODY["velocities"]})
    cues = instrument_cues(cue, clap.embed_text([cue.prompt])[0], slots)
    direct = generate_codes(lm, cues, codec.frames_for(cfg.data.note_duration_s), gen)
    np.testing.assert_array_equal(codes, direct.numpy())
    assert status["model_id"] == lm.model_id == manifest["model_id"]


def again(app, undisturbed, disturb):
    """The undisturbed instrument rendered again from nothing, `disturb(base, id)` called meanwhile;
    -> the final status, after checking codes, notes and claims against the undisturbed run."""
    base, _, root = app
    status, (codes, notes, _) = undisturbed
    shutil.rmtree(os.path.join(root, status["id"]))
    accepted = requests.post(f"{base}/v1/instruments", json=BODY, timeout=60)
    assert accepted.status_code == 202 and accepted.json()["id"] == status["id"], accepted.text
    disturb(base, status["id"])
    final = wait(base, status["id"], finished)
    again_codes, again_notes, claims = record(root, status["id"])
    np.testing.assert_array_equal(again_codes, codes)
    assert again_notes.keys() == notes.keys() and all(again_notes[n] == notes[n] for n in notes)
    assert sorted(claims.values()) == [1] * 8  # no shard, so no note, generated twice
    return final


@pytest.mark.slow
def test_sigkill_of_the_ingress_mid_instrument_is_adopted_and_completes(app, undisturbed, ray_local):
    def kill_ingress(base, instrument):
        wait(base, instrument, lambda s: s["notes_done"] >= NOTES // 4)
        os.kill(replica_pid("Ingress"), signal.SIGKILL)
        stranded = wait(base, instrument, lambda s: s["status"] in ("stale", "running", "done"))
        assert stranded["status"] in ("stale", "running", "done")

    final = again(app, undisturbed, kill_ingress)
    assert final["notes_done"] == NOTES


@pytest.mark.slow
def test_sigkill_of_the_scorer_mid_finish_is_retried_and_completes(app, undisturbed, ray_local):
    def kill_scorer(base, instrument):
        url = storage.join(app[2], instrument)
        pid = replica_pid("Scorer")
        deadline = time.time() + 300
        while not storage.exists(storage.join(url, "codes.npy")) and time.time() < deadline:
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)
        assert not storage.exists(storage.join(url, "manifest.json"))  # killed while finishing

    final = again(app, undisturbed, kill_scorer)
    assert final["retries"] >= 1


@pytest.mark.slow
def test_a_redeploy_mid_instrument_hands_over_and_completes(app, undisturbed):
    _, cfg, _ = app

    def redeploy(base, instrument):
        from serve.app import build_app

        wait(base, instrument, lambda s: s["notes_done"] >= NOTES // 4)
        changed = dataclasses.replace(cfg, serve=dataclasses.replace(cfg.serve, max_instruments_in_flight=5))
        serve.run(build_app(changed), name="instrumentgen", route_prefix="/")

    again(app, undisturbed, redeploy)


def test_upload_regenerate_and_library_through_serve(app):
    import io
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import soundfile as sf

    from instrumentgen.instruments.library import INDEX_COLUMNS

    base, _, root = app
    buffer = io.BytesIO()
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * np.arange(8000) / 16000), 16000, format="WAV")
    settings = {"seed": 2, "keys": {"low": 60, "high": 61}, "velocities": [50, 100]}
    files = {"reference_audio": ("cue.wav", buffer.getvalue()), "request": (None, json.dumps(settings))}
    accepted = requests.post(f"{base}/v1/instruments", files=files, timeout=60)
    assert accepted.status_code == 202, accepted.text
    parent = wait(base, accepted.json()["id"], finished)
    assert parent["status"] == "done" and len(parent["notes"]) == 4

    child_id = requests.post(
        f"{base}/v1/instruments/{parent['id']}/regenerate", json={"keys": [61], "seed": 9}, timeout=60
    ).json()["id"]
    child = wait(base, child_id, finished)
    assert child["status"] == "done" and child["parent"] == parent["id"]
    note = lambda i, name: open(os.path.join(root, i, "notes", name), "rb").read()  # noqa: E731
    assert note(child_id, "060_v050.wav") == note(parent["id"], "060_v050.wav")

    library = os.path.join(root, "library")
    shutil.copytree(os.path.join(root, child_id), os.path.join(library, "abcdefabcdefabcd"))
    row = {"id": "abcdefabcdefabcd", "name": "child", "prompt": "regenerated", "tc": 0.1}
    table = pa.Table.from_pylist([{k: row.get(k) for k in INDEX_COLUMNS}], schema=pa.schema(INDEX_COLUMNS))
    pq.write_table(table, os.path.join(library, "index.parquet"))
    listed = requests.get(f"{base}/v1/library", params={"text": "REGEN", "sort": "tc"}, timeout=30).json()
    assert listed["total"] == 1 and listed["entries"][0]["id"] == "abcdefabcdefabcd"
    opened = requests.get(f"{base}{listed['entries'][0]['status_url']}", timeout=30).json()
    got = requests.get(f"{base}{opened['notes'][0]['url']}", timeout=30)
    assert got.status_code == 200 and got.content == note(child_id, "060_v050.wav")
