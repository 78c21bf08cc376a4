"""The Serve application end to end on 127.0.0.1: tiny config, two Generator replicas, a real HTTP client."""

from __future__ import annotations

import concurrent.futures
import http.client
import http.server
import io
import json
import random
import threading
import time
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
import soundfile as sf

from instrumentgen import storage
from instrumentgen.config import load_config
from instrumentgen.instruments.generate import InstrumentCue, generate_codes, instrument_cues
from instrumentgen.model.lm import InstrumentLM
from instrumentgen.pretrained.clap import Clap
from instrumentgen.pretrained.codec import Codec
from serve.local import serving, wait_done

API_KEY = "test-key-123"
KEY = {"X-API-Key": API_KEY}
SMALL = {"keys": {"low": 60, "high": 63}, "velocities": [50, 100]}  # 8 notes: one shard


@pytest.fixture(scope="module")
def app(ray_local, checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("instruments")
    overrides = [
        f"serve.checkpoint={checkpoint}",
        f"serve.storage={root}",
        "serve.min_replicas=2",
        "serve.max_replicas=2",
        "serve.shard_size=55",
        f"serve.api_keys=[{API_KEY}]",
        "serve.max_instruments_in_flight=2",
        "serve.shard_retries=2",
        "serve.max_reference_seconds=2",
        "serve.max_reference_bytes=1000000",
    ]
    cfg = load_config("tiny", overrides)
    with serving(cfg) as base:
        yield base, cfg, str(root)


def post(base, body, headers=KEY):
    return requests.post(f"{base}/v1/instruments", json=body, headers=headers, timeout=60)


def done(base, body):
    accepted = post(base, body)
    assert accepted.status_code == 202, accepted.text
    status = wait_done(base, accepted.json()["id"], headers=KEY)
    assert status["status"] == "done", status
    return status


def test_a_full_instrument_equals_direct_generation_and_used_both_replicas(app):
    base, cfg, root = app
    status = done(base, {"prompt": "warm analog brass", "seed": 11})
    assert status["notes_total"] == status["notes_done"] == 440 and len(status["notes"]) == 440
    assert len(status["workers"]) == 2  # 8 shards of 55 slots, served by both Generator replicas
    url = storage.join(root, status["id"])
    assert len(storage.list_files(storage.join(url, "notes"), ".wav")) == 440
    manifest = storage.read_json(storage.join(url, "manifest.json"))
    assert manifest["tc"] > 0 and "mad_pitch" in manifest and len(manifest["notes"]) == 440
    assert all(isinstance(n["gain"], float) and "pitch_error_semitones" in n for n in manifest["notes"])
    for name in ("sfz", "dspreset", "bundle"):
        answer = requests.get(f"{base}{status[name]}", headers=KEY, timeout=60)
        assert answer.status_code == 200 and len(answer.content) > 100
    codes = np.load(io.BytesIO(requests.get(f"{base}{status['codes']}", headers=KEY, timeout=60).content))

    lm = InstrumentLM.load(cfg.serve.checkpoint)
    codec, clap = Codec.load(cfg.codec), Clap.load(cfg.clap)
    cue = InstrumentCue(prompt="warm analog brass")
    gen = cfg.generate.__class__(**{**vars(cfg.generate), "seed": 11})
    direct = generate_codes(
        lm, instrument_cues(cue, clap.embed_text([cue.prompt])[0]), codec.frames_for(cfg.data.note_duration_s), gen
    )
    np.testing.assert_array_equal(codes, direct.numpy())
    assert status["model_id"] == lm.model_id


def test_the_same_request_twice_is_one_instrument(app):
    base, _, root = app
    body = {"prompt": "glassy bell", "seed": 5, **SMALL}
    first = done(base, body)
    manifest = storage.join(root, first["id"], "manifest.json")
    written = storage.filesystem(manifest)[0].modified(manifest)
    again = post(base, {**body, "prompt": "  glassy   bell "})  # the same after normalisation
    assert again.status_code == 200 and again.json()["id"] == first["id"] and again.json()["status"] == "done"
    assert requests.get(f"{base}/healthz", timeout=10).json()["in_flight"] == 0
    assert storage.filesystem(manifest)[0].modified(manifest) == written
    drawn = post(base, {"prompt": "glassy bell", **SMALL}).json()  # no seed: a new instrument, seed reported
    assert drawn["id"] != first["id"] and isinstance(drawn["seed"], int)
    wait_done(base, drawn["id"], headers=KEY)


def test_consistency_selection_lowers_tc(app):
    base, _, _ = app
    body = {"prompt": "dark plucked bass", "seed": 3, "keys": {"low": 40, "high": 51}, "velocities": [50, 127]}
    plain = done(base, {**body, "candidates": 1})
    selected = done(base, {**body, "candidates": 3})
    assert selected["tc_without_selection"] == pytest.approx(plain["tc"], rel=1e-5)
    assert selected["tc"] < plain["tc"]


def malformed_requests(cfg) -> list:
    """At least 300 bodies that are each invalid in one or two ways (never accidentally valid)."""
    base = {"prompt": "p", "seed": 1, **SMALL}
    bad = {
        "prompt": [None, "", "   ", "x" * (cfg.serve.max_prompt_chars + 1), 123, [], {}, True],
        "seed": [-1, 2**32, 1.5, "7", True, [1]],
        "cfg_coef": [-0.1, 20.5, "3", None, [3]],
        "top_k": [-1, cfg.model.card + 1, 2.5, "50", None],
        "temperature": [-1, 10.5, "1", None],
        "keys": [
            {"low": 20},
            {"high": 109},
            {"low": 70, "high": 60},
            {"low": "60"},
            [21, 108],
            {"low": 60, "x": 1},
            5,
            None,
            {"low": 60.0},
        ],
        "velocities": [[], [60], [25, 25], [25, 50, 75, 100, 127, 25], "25", [True], [25.0], None],
        "candidates": [0, cfg.serve.max_candidates + 1, -1, 1.5, "2", None],
        "format": ["mp3", "", 1, None, "WAV24"],
        "family": ["kazoo", 1, "brass"],  # "brass" with a prompt: two cues
        "source": ["wood", 2, "acoustic"],
        "reference_audio_url": ["file:///etc/passwd", "/etc/passwd", "ftp://x/y.wav", "", 5, "http://a b"],
        "bogus": [1, None, "x"],
        "Prompt": ["p"],
    }
    singles = [{**base, field: value} for field, values in bad.items() for value in values]
    singles += [{}, {"seed": 1}, {"family": None, "source": None}]
    rng = random.Random(0)
    pairs = [
        {**rng.choice(singles), **{k: v for k, v in rng.choice(singles).items() if k not in base}} for _ in range(250)
    ]
    raw = [
        "",
        "{",
        "[]",
        "null",
        "1",
        '"prompt"',
        '{"prompt": }',
        "\x00\x01",
        "{'prompt': 'p'}",
        json.dumps(base)[:-1],
        "[" * 1000,
    ]
    return singles + pairs + [("raw", text) for text in raw]


def test_fuzzing_gets_only_4xx_json_and_a_valid_request_still_works(app):
    base, cfg, _ = app
    cases = malformed_requests(cfg)
    assert len(cases) >= 300
    answers = []
    for case in cases:
        if isinstance(case, tuple):
            answers.append(
                requests.post(
                    f"{base}/v1/instruments",
                    data=case[1].encode(),
                    timeout=30,
                    headers={**KEY, "Content-Type": "application/json"},
                )
            )
        else:
            answers.append(post(base, case))
    answers += [
        requests.get(f"{base}/v1/instruments/{bad}", headers=KEY, timeout=30)
        for bad in ("x", "0" * 31, "Z" * 32, "0" * 33, "%00", "..")
    ]
    answers.append(requests.put(f"{base}/v1/instruments", json={}, headers=KEY, timeout=30))
    for case, answer in zip(cases, answers):
        assert 400 <= answer.status_code < 500, (case, answer.status_code, answer.text)
        assert answer.headers["content-type"].startswith("application/json"), (case, answer.text)
        assert answer.json()
    fields = {answer.json().get("field") for answer in answers[: len(cases)]}
    assert {"prompt", "seed", "keys.low", "velocities", "candidates", "format", "bogus"} <= fields
    assert post(base, {"prompt": "after the storm", "seed": 2, **SMALL}).status_code == 202


def test_bad_values_name_the_field_and_what_is_allowed(app):
    base, cfg, _ = app
    answer = post(base, {"prompt": "p", "candidates": 9})
    assert answer.status_code == 422 and answer.json()["field"] == "candidates"
    assert answer.json()["detail"][0]["allowed"] == {"le": cfg.serve.max_candidates}
    answer = post(base, {"prompt": "p", "family": "brass"})
    assert "allowed: exactly one of prompt, reference_audio_url, or family/source" in answer.json()["error"]
    answer = post(base, {"prompt": "p", "keys": {"low": 70, "high": 60}})
    assert answer.json()["field"] == "keys" and "allowed: 21 <= low <= high <= 108" in answer.json()["error"]
    big = requests.post(
        f"{base}/v1/instruments",
        data=b"{" + b" " * 70_000 + b"}",
        timeout=30,
        headers={**KEY, "Content-Type": "application/json"},
    )
    assert big.status_code == 413 and big.json()["field"] == "body"


def test_api_keys_are_required(app):
    base, _, _ = app
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}):
        answer = post(base, {"prompt": "p", **SMALL}, headers=headers)
        assert answer.status_code == 401 and answer.json()["field"] == "authorization"
    assert post(base, {"prompt": "p", "seed": 9, **SMALL}, headers={"Authorization": f"Bearer {API_KEY}"}).ok
    assert requests.get(f"{base}/healthz", timeout=10).ok and requests.get(f"{base}/", timeout=10).ok


@pytest.fixture
def reference_server(tmp_path):
    """Files of tmp_path over HTTP on 127.0.0.1 (a client's reference recordings)."""

    def wav(seconds):
        buffer = io.BytesIO()
        t = np.arange(int(seconds * 16000)) / 16000
        sf.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), 16000, format="WAV")
        return buffer.getvalue()

    (tmp_path / "short.wav").write_bytes(wav(1.0))
    (tmp_path / "long.wav").write_bytes(wav(3.0))
    (tmp_path / "text.wav").write_bytes(b"this is not audio" * 10)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_reference_audio_is_fetched_and_checked(app, reference_server):
    base, _, _ = app
    for name, words in (
        ("text.wav", "not readable audio"),
        ("long.wav", "allowed: at most 2.0 s"),
        ("missing.wav", "not reachable"),
    ):
        answer = post(base, {"reference_audio_url": f"{reference_server}/{name}", **SMALL})
        assert answer.status_code == 422 and answer.json()["field"] == "reference_audio_url", answer.text
        assert words in answer.json()["error"]
    closed = post(base, {"reference_audio_url": "http://127.0.0.1:9/x.wav", **SMALL})
    assert closed.status_code == 422 and "not reachable" in closed.json()["error"]
    status = done(base, {"reference_audio_url": f"{reference_server}/short.wav", "seed": 4, **SMALL})
    assert status["request"]["reference_audio_url"].startswith("sha256:")  # the content, never the URL, names it


def test_overload_gets_503_and_the_rest_completes(app):
    base, _, _ = app
    bodies = [
        {"prompt": f"overload {i}", "seed": 100 + i, "keys": {"low": 60, "high": 71}, "velocities": [50, 100]}
        for i in range(6)
    ]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda body: post(base, body), bodies))
    codes = [answer.status_code for answer in answers]
    assert codes.count(503) >= 1 and codes.count(202) >= 1 and set(codes) <= {202, 503}, codes
    for answer in answers:
        if answer.status_code == 503:
            assert int(answer.headers["Retry-After"]) > 0 and "max_instruments_in_flight" in answer.json()["error"]
        else:
            assert wait_done(base, answer.json()["id"], headers=KEY)["status"] == "done"
    assert post(base, bodies[-1]).status_code in (200, 202)  # serves normally afterwards
    wait_done(base, post(base, bodies[-1]).json()["id"], headers=KEY)


def test_a_killed_generator_replica_is_survived(app, ray_local):
    base, _, root = app
    body = {"prompt": "survivor", "seed": 21, "keys": {"low": 21, "high": 44}, "velocities": [25, 50, 75, 100, 127]}
    accepted = post(base, body).json()  # 120 notes: 3 shards on the 2 replicas
    time.sleep(1.0)
    replicas = [a for a in ray_local.util.list_named_actors(all_namespaces=True) if "#Generator#" in a["name"]]
    ray_local.kill(ray_local.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    status = wait_done(base, accepted["id"], headers=KEY)
    url = storage.join(root, accepted["id"])
    if status["status"] == "done":
        manifest = storage.read_json(storage.join(url, "manifest.json"))
        assert len(manifest["notes"]) == 120
        assert all(storage.exists(storage.join(url, note["file"])) for note in manifest["notes"])
        assert status["retries"] >= 1
    else:
        assert status["error"] and not storage.exists(storage.join(url, "manifest.json"))
    deadline = time.time() + 120  # Serve replaces the replica; the app serves normally again
    while (
        time.time() < deadline
        and len([a for a in ray_local.util.list_named_actors(all_namespaces=True) if "#Generator#" in a["name"]]) < 2
    ):
        time.sleep(1)
    assert done(base, {"prompt": "after the kill", "seed": 22, **SMALL})["notes_done"] == 8


def test_files_outside_an_instrument_are_refused(app):
    base, _, _ = app
    status = done(base, {"prompt": "traversal", "seed": 8, **SMALL})
    prefix = f"/v1/instruments/{status['id']}/files/"
    assert requests.get(f"{base}{prefix}notes/060_v050.wav", headers=KEY, timeout=30).status_code == 200
    attacks = [
        "../status.json",
        "../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e/%2e%2e/etc/passwd",
        "%2e%2e%2f" * 4 + "etc/passwd",
        "/etc/passwd",
        "%2fetc%2fpasswd",
        "notes/../../x",
        "notes/..%5c..%5cx",
        "..\\..\\x",
        "notes/060_v050.wav%00.txt",
        "candidates/0/notes/060_v050.wav",
        ".tmp-x",
        "",
        "notes/",
        "manifest.json/..",
        "%252e%252e%252fetc%252fpasswd",
    ]
    host = urlparse(base)
    for attack in attacks:  # raw paths: no client-side normalisation of dot segments
        connection = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
        connection.request("GET", prefix + attack, headers=KEY)
        answer = connection.getresponse()
        assert 400 <= answer.status < 500, (attack, answer.status)
        connection.close()
    other = f"/v1/instruments/{'0' * 32}/files/manifest.json"
    assert requests.get(f"{base}{other}", headers=KEY, timeout=30).status_code == 404
