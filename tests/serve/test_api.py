"""The HTTP contract of an ingress replica on 127.0.0.1 without Ray: fake handles that render with the
real library code on tiny models; errors, API keys, request fuzzing, reference audio, files."""

from __future__ import annotations

import concurrent.futures
import hashlib
import http.client
import http.server
import io
import json
import os
import random
import shutil
import threading
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import soundfile as sf

from instrumentgen import storage
from instrumentgen.config import load_config
from instrumentgen.instruments.library import INDEX_COLUMNS
from serve.local import wait_done

API_KEY = "test-key-123"
KEY = {"X-API-Key": API_KEY}
SMALL = {"keys": {"low": 60, "high": 61}, "velocities": [50, 100]}  # 4 notes: one shard


@pytest.fixture(scope="module")
def api(tmp_path_factory, deployments, make_api, uvicorn_serving):
    root = tmp_path_factory.mktemp("instruments")
    overrides = [
        f"serve.storage={root}",
        "serve.shard_size=4",
        "serve.shard_retries=0",
        "serve.max_reference_seconds=2",
        "serve.max_reference_bytes=1000000",
        f"serve.library={tmp_path_factory.mktemp('library')}",
        "serve.max_upload_seconds=2",
        "serve.max_upload_bytes=200000",
    ]
    cfg = load_config("tiny", overrides)
    with uvicorn_serving(make_api(cfg, deployments(cfg), [API_KEY])) as base:
        yield base, cfg, str(root)


def post(base, body, headers=KEY):
    return requests.post(f"{base}/v1/instruments", json=body, headers=headers, timeout=60)


def done(base, body):
    accepted = post(base, body)
    assert accepted.status_code == 202, accepted.text
    status = wait_done(base, accepted.json()["id"], headers=KEY, poll_s=0.1)
    assert status["status"] == "done", status
    return status


def raw(base, method, path, body=None, headers=None):
    """One request with the path as given (no client-side normalisation)."""
    host = urlparse(base)
    connection = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    connection.request(method, path, body=body, headers={**KEY, **(headers or {})})
    answer = connection.getresponse()
    result = answer.status, dict(answer.getheaders()), answer.read()
    connection.close()
    return result


def test_every_error_is_an_error_body_and_is_declared(api):
    base, cfg, _ = api
    cases = {
        "not json": (400, "body", raw(base, "POST", "/v1/instruments", b"{", {"Content-Type": "application/json"})),
        "not utf-8": (
            400,
            "body",
            raw(base, "POST", "/v1/instruments", b'{"prompt": "\xff"}', {"Content-Type": "application/json"}),
        ),
        "deep json": (
            400,
            "body",
            raw(base, "POST", "/v1/instruments", b"[" * 5000, {"Content-Type": "application/json"}),
        ),
        "unknown route": (404, "path", raw(base, "GET", "/v2/nothing")),
        "method": (405, "method", raw(base, "DELETE", "/v1/instruments")),
        "no key": (401, "authorization", raw(base, "GET", f"/v1/instruments/{'0' * 32}", headers={"X-API-Key": "x"})),
        "too long": (413, "body", raw(base, "POST", "/v1/instruments", b"{" + b" " * 70_000 + b"}")),
    }
    for name, (status, field, (got, headers, body)) in cases.items():
        answer = json.loads(body)
        assert got == status and answer["field"] == field, (name, got, body)
        assert answer["error"].startswith(f"{field}: ") and "allowed:" in answer["error"], (name, answer)
        assert answer["detail"][0]["field"] == field and headers["content-type"] == "application/json", name
    assert "GET" in cases["method"][2][1]["allow"] or "POST" in cases["method"][2][1]["allow"]

    def chunked():  # no Content-Length: the limit holds while reading, not after
        for _ in range(100):
            yield b" " * 1000

    answer = requests.post(
        f"{base}/v1/instruments", data=chunked(), headers={**KEY, "Content-Type": "application/json"}
    )
    assert answer.status_code == 413 and answer.json()["field"] == "body"
    blank = post(base, {"prompt": "   "})
    assert blank.status_code == 422 and not blank.json()["error"].startswith("prompt: Value error")
    schema = requests.get(f"{base}/openapi.json", timeout=10).json()
    post_responses = schema["paths"]["/v1/instruments"]["post"]["responses"]
    assert {"400", "401", "413", "422", "503"} <= set(post_responses)
    for code in ("400", "422", "503"):
        assert post_responses[code]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert "HTTPValidationError" not in json.dumps(schema)
    assert {"206", "404", "416"} <= set(
        schema["paths"]["/v1/instruments/{instrument}/files/{path}"]["get"]["responses"]
    )


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
            {"low": 60.5},
        ],
        "velocities": [[], [60], [25, 25], [25, 50, 75, 100, 127, 25], "25", [True], [25.5], None],
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
    raw_bodies = [
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
    return singles + pairs + [("raw", text) for text in raw_bodies]


def test_fuzzing_gets_only_4xx_error_bodies_naming_the_field(api):
    base, cfg, _ = api
    cases = malformed_requests(cfg)
    assert len(cases) >= 300
    answers = []
    for case in cases:
        if isinstance(case, tuple):
            headers = {**KEY, "Content-Type": "application/json"}
            answers.append(requests.post(f"{base}/v1/instruments", data=case[1].encode(), timeout=30, headers=headers))
        else:
            answers.append(post(base, case))
    answers += [
        requests.get(f"{base}/v1/instruments/{bad}", headers=KEY, timeout=30)
        for bad in ("x", "0" * 31, "Z" * 32, "0" * 33, "%00", "..")
    ]
    answers.append(requests.put(f"{base}/v1/instruments", json={}, headers=KEY, timeout=30))
    for case, answer in zip(cases, answers):
        assert 400 <= answer.status_code < 500, (case, answer.status_code, answer.text)
        body = answer.json()
        assert {"error", "field", "detail"} <= set(body) and body["error"].startswith(body["field"]), (case, body)
        assert "Value error," not in body["error"]
    fields = {answer.json()["field"] for answer in answers[: len(cases)]}
    assert {"prompt", "seed", "keys.low", "velocities.0", "candidates", "format", "bogus", "body"} <= fields


def test_bad_values_name_the_field_and_what_is_allowed(api):
    base, cfg, _ = api
    answer = post(base, {"prompt": "p", "candidates": 9})
    assert answer.status_code == 422 and answer.json()["field"] == "candidates"
    assert answer.json()["detail"][0]["allowed"] == {"le": cfg.serve.max_candidates}
    answer = post(base, {"prompt": "p", "family": "brass"})
    assert "allowed: exactly one of prompt, reference_audio_url, or family/source" in answer.json()["error"]
    answer = post(base, {"prompt": "p", "keys": {"low": 70, "high": 60}})
    assert answer.json()["field"] == "keys" and "allowed: 21 <= low <= high <= 108" in answer.json()["error"]


def test_api_keys_are_required(api):
    base, _, _ = api
    for headers in ({}, {"X-API-Key": "wrong"}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic x"}):
        answer = post(base, {"prompt": "p", **SMALL}, headers=headers)
        assert answer.status_code == 401 and answer.json()["field"] == "authorization"
        assert answer.headers["WWW-Authenticate"] == "Bearer"
    assert post(base, {"prompt": "p", "seed": 9, **SMALL}, headers={"Authorization": f"Bearer {API_KEY}"}).ok
    assert requests.get(f"{base}/healthz", timeout=10).ok and requests.get(f"{base}/", timeout=10).ok
    schemes = requests.get(f"{base}/openapi.json", timeout=10).json()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"apiKey", "http"}


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


def test_reference_audio_is_fetched_and_checked(api, reference_server):
    base, _, _ = api
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


def test_the_same_request_twice_is_one_instrument(api):
    base, _, root = api
    body = {"prompt": "glassy bell", "seed": 5, **SMALL}
    first = done(base, body)
    manifest = storage.join(root, first["id"], "manifest.json")
    written = os.path.getmtime(manifest)
    again = post(base, {**body, "prompt": "  glassy   bell "})  # the same after normalisation
    assert again.status_code == 200 and again.json()["id"] == first["id"] and again.json()["status"] == "done"
    assert requests.get(f"{base}/healthz", timeout=10).json()["in_flight"] == 0
    assert os.path.getmtime(manifest) == written


def test_files_download_like_files_and_nothing_else_is_served(api):
    base, _, root = api
    status = done(base, {"prompt": "files", "seed": 8, **SMALL})
    bundle = f"{base}{status['bundle']}"
    whole = requests.get(bundle, headers=KEY, timeout=30)
    size = len(whole.content)
    assert whole.status_code == 200 and int(whole.headers["Content-Length"]) == size > 1000
    assert whole.headers["Accept-Ranges"] == "bytes" and "immutable" in whole.headers["Cache-Control"]
    tag = whole.headers["ETag"]
    head = requests.get(bundle, headers={**KEY, "Range": f"bytes=0-{size // 3 - 1}"}, timeout=30)
    rest = requests.get(bundle, headers={**KEY, "Range": f"bytes={size // 3}-", "If-Range": tag}, timeout=30)
    assert head.status_code == 206 and rest.status_code == 206
    assert rest.headers["Content-Range"] == f"bytes {size // 3}-{size - 1}/{size}"
    assert head.content + rest.content == whole.content  # a download resumed where it stopped
    tail = requests.get(bundle, headers={**KEY, "Range": "bytes=-10"}, timeout=30)
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    assert requests.get(bundle, headers={**KEY, "If-None-Match": tag}, timeout=30).status_code == 304
    changed = requests.get(bundle, headers={**KEY, "Range": "bytes=0-9", "If-Range": '"other"'}, timeout=30)
    assert changed.status_code == 200 and changed.content == whole.content
    past = requests.get(bundle, headers={**KEY, "Range": f"bytes={size}-"}, timeout=30)
    assert past.status_code == 416 and past.headers["Content-Range"] == f"bytes */{size}"
    assert past.json()["field"] == "range"
    note = requests.get(f"{base}{status['notes'][0]['url']}", headers=KEY, timeout=30)
    assert note.headers["content-type"] == "audio/wav" and int(note.headers["Content-Length"]) == len(note.content)
    state = requests.get(f"{base}/v1/instruments/{status['id']}/files/status.json", headers=KEY, timeout=30)
    assert state.headers["Cache-Control"] == "no-cache"

    secret = os.path.join(root, "secret.txt")
    with open(secret, "w") as f:
        f.write("not an instrument file")
    os.symlink(secret, os.path.join(root, status["id"], "notes", "099_v050.wav"))  # planted in storage
    prefix = f"/v1/instruments/{status['id']}/files/"
    attacks = [
        "notes/099_v050.wav",
        "manifest.json%0a",
        "manifest.json%0A",
        "../status.json",
        "../../etc/passwd",
        "..%2f..%2fetc%2fpasswd",
        "%2e%2e/%2e%2e/etc/passwd",
        "/etc/passwd",
        "notes/../../x",
        "notes/..%5c..%5cx",
        "notes/060_v050.wav%00.txt",
        "candidates/0/notes/060_v050.wav",
        "shards/060_v050_n4.pt",
        "cue.pt",
        ".tmp-x",
        "",
        "notes/",
        "manifest.json/..",
        "%252e%252e%252fetc%252fpasswd",
    ]
    for attack in attacks:
        code, _, body = raw(base, "GET", prefix + attack)
        assert code == 404 and json.loads(body)["field"] in ("path", "id"), (attack, code, body)
    assert raw(base, "GET", prefix + "manifest.json")[0] == 200


def test_overload_gets_503_with_retry_after(tmp_path, blocking, make_api, uvicorn_serving):
    cfg = load_config("tiny", [f"serve.storage={tmp_path}", "serve.max_instruments_in_flight=2"])
    with uvicorn_serving(make_api(cfg, blocking)) as base:
        bodies = [{"prompt": f"overload {i}", "seed": i, **SMALL} for i in range(5)]
        with concurrent.futures.ThreadPoolExecutor(5) as pool:
            answers = list(pool.map(lambda body: post(base, body, headers={}), bodies))
        codes = sorted(answer.status_code for answer in answers)
        assert codes == [202, 202, 503, 503, 503], codes
        for answer in answers:
            if answer.status_code == 503:
                assert int(answer.headers["Retry-After"]) > 0 and "max_instruments_in_flight" in answer.json()["error"]
        assert requests.get(f"{base}/healthz", timeout=10).json()["in_flight"] == 2


def regenerate(base, parent, body):
    return requests.post(f"{base}/v1/instruments/{parent}/regenerate", json=body, headers=KEY, timeout=60)


def test_regenerate_renders_the_chosen_notes_and_copies_the_rest(api):
    base, _, root = api
    parent = done(base, {"prompt": "regenerate me", "seed": 11, "candidates": 2, **SMALL})
    accepted = regenerate(base, parent["id"], {"keys": [61], "seed": 4})
    assert accepted.status_code == 202, accepted.text
    child = wait_done(base, accepted.json()["id"], headers=KEY, poll_s=0.1)
    assert child["status"] == "done" and child["id"] != parent["id"] and child["seed"] == 4
    assert child["parent"] == parent["id"] and child["regenerated"] == [[61, 50], [61, 100]]
    manifest = storage.read_json(storage.join(root, child["id"], "manifest.json"))
    assert manifest["parent"] == parent["id"] and manifest["regenerated"] == [[61, 50], [61, 100]]
    assert manifest["request"]["prompt"] == "regenerate me" and len(manifest["notes"]) == 4
    for name in ("060_v050.wav", "060_v100.wav", "061_v050.wav", "061_v100.wav"):
        old = (Path(root) / parent["id"] / "notes" / name).read_bytes()
        new = (Path(root) / child["id"] / "notes" / name).read_bytes()
        assert (old == new) == name.startswith("060"), name  # copied byte for byte / rendered again
    codes = [np.load(Path(root) / i / "codes.npy") for i in (parent["id"], child["id"])]
    assert (codes[0][:2] == codes[1][:2]).all() and not (codes[0][2:] == codes[1][2:]).all()
    with zipfile.ZipFile(Path(root) / child["id"] / "instrument.zip") as bundle:
        assert {"notes/060_v050.wav", "instrument.sfz", "instrument.sf2", "manifest.json"} <= set(bundle.namelist())
    assert not (Path(root) / child["id"] / "candidates").exists()
    parent_manifest = (Path(root) / parent["id"] / "manifest.json").read_bytes()
    again = regenerate(base, parent["id"], {"seed": 4, "keys": [61.0]})  # the same body: the same child
    assert again.status_code == 200 and again.json()["id"] == child["id"]
    assert (Path(root) / parent["id"] / "manifest.json").read_bytes() == parent_manifest  # ids are immutable
    layer = regenerate(base, parent["id"], {"velocities": [100], "seed": 4})
    assert layer.status_code == 202 and layer.json()["id"] != child["id"]
    assert wait_done(base, layer.json()["id"], headers=KEY, poll_s=0.1)["regenerated"] == [[60, 100], [61, 100]]


def test_bad_regenerate_requests_name_the_field(api):
    base, _, root = api
    parent = done(base, {"prompt": "regenerate errors", "seed": 12, **SMALL})["id"]
    cases = [
        ("0" * 32, {"keys": [60]}, 404, "id", "no instrument"),
        (parent, {}, 422, "body", "keys and/or velocities"),
        (parent, {"keys": []}, 422, "keys", "at least 1"),
        (parent, {"keys": [62]}, 422, "keys", "allowed: [60, 61]"),
        (parent, {"keys": [20]}, 422, "keys", "allowed: 21..108"),
        (parent, {"keys": [60, 60]}, 422, "keys", "distinct"),
        (parent, {"velocities": [75]}, 422, "velocities", "allowed: [50, 100]"),
        (parent, {"velocities": [51]}, 422, "velocities", "not velocity layers"),
        (parent, {"keys": [60], "seed": -1}, 422, "seed", "greater than or equal"),
        (parent, {"keys": [60], "extra": 1}, 422, "extra", "xtra"),
    ]
    for instrument, body, code, field, words in cases:
        answer = regenerate(base, instrument, body)
        assert answer.status_code == code and answer.json()["field"] == field, (body, answer.text)
        assert words in answer.json()["error"], (body, answer.text)
    running = "1" * 32  # accepted, not done: a status and no manifest
    storage.write_json(storage.join(root, running, "status.json"), {"id": running, "status": "running"})
    answer = regenerate(base, running, {"keys": [60]})
    assert answer.status_code == 409 and answer.json()["field"] == "id", answer.text
    assert "is running; allowed: a done instrument" in answer.json()["error"]


def test_the_library_is_listed_and_its_instruments_open_like_served_ones(api):
    base, cfg, root = api
    served = done(base, {"prompt": "library bell", "seed": 21, **SMALL})
    library = Path(cfg.serve.library)
    shutil.copytree(Path(root) / served["id"], library / "0123456789abcdef")  # as jobs.render leaves one
    rows = [
        {"id": "0123456789abcdef", "name": "Bell", "prompt": "library bell", "tc": 0.2, "clap_score": 0.4},
        {"id": "fedcba9876543210", "name": "Brass", "prompt": "warm BRASS", "tc": 0.1, "clap_score": 0.9},
        {"id": "00000000000000aa", "name": "Bell two", "prompt": "a bell", "tc": None, "clap_score": 0.5},
    ]
    columns = {name: kind for name, kind in INDEX_COLUMNS.items()}
    table = pa.Table.from_pylist([{k: r.get(k) for k in columns} for r in rows], schema=pa.schema(columns))
    pq.write_table(table, library / "index.parquet")

    listed = requests.get(f"{base}/v1/library", params={"text": "Bell", "sort": "tc", "order": "asc"}, headers=KEY)
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert page["total"] == 2 and [e["id"] for e in page["entries"]] == ["0123456789abcdef", "00000000000000aa"]
    assert page["entries"][0]["status_url"] == "/v1/library/0123456789abcdef"
    paged = requests.get(f"{base}/v1/library", params={"sort": "clap_score", "limit": 1, "offset": 1}, headers=KEY)
    assert paged.json()["total"] == 3 and [e["id"] for e in paged.json()["entries"]] == ["00000000000000aa"]

    status = requests.get(f"{base}{page['entries'][0]['status_url']}", headers=KEY, timeout=30).json()
    assert status["status"] == "done" and status["prompt"] == "library bell" and len(status["notes"]) == 4
    note = requests.get(f"{base}{status['notes'][0]['url']}", headers=KEY, timeout=30)
    assert (
        note.status_code == 200
        and note.content == (library / "0123456789abcdef" / "notes" / "060_v050.wav").read_bytes()
    )
    sf2 = requests.get(f"{base}{status['sf2']}", headers={**KEY, "Range": "bytes=0-3"}, timeout=30)
    assert sf2.status_code == 206 and sf2.content == b"RIFF"

    for path, params, code, field in [
        ("/v1/library", {"sort": "name"}, 422, "sort"),
        ("/v1/library", {"limit": 0}, 422, "limit"),
        ("/v1/library/fedcba9876543210", {}, 404, "id"),  # listed, but its folder is not there
        ("/v1/library/0123456789abcdef/files/../secret", {}, 404, "path"),
        ("/v1/library/0123456789abcdef/files/shards/x.pt", {}, 404, "path"),
    ]:
        answer = requests.get(f"{base}{path}", params=params, headers=KEY, timeout=30)
        assert answer.status_code == code and answer.json()["field"].endswith(field), (path, answer.text)


def test_no_library_configured_is_a_404_naming_the_setting(tmp_path, refusing, make_api, uvicorn_serving):
    cfg = load_config("tiny", [f"serve.storage={tmp_path}"])
    with uvicorn_serving(make_api(cfg, refusing)) as base:
        answer = requests.get(f"{base}/v1/library", timeout=30)
    assert answer.status_code == 404 and answer.json()["field"] == "library"
    assert "allowed: set serve.library" in answer.json()["error"]


def wav(seconds: float, rate: int = 16000, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    t = np.arange(round(seconds * rate)) / rate
    sf.write(buffer, 0.3 * np.sin(2 * np.pi * 220 * t), rate, format=fmt)
    return buffer.getvalue()


def upload(base, data, settings=None, name="cue.wav"):
    files = {"request": (None, json.dumps(settings))} if settings is not None else {}
    if data is not None:
        files["reference_audio"] = (name, data, "application/octet-stream")
    return requests.post(f"{base}/v1/instruments", files=files, headers=KEY, timeout=60)  # multipart/form-data


def test_an_uploaded_recording_is_the_cue_and_is_stored(api):
    base, _, root = api
    data = wav(0.5, fmt="FLAC")
    accepted = upload(base, data, {"seed": 31, **SMALL}, "cue.flac")
    assert accepted.status_code == 202, accepted.text
    status = wait_done(base, accepted.json()["id"], headers=KEY, poll_s=0.1)
    assert status["status"] == "done" and status["seed"] == 31 and len(status["notes"]) == 4
    stored = Path(root) / status["id"] / "reference.audio"
    assert stored.read_bytes() == data
    manifest = storage.read_json(storage.join(root, status["id"], "manifest.json"))
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert manifest["reference_audio"] == digest and manifest["request"]["reference_audio_url"] == digest
    again = upload(base, data, {"seed": 31, **SMALL}, "renamed.flac")  # the same recording: the same instrument
    assert again.status_code == 200 and again.json()["id"] == status["id"]


def test_bad_uploads_name_the_problem(api):
    base, _, _ = api
    cases = [
        (b"RIFF not audio at all", {}, 422, "reference_audio", "not readable audio"),
        (b"", {}, 422, "reference_audio", "empty"),
        (wav(3.0), {}, 422, "reference_audio", "allowed: at most 2.0 s (serve.max_upload_seconds)"),
        (wav(0.5, rate=4000), {}, 422, "reference_audio", "sample rate is 4000 Hz; allowed: 8000 .. 192000 Hz"),
        (b"\0" * 200001, {}, 422, "reference_audio", "at most 200000 bytes (serve.max_upload_bytes)"),
        (b"\0" * 300000, {}, 413, "body", "serve.max_upload_bytes + serve.max_body_bytes"),
        (None, {"seed": 1}, 422, "reference_audio", "no file in field 'reference_audio'"),
        (wav(0.5), {"prompt": "and a prompt"}, 422, "request", "prompt given with an uploaded file"),
        (wav(0.5), {"seed": -3}, 422, "seed", "greater than or equal to 0"),
        (wav(0.5), {"velocities": [51]}, 422, "velocities", "not velocity layers"),
    ]
    for data, settings, code, field, words in cases:
        answer = upload(base, data, settings)
        assert answer.status_code == code and answer.json()["field"] == field, (field, words, answer.text)
        assert words in answer.json()["error"], answer.text
    broken = requests.post(f"{base}/v1/instruments", data="x", headers={**KEY, "Content-Type": "text/plain"})
    assert broken.status_code == 422 and broken.json()["field"] == "content-type"
