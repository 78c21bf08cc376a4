"""jobs.paper_check at the tiny size: the cluster's chain, with the manifests' own job arguments, on a
loopback S3 bucket (the paper size is the manual check, `make paper-check`: ~10 min on 2 cores)."""

from __future__ import annotations

import re
import sys

import pytest

from jobs import paper_check

STAGES = ["weights", "stage_weights", "preprocess", "train", "serve", "evaluate"]


@pytest.mark.slow
def test_the_chain_runs_each_stage_on_what_the_previous_wrote(ray_local, s3_server, cache, tmp_path, capsys):
    # On the session's Ray and its loopback S3 server, which the Ray workers already use (the manual
    # check, `python -m jobs.paper_check`, starts both of its own).
    stages = paper_check.run("tiny", tmp_path, endpoint=s3_server)
    out = capsys.readouterr().out
    for url in [
        "s3://paper-check/weights/manifest.json",
        "s3://paper-check/shards/manifest.json",
        "s3://paper-check/runs/paper-check/model.pt",
        "s3://paper-check/evaluation/paper-check/results.json",
    ]:
        assert f"   wrote {url}\n" in out
    assert re.search(r"   wrote s3://paper-check/instruments/[\w-]+/manifest.json\n", out)
    table = stages.table().splitlines()
    assert [row.split(" | ")[0].lstrip("| ") for row in table[2:]] == STAGES
    assert all(row["seconds"] > 0 and row["peak_gib"] > 0 for row in stages.rows)
    assert "wrote 8 notes" in out


def test_bad_arguments_are_one_line(capsys):
    assert paper_check.main(["size=huge"]) == 2
    assert capsys.readouterr().err == "error: size='huge' is not allowed; allowed: paper, tiny\n"
    assert paper_check.main(["bucket=s3://x"]) == 2
    assert "argument 'bucket=s3://x' is not allowed" in capsys.readouterr().err


def test_local_arguments_replace_the_manifests_own():
    seen = {}
    module = type("M", (), {"main": staticmethod(lambda argv: seen.setdefault("argv", argv) and 0)})
    sys.modules["fake_job"] = module
    try:
        paper_check.run_job("fake_job", ["config=paper", "actors=8", "out=s3://b/o"], ["actors=1", "config=tiny"])
    finally:
        del sys.modules["fake_job"]
    assert seen["argv"] == ["config=tiny", "actors=1", "out=s3://b/o"]
