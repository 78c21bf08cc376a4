"""`make demo` end to end on the session's Ray: every step's output exists and is sound, and a
re-run reuses what the first run completed."""
import json
import re

import pytest
import soundfile as sf

from jobs import demo

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_loop_then_reuses_it(ray_local, cache, tmp_path, capsys):
    out = tmp_path / "demo"
    assert demo.main([str(out)]) == 0
    first = capsys.readouterr().out
    losses = re.search(r"loss (\d+\.\d+) -> (\d+\.\d+); plot", first).groups()
    start, end = map(float, losses)
    assert end < 0.5 * start  # 200 steps on 6 fixture instruments
    assert (out / "figures" / "training_loss.png").stat().st_size > 10_000
    manifest = json.loads((out / "instrument" / "manifest.json").read_text())
    assert len(manifest["notes"]) == 440
    wav = out / "instrument" / manifest["notes"][0]["file"]
    assert sf.info(str(wav)).samplerate == 44_100
    assert (out / "instrument" / manifest["sfz"]).exists() and (out / "instrument" / manifest["dspreset"]).exists()
    results = json.loads((out / "eval" / "results.json").read_text())
    assert len(results["models"][0]["instruments"]) == 2
    assert "2 test instruments, 0 already scored" in first
    assert first.count("CLAP cue -> RVQ codes") == 2

    metrics = (out / "runs" / "demo" / "metrics.csv").read_bytes()  # with each window's timings
    assert demo.main([str(out)]) == 0
    again = capsys.readouterr().out
    assert "shards is already complete: {'test': 36, 'train': 108, 'valid': 36} notes kept" in again
    assert (out / "runs" / "demo" / "metrics.csv").read_bytes() == metrics  # the finished run is not retrained
    assert "2 test instruments, 2 already scored" in again
