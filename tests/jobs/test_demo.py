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
    served = re.search(r"-> (\S+)/\n", first.split("=== 5.")[1]).group(1)  # over HTTP, by the Serve app
    manifest = json.loads((out / "served" / served.rsplit("/", 1)[-1] / "manifest.json").read_text())
    assert len(manifest["notes"]) == 440 and manifest["prompt"] == demo.PROMPT
    folder = out / "served" / served.rsplit("/", 1)[-1]
    assert sf.info(str(folder / manifest["notes"][0]["file"])).samplerate == 44_100
    assert (folder / manifest["sfz"]).exists() and (folder / manifest["dspreset"]).exists()
    assert re.search(r"page: http://127\.0\.0\.1:\d+/\?id=[0-9a-f]+", first)
    library = json.loads((out / "library" / "summary.json").read_text())
    assert library["rendered"] == len(demo.LIBRARY_PROMPTS) and (out / "library" / "index.parquet").exists()
    assert (out / "library" / "results.md").exists()  # the Table 2 report
    results = json.loads((out / "eval" / "results.json").read_text())
    assert len(results["models"][0]["instruments"]) == 2
    assert "2 test instruments, 0 already scored" in first
    assert first.count("CLAP cue -> RVQ codes") == 2 and re.search(
        r"codebook 0: perplexity [\d.]+, \d+ of 64 entries", first
    )

    metrics = (out / "runs" / "demo" / "metrics.csv").read_bytes()  # with each window's timings
    assert demo.main([str(out)]) == 0
    again = capsys.readouterr().out
    assert "shards is already complete: {'test': 36, 'train': 108, 'valid': 36} notes kept" in again
    assert (out / "runs" / "demo" / "metrics.csv").read_bytes() == metrics  # the finished run is not retrained
    assert "2 test instruments, 2 already scored" in again
    assert f"{len(demo.LIBRARY_PROMPTS)} already complete, 0 to render" in again
    assert "noise, not music" in again  # it says what the tiny models can and cannot do
