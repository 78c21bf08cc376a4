"""`python -m jobs.preprocess` with bad input: one line on stderr, exit code 2, before Ray starts."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("source", ["/nonexistent", "/nonexistent.tfrecord"])
def test_a_missing_source_is_one_line_and_exit_code_2(tmp_path, source):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.preprocess",
            "config=tiny",
            f"data.source={source}",
            f"data.shards={tmp_path / 'shards'}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert (
        done.stderr == f"error: data.source={source!r} does not exist; allowed: an NSynth split as a json/wav "
        "folder (with examples.json) or a TFRecord file, path or URL\n"
    )
    assert not (tmp_path / "shards").exists()
