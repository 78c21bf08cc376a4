import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch

from instrumentgen import storage
from instrumentgen.config import load_config
from instrumentgen.faults import Fault
from instrumentgen.instruments import library, pending
from instrumentgen.instruments.instrument import Instrument
from instrumentgen.instruments.prompts import read_prompts
from instrumentgen.instruments.render import Renderer, retry_seed
from instrumentgen.metrics.clap_score import clap_score
from instrumentgen.metrics.pitch import pitch_report
from instrumentgen.metrics.tc import scales_from_config, tc
from instrumentgen.model.lm import InstrumentLM
from jobs import render as job

SMALL = {"keys": [60, 63], "velocities": [100]}  # 4 notes: instruments render in well under a second


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, cache):
    torch.manual_seed(0)
    return InstrumentLM(load_config("tiny").model).save(str(tmp_path_factory.mktemp("ckpt") / "model.pt"))


def write_lines(url, lines):
    storage.write_bytes(
        url, ("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n").encode()
    )
    return url


def args(checkpoint, prompts, out, *extra):
    return ["config=tiny", f"checkpoint={checkpoint}", f"prompts={prompts}", f"out={out}", *extra]


def without_timings(manifest_bytes):
    manifest = json.loads(manifest_bytes)
    manifest.pop("timings")
    return json.dumps(manifest, sort_keys=True).encode()


def folder_files(out, instrument):
    """{relative path: bytes} of one instrument folder; the manifest (also the bundle's copy) without its
    timings (they differ per run)."""
    root = storage.join(out, instrument)
    files = {}
    for url in storage.list_files(root):
        rel = url[len(root) + 1 :] if url.startswith(root) else url.split(f"/{instrument}/", 1)[1]
        data = storage.read_bytes(url)
        if rel == storage.MANIFEST:
            data = without_timings(data)
        if rel == "instrument.zip":
            with zipfile.ZipFile(io.BytesIO(data)) as bundle:
                data = {
                    entry.filename: (
                        entry.date_time,
                        without_timings(bundle.read(entry))
                        if entry.filename == storage.MANIFEST
                        else bundle.read(entry),
                    )
                    for entry in bundle.infolist()
                }
        files[rel] = data
    return files


def assert_consistent_library(out, ids):
    """Every manifest sits over all its notes; the index lists exactly the complete folders; no journal is
    left (the run that wrote it finished)."""
    manifests = library.read_manifests(out)
    for instrument, manifest in manifests.items():
        for note in manifest.notes:
            assert storage.exists(storage.join(out, instrument, note.file)), (instrument, note)
    assert sorted(library.read_index(out).column("id").to_pylist()) == sorted(manifests) == sorted(ids)
    assert pending.pending_runs(out) == []


# ---- one instrument, no Ray: consistency selection and the quality gate


@pytest.fixture(scope="module")
def renderer(checkpoint):
    loaded = Renderer(load_config("tiny"), checkpoint)

    def with_settings(*overrides):  # one set of loaded models, the render settings of `overrides`
        loaded.cfg = load_config("tiny", list(overrides))
        return loaded

    return with_settings


def small_request(tmp_path, **fields):
    requests, _ = read_prompts(write_lines(str(tmp_path / "one.jsonl"), [{"prompt": "glassy bell", **SMALL, **fields}]))
    return requests[0]


def test_the_quality_gate_resamples_then_flags_or_drops(renderer, tmp_path):
    request = small_request(tmp_path, seed=5)
    plain = renderer().render(request, "a", str(tmp_path / "a"))
    assert (plain["attempts"], plain["quality"], plain["used_seed"]) == (1, "passed", 5)
    strict = renderer("render.max_tc=1e-6", "render.retries=2").render(request, "b", str(tmp_path / "b"))
    manifest = storage.read_json(str(tmp_path / "b" / storage.MANIFEST))
    assert (strict["attempts"], strict["quality"]) == (manifest["attempts"], manifest["quality"]) == (3, "flagged")
    assert manifest["seed"] in [retry_seed(5, a) for a in range(3)] and len({retry_seed(5, a) for a in range(3)}) == 3
    assert manifest["requested_seed"] == 5 and manifest["tc"] == strict["tc"] > 1e-6
    dropped = renderer("render.max_tc=1e-6", "render.retries=0", "render.on_fail=drop").render(
        request, "d", str(tmp_path / "d")
    )
    assert (dropped["status"], dropped["reason"], dropped["attempts"]) == ("failed", "quality_gate", 1)
    assert not storage.exists(str(tmp_path / "d"))


def test_consistency_selection_keeps_one_candidate_note_per_slot(renderer, tmp_path):
    import dataclasses

    from instrumentgen.instruments.generate import InstrumentCue, generate_instrument
    from instrumentgen.instruments.selection import candidate_seeds

    request = small_request(tmp_path, seed=2, candidates=3)
    loaded = renderer()
    row = loaded.render(request, "k", str(tmp_path / "k"))
    assert sum(row["candidates_kept"]) == 4 and len(row["candidates_kept"]) == 3
    # The level policy: a note is scaled only where it would clip, by its own gain in the manifest.
    gains = torch.tensor([n["gain"] for n in storage.read_json(str(tmp_path / "k" / storage.MANIFEST))["notes"]])
    kept = Instrument.read(str(tmp_path / "k")).audio / gains[:, None]
    cfg = load_config("tiny")
    candidates = [
        generate_instrument(
            loaded.lm,
            loaded.codec,
            loaded.clap,
            InstrumentCue(prompt="glassy bell"),
            dataclasses.replace(cfg.generate, seed=seed),
            cfg.data.note_duration_s,
            request.slots(),
        ).audio
        for seed in candidate_seeds(2, 3)
    ]
    picked = [int(np.argmin([float((kept[slot] - c[slot]).abs().max()) for c in candidates])) for slot in range(4)]
    for slot, c in enumerate(picked):  # every kept note is that slot's note of one candidate (24-bit rounding apart)
        assert float((kept[slot] - candidates[c][slot]).abs().max()) < 1e-5
    assert np.bincount(picked, minlength=3).tolist() == row["candidates_kept"]
    assert row["tc_without_selection"] == pytest.approx(
        tc(candidates[0], 44100, scales_from_config(cfg.metrics)).normalised.item(), rel=1e-4
    )


def test_a_batch_instrument_equals_the_served_one_note_for_note(renderer, tmp_path):
    """The batch Renderer and Serve's path (render_shard in shards of 2, then finish_instrument as the
    Scorer runs it) give the same notes and codes, byte for byte, and the same scores and per-note fields.

    Equal by construction: a batched conv's float rounding depends on the batch shape and on the CPU's
    kernels (one 24-bit LSB seen on AMD EPYC, enough to flip a consistency-selection choice), so both
    paths must run the same shapes. With generate.batch_size=2, the shard size, the batch path generates
    and decodes slots [0:2] and [2:4] exactly as the two served shards do."""
    import dataclasses

    from instrumentgen.instruments.generate import InstrumentCue
    from instrumentgen.instruments.slices import embedded_cue, finish_instrument, render_shard

    request = small_request(tmp_path, seed=4, candidates=2)
    loaded = renderer("generate.batch_size=2")
    batch_url, served_url = str(tmp_path / "batch"), str(tmp_path / "served")
    assert loaded.render(request, "b", batch_url)["status"] == "rendered"
    cfg = loaded.cfg
    cue = embedded_cue(InstrumentCue(prompt="glassy bell"), loaded.clap, loaded.lm.cfg)
    gen = dataclasses.replace(cfg.generate, seed=4)
    slots = request.slots()
    shards = [
        render_shard(
            loaded.lm,
            loaded.codec,
            None,
            cue=cue,
            gen_cfg=gen,
            duration_s=cfg.data.note_duration_s,
            slots=slots[i : i + 2],
            url=served_url,
            audio_format="wav24",
            candidates=2,
            metrics_cfg=cfg.metrics,
        )
        for i in (0, 2)
    ]
    served = finish_instrument(
        served_url,
        shards,
        {"prompt": "glassy bell", "seed": 4},
        "wav24",
        44100,
        round(cfg.data.note_duration_s * 44100),
    ).to_json()
    batch = storage.read_json(storage.join(batch_url, storage.MANIFEST))
    for name in [n["file"] for n in served["notes"]] + ["codes.npy", "instrument.sfz", "instrument.dspreset"]:
        assert storage.read_bytes(storage.join(batch_url, name)) == storage.read_bytes(storage.join(served_url, name))
    shared = (
        "tc",
        "tc_without_selection",
        "mad_pitch",
        "unvoiced",
        "candidates",
        "candidates_kept",
        "notes",
        "gain",
        "format",
        "sample_rate_hz",
        "num_samples",
        "codes",
        "bundle",
        "sfz",
        "dspreset",
    )
    assert {k: batch[k] for k in shared} == {k: served[k] for k in shared}
    assert {n["candidate"] for n in batch["notes"]} <= {0, 1} and sum(batch["candidates_kept"]) == 4
    assert not storage.exists(storage.join(batch_url, "candidates"))


def test_a_retry_keeps_only_the_kept_attempts_notes(renderer, tmp_path):
    """A flagged instrument keeps its lowest-TC attempt: its notes and codes are that attempt's, even
    when an earlier attempt wrote its notes first; no staged note remains."""
    from instrumentgen.instruments.generate import InstrumentCue
    from instrumentgen.instruments.slices import embedded_cue

    request = small_request(tmp_path, seed=7)
    loaded = renderer("render.max_tc=1e-6", "render.retries=2")
    url = str(tmp_path / "r")
    row = loaded.render(request, "r", url)
    manifest = storage.read_json(storage.join(url, storage.MANIFEST))
    attempt = [retry_seed(7, a) for a in range(3)].index(manifest["seed"])
    assert attempt > 0  # seed 7 keeps a retry: its staged notes replace the first attempt's
    alone = str(tmp_path / "alone")
    cue = embedded_cue(InstrumentCue(prompt="glassy bell"), loaded.clap, loaded.lm.cfg)
    scored = loaded.attempt(cue, manifest["seed"], 1, request.slots(), alone)
    assert scored.tc == row["tc"] == manifest["tc"] and (row["attempts"], row["quality"]) == (3, "flagged")
    assert np.array_equal(np.load(io.BytesIO(storage.read_bytes(storage.join(url, "codes.npy")))), scored.codes.numpy())
    for file in [note["file"] for note in manifest["notes"]]:
        assert storage.read_bytes(storage.join(url, file)) == storage.read_bytes(storage.join(alone, file))
    assert not storage.exists(storage.join(url, "candidates"))


# ---- the driver


def test_the_driver_plans_without_the_model_stack(checkpoint, tmp_path):
    """Planning names every instrument by the checkpoint's model_id and checks the library, importing no
    torch (about 500 MiB resident): the driver of a 100,000-instrument list stays small."""
    prompts = write_lines(str(tmp_path / "p.jsonl"), [{"prompt": f"driver prompt {i}", **SMALL} for i in range(3)])
    out = str(tmp_path / "library")
    script = (
        "import json, sys; from instrumentgen.config import load_config; "
        "from instrumentgen.instruments import library; from jobs import render; "
        "planned, _ = render.plan(load_config('tiny'), *sys.argv[1:3]); "
        "known = library.plan_library(sys.argv[3], [i for i, _ in planned]); "
        "print(json.dumps([[i for i, _ in planned], len(known.complete), 'torch' in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, checkpoint, prompts, out], capture_output=True, text=True, check=True
    )
    ids, complete, torch_imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert ids == [i for i, _ in job.plan(load_config("tiny"), checkpoint, prompts)[0]]  # same ids as with torch
    assert (len(ids), complete, torch_imported) == (3, 0, False)


# ---- the job on a local Ray and a real S3 server


def test_twenty_lines_three_bad_one_crashing_then_reruns_render_only_what_is_missing(
    checkpoint, s3_bucket, ray_local, capsys
):
    good = [{"prompt": f"test prompt number {i}", **SMALL} for i in range(15)]
    good.append({"family": "mallet", "source": "acoustic", **SMALL})
    good.append({"prompt": "two of these", "seed": 7, "variations": 2, **SMALL})
    bad = ["{broken", {"prompt": "x", "velocities": [99]}, {"prompt": "x", "unknown": 1}]
    lines = good[:5] + [bad[0]] + good[5:12] + [bad[1]] + good[12:] + [bad[2]]  # bad lines 6, 14, 20
    assert len(lines) == 20
    prompts = write_lines(storage.join(s3_bucket, "prompts.jsonl"), lines)
    out = storage.join(s3_bucket, "library")
    planned, _ = job.plan(load_config("tiny"), checkpoint, prompts)
    assert len(planned) == 18
    # The 7th instrument (line 8) raises inside the actor: one failure row, and the run goes on.
    fault = Fault("render.instrument", at=6, marker=storage.join(s3_bucket, "fired"), action="raise")
    stats = job.run(load_config("tiny"), checkpoint, prompts, out, fault=fault)
    assert (stats["instruments"], stats["rendered"], stats["skipped"], stats["failed"]) == (18, 17, 0, 4)
    assert stats["failed_by_reason"]["InjectedFault"] == 1
    assert storage.read_json(storage.join(out, "summary.json")) == stats
    failures = [json.loads(f) for f in storage.read_bytes(storage.join(out, "failures.jsonl")).decode().splitlines()]
    assert sorted((f["line"], f["reason"]) for f in failures) == [
        (6, "bad_json"),
        (8, "InjectedFault"),
        (14, "out_of_range"),
        (20, "unknown_field"),
    ]
    (crashed,) = [f for f in failures if f["reason"] == "InjectedFault"]
    assert crashed["message"] == "injected failure at render.instrument=6 (rank 0)"
    assert_consistent_library(out, [i for i, _ in planned if i != crashed["id"]])

    stats = job.run(load_config("tiny"), checkpoint, prompts, out)  # the re-run renders line 8 only
    assert (stats["rendered"], stats["skipped"], stats["failed"]) == (1, 17, 3)
    assert_consistent_library(out, [i for i, _ in planned])
    manifests = library.read_manifests(out)
    twins = sorted(
        (m.about["seed"], m.about["variation"]) for m in manifests.values() if m.about["prompt"] == "two of these"
    )
    assert twins == [(7, 0), (8, 1)]
    assert not np.array_equal(
        *[
            Instrument.read(storage.join(out, i)).audio.numpy()
            for i, m in manifests.items()
            if m.about["prompt"] == "two of these"
        ]
    )
    index = library.read_index(out).to_pylist()
    assert {r["id"]: r["tc"] for r in index} == {i: m.about["tc"] for i, m in manifests.items()}
    capsys.readouterr()
    assert job.main(args(checkpoint, prompts, out)) == 0
    assert "nothing to render: every instrument of the list is already complete" in capsys.readouterr().out
    stats = storage.read_json(storage.join(out, "summary.json"))
    assert (stats["rendered"], stats["skipped"]) == (0, 18)


def test_table2_report_matches_the_metric_functions(checkpoint, s3_bucket, ray_local):
    from instrumentgen.pretrained.clap import Clap

    lines = [
        {"prompt": p, "keys": [57, 60], "velocities": [75, 127]}
        for p in ("warm analog brass", "glassy bell", "dark plucked bass")
    ]
    out = storage.join(s3_bucket, "table2")
    assert job.main(args(checkpoint, write_lines(storage.join(s3_bucket, "t2.jsonl"), lines), out, "report=true")) == 0
    results = storage.read_json(storage.join(out, "results.json"))
    markdown = storage.read_bytes(storage.join(out, "results.md")).decode()
    assert "| Model | CLAP ↑ | MAD_pitch ↓ | TC ↓ | MOS_quality ↑ | MOS_text ↑ | MOS_TC ↑ |" in markdown
    assert storage.read_bytes(storage.join(out, "figures", "tc_per_prompt.png"))[:4] == b"\x89PNG"
    cfg = load_config("tiny")
    clap = Clap.load(cfg.clap)
    assert [p["prompt"] for p in results["prompts"]] == [line["prompt"] for line in lines]
    for row in results["prompts"]:
        instrument = Instrument.read(storage.join(out, row["id"]))
        audio = instrument.audio
        assert row["tc"] == pytest.approx(tc(audio, 44100, scales_from_config(cfg.metrics)).normalised.item(), rel=1e-3)
        mad = pitch_report(audio, 44100, instrument.pitches).mad_pitch
        assert (row["mad_pitch"] is None and np.isnan(mad)) or row["mad_pitch"] == pytest.approx(mad, abs=1e-3)
        expected = clap_score(clap.embed_text([row["prompt"]])[0], clap.embed_audio(audio, 44100))
        assert row["clap_score"] == pytest.approx(expected, abs=1e-3)
        assert f"| {row['prompt']} | 0 | {row['clap_score']:.3f} |" in markdown
    assert results["mean_tc"] == pytest.approx(np.mean([r["tc"] for r in results["prompts"]]))
    assert results["mean_clap_score"] == pytest.approx(np.mean([r["clap_score"] for r in results["prompts"]]))


def test_bad_arguments_are_one_line(checkpoint, tmp_path, capsys):
    assert job.main(["config=tiny", f"checkpoint={checkpoint}", f"out={tmp_path}"]) == 2
    assert "prompts= is required" in capsys.readouterr().err
    assert job.main(args(checkpoint, str(tmp_path / "p.txt"), str(tmp_path))) == 2
    assert "allowed: .jsonl or .csv" in capsys.readouterr().err
    assert job.main(args(checkpoint, str(tmp_path / "p.jsonl"), str(tmp_path), "render.on_fail=maybe")) == 2
    assert "render.on_fail='maybe' is not allowed; allowed: 'keep', 'drop'" in capsys.readouterr().err
    prompts = write_lines(str(tmp_path / "one.jsonl"), [{"prompt": "warm analog brass"}])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert job.main(args(str(corrupt), prompts, str(tmp_path))) == 2
    assert f"checkpoint='{corrupt}' is not an InstrumentLM checkpoint (UnpicklingError: " in capsys.readouterr().err
    assert job.main(args(str(tmp_path / "missing.pt"), prompts, str(tmp_path))) == 2
    assert f"checkpoint='{tmp_path}/missing.pt' does not exist" in capsys.readouterr().err
    empty = write_lines(str(tmp_path / "empty.csv"), [""])
    assert job.main(args(checkpoint, empty, str(tmp_path))) == 2
    assert capsys.readouterr().err == f"error: prompts={empty!r} is empty; allowed: a file with one prompt per line\n"
    (tmp_path / "file").write_text("x")
    assert job.main(args(checkpoint, prompts, str(tmp_path / "file" / "library"))) == 2
    assert "cannot write to " in capsys.readouterr().err


def test_a_mistyped_bucket_is_refused_before_any_work(checkpoint, tmp_path, s3_bucket, capsys):
    prompts = write_lines(str(tmp_path / "one.jsonl"), [{"prompt": "warm analog brass"}])
    missing = f"{s3_bucket}-mistyped"
    assert job.main(args(checkpoint, prompts, storage.join(missing, "library"))) == 2
    assert f"cannot write to '{missing}/library': no such file, folder or bucket" in capsys.readouterr().err
    assert not storage.exists(missing)


# ---- killed runs resume to a clean run's library


KILL_LINES = [{"prompt": f"kill test {i}", "seed": i, "keys": [48, 55], "velocities": [50, 100]} for i in range(10)]


@pytest.fixture(scope="module")
def clean_library(checkpoint, s3_server, ray_local, tmp_path_factory):
    root = str(tmp_path_factory.mktemp("clean"))
    prompts = write_lines(os.path.join(root, "kill.jsonl"), KILL_LINES)
    job.run(load_config("tiny"), checkpoint, prompts, os.path.join(root, "library"))
    return prompts, os.path.join(root, "library")


def assert_same_as_clean(out, clean):
    assert not [f for f in storage.list_files(out, temporary=True) if "/.tmp-" in f]  # raw listing: no temp object
    ids = sorted(library.read_manifests(clean))
    assert len(ids) == len(KILL_LINES)
    assert_consistent_library(out, ids)
    for instrument in ids:
        assert folder_files(out, instrument) == folder_files(clean, instrument), instrument


@pytest.mark.slow
def test_a_killed_driver_resumes_to_the_clean_library(checkpoint, clean_library, s3_bucket, ray_local, capsys):
    prompts, clean = clean_library
    out = storage.join(s3_bucket, "library")
    argv = [sys.executable, "-m", "jobs.render", *args(checkpoint, prompts, out)]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    driver = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not library.read_manifests(out) and time.time() < deadline and driver.poll() is None:
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    complete = library.read_manifests(out)
    assert 1 <= len(complete) < len(KILL_LINES), f"killed with {len(complete)} instruments complete; needs mid-run"
    for instrument, manifest in complete.items():  # no complete manifest over missing notes
        assert all(storage.exists(storage.join(out, instrument, n.file)) for n in manifest.notes)
    assert set(complete) <= pending.pending_ids(pending.pending_runs(out))  # the killed run's journal
    assert library.read_index(out).num_rows == 0
    capsys.readouterr()
    assert job.main(argv[3:]) == 0  # the re-run, here
    assert f"{len(complete)} already complete" in capsys.readouterr().out
    assert_same_as_clean(out, clean)


@pytest.mark.slow
def test_a_killed_actor_resumes_to_the_clean_library(checkpoint, clean_library, s3_bucket, ray_local):
    prompts, clean = clean_library
    out = storage.join(s3_bucket, "library")
    marker = storage.join(s3_bucket, "fault-fired")
    fault = Fault("render.instrument", at=3, marker=marker, action="kill")
    job.run(load_config("tiny"), checkpoint, prompts, out, fault=fault)  # Ray restarts the actor and retries
    assert storage.exists(marker)
    job.run(load_config("tiny"), checkpoint, prompts, out)  # the re-submission
    assert storage.read_json(storage.join(out, "summary.json"))["skipped"] == len(KILL_LINES)
    assert_same_as_clean(out, clean)
