"""One instrument of a batch (`render_isolated`), no Ray: retries, failure rows, cleared folders, requests."""

from __future__ import annotations

import pytest

from instrumentgen import storage
from instrumentgen.faults import Fault
from instrumentgen.instruments.prompts import RenderRequest
from instrumentgen.instruments.render import RetryPolicy, prepare_folder, render_isolated

NO_WAIT = RetryPolicy(tries=3, backoff_s=0.0)


def request(**fields) -> RenderRequest:
    return RenderRequest(
        **{
            "line": 4,
            "name": "glassy bell",
            "seed": 5,
            "prompt": "glassy bell",
            "keys": (60, 60),
            "velocities": (100,),
            **fields,
        }
    )


def files(url: str) -> dict[str, bytes]:
    """{relative path: bytes} of a folder, temporary files included; the manifest without its timings
    (they differ per run), the zip as its entries but the manifest's copy."""
    import io
    import json
    import zipfile

    out = {}
    for f in storage.list_files(url, temporary=True):
        data = storage.read_bytes(f)
        rel = f[len(url) + 1 :]
        if rel == storage.MANIFEST:
            manifest = json.loads(data)
            manifest.pop("timings")
            data = json.dumps(manifest, sort_keys=True).encode()
        if rel == "instrument.zip":
            with zipfile.ZipFile(io.BytesIO(data)) as bundle:
                data = {e.filename: bundle.read(e) for e in bundle.infolist() if e.filename != storage.MANIFEST}
        out[rel] = data
    return out


def test_two_transient_storage_errors_are_retried_and_the_instrument_renders(tiny_renderer, tmp_path, monkeypatch):
    clean = render_isolated(tiny_renderer, request(), "c", str(tmp_path / "clean"), NO_WAIT)
    assert (clean["status"], clean["tries"]) == ("rendered", 1)
    write, failures = storage.write_bytes, []

    def flaky(url, data):
        if len(failures) < 2 and url.endswith("instrument.sfz"):  # after the notes: a half-written folder
            failures.append(url)
            raise storage.TransientStorageError(f"cannot write {url!r}: the store is busy or failing (SlowDown)")
        write(url, data)

    monkeypatch.setattr(storage, "write_bytes", flaky)
    row = render_isolated(tiny_renderer, request(), "c", str(tmp_path / "flaky"), NO_WAIT)
    assert (row["status"], row["tries"], len(failures)) == ("rendered", 3, 2)
    assert files(str(tmp_path / "flaky")) == files(str(tmp_path / "clean"))  # nothing of the failed tries is left
    assert row["index"]["id"] == "c" and row["index"]["tc"] == clean["index"]["tc"]


def test_transient_errors_past_the_policy_are_one_failure_row(tiny_renderer, tmp_path, monkeypatch):
    def down(url, data):
        raise storage.TransientStorageError(f"cannot write {url!r}: its endpoint is unreachable")

    monkeypatch.setattr(storage, "write_bytes", down)
    row = render_isolated(tiny_renderer, request(), "d", str(tmp_path / "d"), RetryPolicy(tries=2, backoff_s=0.0))
    assert {k: row[k] for k in ("id", "line", "status", "reason", "tries")} == {
        "id": "d",
        "line": 4,
        "status": "failed",
        "reason": "TransientStorageError",
        "tries": 2,
    }
    assert row["message"].startswith("cannot write ") and "endpoint is unreachable" in row["message"]


def test_any_other_exception_is_a_failure_row_at_once_and_the_rerun_clears_the_folder(tiny_renderer, tmp_path):
    url = str(tmp_path / "x")
    fault = Fault("render.instrument", at=7, marker=str(tmp_path / "fired"), action="raise")
    row = render_isolated(tiny_renderer, request(), "x", url, NO_WAIT, fault, count=7)
    assert (row["status"], row["reason"], row["tries"]) == ("failed", "InjectedFault", 1)  # a bug: not retried
    assert row["message"] == "injected failure at render.instrument=7 (rank 0)"
    left = storage.list_files(url, temporary=True)
    assert left and not any(f.endswith(storage.MANIFEST) for f in left)  # notes written, no manifest
    (tmp_path / "x" / "notes" / ".tmp-dead-061_v100.wav").write_bytes(b"half")  # a killed local write
    rerun = render_isolated(tiny_renderer, request(), "x", url, NO_WAIT, fault, count=7)
    assert rerun["status"] == "rendered"
    assert not [f for f in storage.list_files(url, temporary=True) if "/.tmp-" in f]
    again = render_isolated(tiny_renderer, request(), "x", url, NO_WAIT)  # complete: read, not rendered
    assert again["status"] == "rendered" and again["index"] == rerun["index"]
    assert prepare_folder(url).about["id"] == "x"


def test_a_user_error_is_never_retried(tiny_renderer, tmp_path):
    row = render_isolated(
        tiny_renderer,
        request(prompt=None, reference_audio=str(tmp_path / "gone.wav")),
        "u",
        str(tmp_path / "u"),
        NO_WAIT,
    )
    assert (row["status"], row["reason"], row["tries"]) == ("failed", "MissingObjectError", 1)
    assert f"cannot read '{tmp_path}/gone.wav'" in row["message"]


def test_s3_requests_grow_by_one_put_per_note(tiny_renderer, s3_bucket, s3_requests):
    """The cost model the 440-note test checks in full: one PUT per note, a fixed rest per instrument."""
    totals = []
    for keys in ((60, 60), (60, 62)):
        s3_requests.clear()
        url = storage.join(s3_bucket, "lib", f"n{keys[1]}")
        assert render_isolated(tiny_renderer, request(keys=keys), "n", url)["status"] == "rendered"
        assert s3_requests["put_object"] == keys[1] - keys[0] + 1 + 6  # + codes.npy, SFZ, .dspreset, SF2, zip, manifest
        assert s3_requests["get_object"] == 3  # the three presets read into the zip; no note is read back
        totals.append(sum(s3_requests.values()))
    assert totals[1] - totals[0] == 2  # two more notes, two more requests
    assert totals[0] - 1 + 440 <= 500


@pytest.mark.slow
def test_a_440_note_instrument_costs_under_500_s3_requests(tiny_renderer, s3_bucket, s3_requests):
    url = storage.join(s3_bucket, "lib", "full")
    row = render_isolated(tiny_renderer, request(keys=(21, 108), velocities=(25, 50, 75, 100, 127)), "full", url)
    assert row["status"] == "rendered" and row["index"]["notes"] == 440
    total = sum(s3_requests.values())
    print(f"S3 requests for one 440-note instrument: {total} {dict(s3_requests)}")
    assert s3_requests["put_object"] == 440 + 6  # notes, codes.npy, SFZ, .dspreset, SF2, zip, manifest
    assert total <= 500, dict(s3_requests)
    assert not [f for f in storage.list_files(url, temporary=True) if "/.tmp-" in f]
