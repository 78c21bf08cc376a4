"""jobs.gpu_check: refuses cleanly without a GPU, and its measurements run (tiny sizes, on the CPU)."""

from __future__ import annotations

import re

import pytest
import torch

from jobs import gpu_check


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the check would really run")
def test_without_a_gpu_it_measures_nothing_and_says_so(capsys, monkeypatch, tmp_path):
    template = tmp_path / "benchmarks.template.md"
    template.write_text(gpu_check.TEMPLATE.read_text())
    monkeypatch.setattr(gpu_check, "TEMPLATE", template)
    assert gpu_check.main([]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: jobs.gpu_check needs a CUDA GPU and torch sees none")
    assert template.read_text() == gpu_check.TEMPLATE.read_text()  # the recorded block is kept


def test_the_docs_say_whether_it_has_run():
    block = gpu_check.block_pattern("gpu_check").search(gpu_check.TEMPLATE.read_text())
    assert block, "docs/benchmarks.template.md lacks the gpu_check block"
    assert "python -m jobs.gpu_check" in block[0]
    assert ("Not run yet" in block[0]) != ("Machine:" in block[0])


def test_measurements_run_and_fill_the_block(cache, tmp_path):
    rows = gpu_check.measure("cpu", "tiny", gpu_check.CPU_SIZES)
    assert [row["measure"].split(",")[0].split(":")[0] for row in rows] == [
        "one 8-note instrument end to end",
        "CFG",
        "TC of 8 notes",
        "DAC decode",
    ]
    assert float(rows[1]["value"].rstrip("x")) > 0 and re.fullmatch(r"\d+\.\d s", rows[0]["value"])
    template = tmp_path / "t.md"
    template.write_text("before\n<!-- gpu_check:start -->\nNot run yet.\n<!-- gpu_check:end -->\nafter\n")
    gpu_check.write_block(template, "gpu_check", gpu_check.table(rows, "a test machine"))
    text = template.read_text()
    assert text.startswith("before\n<!-- gpu_check:start -->\n```\npython -m jobs.gpu_check\n```")
    assert "Not run yet" not in text and "Machine: a test machine." in text and text.endswith("end -->\nafter\n")
    assert text.count("| ") >= 4 * 3
