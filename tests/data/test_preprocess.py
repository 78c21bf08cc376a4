import json
from collections import Counter

import numpy as np
import pytest
import torch

from instrumentgen import storage
from instrumentgen.audio import crop_and_resample
from instrumentgen.config import ConfigError, load_config
from instrumentgen.data import nsynth, preprocess, shard_writer, shards, tfrecord
from instrumentgen.data.synthetic import bad_records, write_fixture_nsynth
from instrumentgen.faults import Fault, InjectedFault
from jobs import preprocess as job
from jobs.shard_dataset import read_shards

INSTRUMENTS, PITCHES, VELOCITIES = 2, [48, 60], [50, 100]
HOLDOUT = 0.4  # holds out bass_acoustic_000 (its name hashes to 0.36), keeps brass_electronic_001 (0.49)
SETTINGS = ["data.notes_per_shard=3", "data.encode_batch_size=4", f"data.holdout_instruments={HOLDOUT}"]


def fixture(root):
    return write_fixture_nsynth(root, INSTRUMENTS, PITCHES, VELOCITIES, with_bad_records=True)


def tiny_config(urls, shards_url, *extra):
    return load_config(
        "tiny",
        [
            f"data.splits.train={urls['jsonwav']}",
            f"data.splits.valid={urls['tfrecord']}",
            f"data.shards={shards_url}",
            *SETTINGS,
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def local_data(tmp_path_factory):
    return fixture(str(tmp_path_factory.mktemp("nsynth")))


@pytest.fixture(scope="module")
def clean_run(local_data, tmp_path_factory, ray_local):
    """One uninterrupted run over a local fixture: train = json/wav, valid = TFRecord, both with bad records."""
    out = str(tmp_path_factory.mktemp("shards"))
    return out, job.run(tiny_config(local_data, out))


def shard_rows(url):
    """{split: {note_str: row}} of every shard file listed in the manifest."""
    manifest = shards.read_manifest(url)
    rows = {}
    for split, files in manifest["files"].items():
        for f in files:
            table = shards.read_table(storage.join(url, f)).to_pylist()
            rows.setdefault(split, {}).update({r["note_str"]: r for r in table})
    return rows


# ---- reading: no Ray, no models


def test_tfrecord_byte_ranges_partition_the_records(local_data):
    url = local_data["tfrecord"]
    with open(url, "rb") as f:
        records = list(tfrecord.iter_records(f))
    size = storage.filesystem(url)[0].size(url)
    for unit_bytes in (50_000, 256_600, 600_000, size):  # ranges smaller than, equal to, spanning records
        read = [
            r
            for start in range(0, size, unit_bytes)
            for r in preprocess.iter_tfrecord_range(url, start, min(start + unit_bytes, size))
        ]
        assert read == records, unit_bytes


def test_plan_units_blocks_records_per_split(local_data):
    sources = {"train": local_data["jsonwav"], "valid": local_data["tfrecord"]}
    units = preprocess.plan_units(sources, "auto", 5)
    assert units == preprocess.plan_units(sources, "auto", 5)  # deterministic: the basis of resuming
    train = [json.loads(u["spec"]) for u in units if u["source_split"] == "train"]
    assert [len(s["rows"]) for s in train] == [5, 5, 2]  # 8 good + 4 bad records
    valid = [(u["unit"], json.loads(u["spec"])) for u in units if u["source_split"] == "valid"]
    assert [unit for unit, _ in valid] == list(range(len(valid)))
    size = storage.filesystem(local_data["tfrecord"])[0].size(local_data["tfrecord"])
    assert valid[0][1]["start"] == 0 and valid[-1][1]["end"] == size
    assert all(a["end"] == b["start"] for (_, a), (_, b) in zip(valid, valid[1:]))


def test_read_unit_gives_one_row_per_record_and_names_each_rejection(local_data):
    units = preprocess.plan_units({"train": local_data["jsonwav"]}, "auto", 100)
    batches = list(preprocess.read_unit({k: np.array([v]) for k, v in units[0].items()}, holdout_fraction=HOLDOUT))
    rows = [dict(zip(b, values)) for b in batches for values in zip(*b.values())]
    end = rows.pop()
    assert end["reason"] == shard_writer.UNIT_END and end["position"] == len(rows) == 12
    assert sorted(r["position"] for r in rows) == list(range(12))
    expected = {meta.get("note_str"): reason for meta, *_, reason in bad_records()}
    assert {r["note_str"]: r["reason"] for r in rows if r["reason"]} == expected
    kept = [r for r in rows if not r["reason"]]
    assert {(r["instrument_str"], r["split"]) for r in kept} == {
        ("bass_acoustic_000", "holdout"),
        ("brass_electronic_001", "train"),
    }
    assert all(len(r["audio"]) == 64000 * 4 for r in kept) and all(r["audio"] == b"" for r in rows if r["reason"])


def test_split_sources_checks_the_config():
    def sources(*overrides):
        return preprocess.split_sources(load_config("tiny", ["data.shards=/out", *overrides]).data)

    assert sources("data.source=/a", "data.splits.test=/c") == {"train": "/a", "test": "/c"}
    with pytest.raises(ConfigError, match="data.splits.dev is not an NSynth split; allowed: train, valid, test"):
        sources("data.splits.dev=/x")
    with pytest.raises(ConfigError, match="data.source is empty"):
        sources()
    with pytest.raises(ConfigError, match="differ"):
        sources("data.source=/a", "data.splits.train=/b")


def test_held_out_is_a_stable_fraction_of_instruments():
    names = [f"inst_{i}" for i in range(2000)]
    share = np.mean([preprocess.held_out(n, 0.2) for n in names])
    assert 0.17 < share < 0.23
    assert [preprocess.held_out(n, 0.2) for n in names] == [preprocess.held_out(n, 0.2) for n in names]
    assert not any(preprocess.held_out(n, 0.0) for n in names)


# ---- the job on a local Ray


@pytest.mark.slow
def test_job_keeps_exactly_the_good_records(clean_run):
    out, manifest = clean_run
    rows = shard_rows(out)
    good = {
        f"{i}-{p:03d}-{v:03d}"
        for i in ("bass_acoustic_000", "brass_electronic_001")
        for p in PITCHES
        for v in VELOCITIES
    }
    assert set(rows["train"]) | set(rows["holdout"]) == good
    assert set(rows["valid"]) == good
    assert {r["instrument_str"] for r in rows["holdout"].values()} == {"bass_acoustic_000"}
    assert manifest["kept"] == {"holdout": 4, "train": 4, "valid": 8}
    reasons = Counter(reason for *_, reason in bad_records())
    tf_reasons = reasons - Counter(["unreadable_audio"]) + Counter(["wrong_length"])  # as the TFRecord fixture has it
    assert manifest["skipped"] == dict(reasons + tf_reasons)
    rejected = [
        json.loads(line) for line in storage.read_bytes(storage.join(out, shards.REJECTED)).decode().splitlines()
    ]
    assert {(r["split"], r["note_str"], r["reason"]) for r in rejected if r["split"] == "train"} == {
        ("train", meta.get("note_str"), reason) for meta, *_, reason in bad_records()
    }
    assert manifest["n_codebooks"] == 4 and manifest["n_frames"] == 44  # 0.5 s at 44.1 kHz, hop 512
    assert manifest["codec_model_id"] and manifest["clap_model_id"] and manifest["config_hash"]
    assert manifest["records"] == 24


@pytest.mark.slow
def test_codes_equal_codec_encode_of_the_same_notes(clean_run, local_data):
    from instrumentgen.pretrained.clap import Clap
    from instrumentgen.pretrained.codec import Codec

    out, _ = clean_run
    cfg = load_config("tiny")
    codec, clap = Codec.load(cfg.codec), Clap.load(cfg.clap)
    notes = list(nsynth.iter_notes(local_data["jsonwav"]))
    audio = torch.from_numpy(crop_and_resample(np.stack([n.audio for n in notes]), 0.5, 16000, 44100))
    with torch.inference_mode():
        codes = codec.encode(audio[:, None])[:, :4].numpy()
        clap_embedding = clap.embed_audio(audio, 44100).numpy()
    rows = shard_rows(out)
    rows = {**rows["train"], **rows["holdout"]}
    for note, note_codes, note_clap in zip(notes, codes, clap_embedding):
        row = rows[note.note_str]
        np.testing.assert_array_equal(np.array(row["codes"]).reshape(4, 44), note_codes)
        np.testing.assert_allclose(np.array(row["clap_embedding"], np.float32), note_clap, atol=2e-3)
        assert (row["pitch"], row["velocity"], row["family"], row["source"], row["instrument"]) == (
            note.pitch,
            note.velocity,
            note.family,
            note.source,
            note.instrument,
        )


@pytest.mark.slow
def test_a_failed_run_on_s3_resumes_to_the_shards_of_a_clean_local_run(clean_run, s3_bucket, ray_local, capsys):
    endpoint = ray_local.get(ray_local.remote(lambda: __import__("os").environ.get("AWS_ENDPOINT_URL")).remote())
    assert endpoint and endpoint.startswith("http://127.0.0.1"), (
        "Ray workers do not see the loopback S3 server: start s3_server before ray_local in this session"
    )
    out, manifest = clean_run
    urls = fixture(storage.join(s3_bucket, "nsynth"))
    resumed = storage.join(s3_bucket, "shards")
    failure = Fault("preprocess.unit", at=2, marker=storage.join(s3_bucket, "fired"), action="raise")
    with pytest.raises(InjectedFault, match="preprocess.unit=2"):
        job.run(tiny_config(urls, resumed), failure)
    assert not storage.exists(storage.join(resumed, "manifest.json"))
    committed = storage.list_files(storage.join(resumed, shards.PROGRESS), ".json")
    assert len(committed) == 2
    argv = ["config=tiny", f"data.splits.train={urls['jsonwav']}", f"data.splits.valid={urls['tfrecord']}"]
    assert job.main([*argv, f"data.shards={resumed}", *SETTINGS]) == 0
    assert "2 already complete" in capsys.readouterr().out
    # The same shard files, table for table, and the same manifest but for where the notes were read.
    resumed_manifest = shards.read_manifest(resumed)
    assert resumed_manifest["sources"] != manifest["sources"]
    where = ("sources", "config_hash")  # the hash covers the sources
    assert {k: v for k, v in resumed_manifest.items() if k not in where} == {
        k: v for k, v in manifest.items() if k not in where
    }
    for files in manifest["files"].values():
        for f in files:
            assert shards.read_table(storage.join(resumed, f)).equals(shards.read_table(storage.join(out, f))), f
    assert read_shards(resumed, "valid").count() == 8
    with pytest.raises(shards.ShardError, match="use a fresh data.shards"):
        job.run(tiny_config(urls, resumed, "data.note_duration_s=0.25"))


def test_cli_reports_config_errors(capsys):
    assert job.main(["config=tiny", "data.shards=/tmp/x", "data.splits.dev=/y"]) == 2
    assert "data.splits.dev is not an NSynth split" in capsys.readouterr().err


@pytest.mark.slow
def test_a_killed_driver_resumes_to_the_rows_of_a_clean_run(clean_run, local_data, tmp_path, ray_local, capsys):
    """SIGKILL the job's driver (its own process) once some units are committed; the re-run (here) finishes the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out, _ = clean_run
    resumed = str(tmp_path / "shards")
    args = [
        sys.executable,
        "-m",
        "jobs.preprocess",
        "config=tiny",
        f"data.splits.train={local_data['jsonwav']}",
        f"data.splits.valid={local_data['tfrecord']}",
        f"data.shards={resumed}",
        *SETTINGS,
        "data.notes_per_shard=1",
    ]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    driver = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    markers = storage.join(resumed, shards.PROGRESS)
    deadline = time.time() + 300
    while not storage.list_files(markers, ".json") and time.time() < deadline and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    committed = len(storage.list_files(markers, ".json"))
    assert committed >= 1 and not storage.exists(storage.join(resumed, storage.MANIFEST)), (
        f"the driver was killed with {committed} units committed; the test needs it killed mid-run"
    )
    capsys.readouterr()
    assert job.main(args[3:]) == 0
    assert f"{committed} already complete" in capsys.readouterr().out
    # Units of one record batch differently through CLAP than the clean run's units of three, which
    # moves a few embedding values by one float16 step; every other column is identical.
    got, want = shard_rows(resumed), shard_rows(out)
    assert {split: set(rows) for split, rows in got.items()} == {split: set(rows) for split, rows in want.items()}
    for split, rows in want.items():
        for note_str, row in rows.items():
            np.testing.assert_allclose(got[split][note_str].pop("clap_embedding"), row.pop("clap_embedding"), atol=2e-3)
    assert got == want
