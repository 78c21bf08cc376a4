"""`make demo` end to end on the session's Ray: every step's output exists and is sound, and a
re-run reuses what the first run completed. Checked on the files the demo writes, not its console."""

import json

import pytest
import soundfile as sf

from instrumentgen.training.checkpoint import read_metrics
from jobs import demo

pytestmark = pytest.mark.slow


def snapshot(folder):
    """{relative path: (size, mtime_ns)} of every file under `folder`."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()
    }


def test_demo_runs_the_whole_loop_then_reuses_it(ray_local, cache, tmp_path):
    out = tmp_path / "demo"
    assert demo.main([str(out)]) == 0

    shards = json.loads((out / "shards" / "manifest.json").read_text())
    assert shards["kept"] == {"test": 36, "train": 108, "valid": 36}
    history = read_metrics(str(out / "runs" / "demo" / "metrics.csv"))
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]  # 200 steps on 6 fixture instruments
    assert (out / "runs" / "demo" / "model.pt").stat().st_size > 100_000
    assert (out / "figures" / "training_loss.png").read_bytes()[:4] == b"\x89PNG"

    (served,) = [p for p in (out / "served").iterdir() if (p / "manifest.json").exists()]  # over HTTP, by Serve
    manifest = json.loads((served / "manifest.json").read_text())
    assert len(manifest["notes"]) == 440 and manifest["prompt"] == demo.PROMPT and manifest["seed"] == 0
    note = sf.info(str(served / manifest["notes"][0]["file"]))
    assert (note.samplerate, note.subtype) == (44_100, "PCM_24")
    assert (served / manifest["sfz"]).exists() and (served / manifest["dspreset"]).exists()
    assert (served / manifest["bundle"]).stat().st_size > 440 * 1000

    library = json.loads((out / "library" / "summary.json").read_text())
    assert library["rendered"] == len(demo.LIBRARY_PROMPTS) and (out / "library" / "index.parquet").exists()
    assert "|" in (out / "library" / "results.md").read_text()  # the Table 2 report
    results = json.loads((out / "eval" / "results.json").read_text())
    assert len(results["models"][0]["instruments"]) == 2

    before = {name: snapshot(out / name) for name in ("nsynth", "shards", "runs", "eval", "served")}
    assert demo.main([str(out)]) == 0
    # Nothing completed is redone: the fixture set, the shards, the served instrument, the trained run's
    # checkpoints and metrics, and the per-instrument scores stay as they were (the finished run's
    # model.pt is exported again, same size).
    assert snapshot(out / "nsynth") == before["nsynth"] and snapshot(out / "shards") == before["shards"]
    assert snapshot(out / "served") == before["served"]  # found served, so no Serve started and nothing rewritten
    trained = {k: v for k, v in snapshot(out / "runs").items() if "checkpoint_" in k or k.endswith("metrics.csv")}
    assert trained and all(before["runs"][k] == v for k, v in trained.items())
    scores = {k: v for k, v in snapshot(out / "eval").items() if "/instruments/" in f"/{k}"}
    assert scores and all(before["eval"][k] == v for k, v in scores.items())
    again = json.loads((out / "library" / "summary.json").read_text())
    assert (again["rendered"], again["skipped"]) == (0, len(demo.LIBRARY_PROMPTS))
