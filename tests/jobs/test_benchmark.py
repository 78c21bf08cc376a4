"""jobs.benchmark writes docs/benchmarks.md: the committed page is the writer's output, shaped like the template."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest

from jobs.benchmark import (
    AREAS,
    COLUMNS,
    DOCS,
    HEADERS,
    PLACEHOLDER,
    TEMPLATE,
    check_rows,
    goal_cell,
    main,
    markdown_table,
    render_report,
)

HEADER_LINE = "| " + " | ".join(HEADERS) + " |"
RESULTS = json.loads((DOCS / "benchmarks.json").read_text())


def sections(markdown: str) -> dict[str, str]:
    """{`## heading`: the text up to the next heading}."""
    parts = re.split(r"^(## .+)$", markdown, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def table_rows(text: str) -> list[list[str]]:
    """Every table in `text` as its data rows (header and rule left out), tables one after another."""
    lines = [line for line in text.splitlines() if line.startswith("| ") and line != HEADER_LINE]
    return [line.strip("|").split(" | ") for line in lines]


def test_committed_report_is_what_the_writer_writes():
    assert (DOCS / "benchmarks.md").read_text() == render_report(TEMPLATE.read_text(), RESULTS), (
        "docs/benchmarks.md is stale: run python -m jobs.benchmark --render"
    )


def test_report_has_the_templates_sections_and_one_table_per_area():
    template, report = sections(TEMPLATE.read_text()), sections((DOCS / "benchmarks.md").read_text())
    assert list(report) == list(template)
    for heading, prose in template.items():
        areas = PLACEHOLDER.findall(prose)
        text = report[heading]
        assert text.count(HEADER_LINE) == sum(area in RESULTS for area in areas), heading
        for area in areas:
            if area in RESULTS:
                assert f"```\n{RESULTS[area]['command']}\n```" in text
                assert len(table_rows(text)) == len(RESULTS[area]["rows"])
                assert all(len(cells) == len(COLUMNS) for cells in table_rows(text))
            else:
                assert f"`python -m jobs.benchmark --only {area}`" in text


def test_recorded_results_are_full_runs_with_machine_and_goal():
    assert set(RESULTS) <= set(AREAS)
    for area, result in RESULTS.items():
        assert result["command"] == f"python -m jobs.benchmark --only {area}" and not result["quick"]
        assert {"cores", "torch_threads", "gpu"} <= set(result["machine"])
        for row in result["rows"]:
            assert set(COLUMNS) <= set(row), (area, row["benchmark"])
            assert row["ratio"] == pytest.approx(row["baseline_s"] / row["ours_s"])


def test_every_area_has_a_module():
    missing = [area for area in AREAS if importlib.util.find_spec(f"jobs.benchmarks.{area}") is None]
    assert not missing, f"jobs/benchmarks/ lacks {missing}"


def test_goals_are_checked_and_every_row_has_every_column():
    assert goal_cell(20.0, 31.4) == "≥ 20× ✔"
    assert goal_cell(1.6, 1.38) == "≥ 1.6× ✘"
    assert goal_cell("ideal 2", 1.4) == "ideal 2" and goal_cell(None, 3.0) == "—"
    row = {"benchmark": "b", "baseline": "x", "ours": "y", "baseline_s": 2.0, "ours_s": 1.0, "ratio": 2.0, "note": ""}
    with pytest.raises(ValueError, match=r"jobs/benchmarks/serve.py: row 'b' lacks \['goal'\]"):
        check_rows("serve", [row])
    assert check_rows("serve", [{**row, "goal": None}]) == [{**row, "goal": None}]
    table = markdown_table(
        [
            {
                "benchmark": "a | b",
                "baseline": "x",
                "ours": "y",
                "baseline_s": 2.0,
                "ours_s": 1.0,
                "ratio": 2.0,
                "goal": 1.5,
                "note": "",
            }
        ]
    )
    assert table.splitlines()[2] == "| a \\| b | x | y | 2 | 1 | **2×** | ≥ 1.5× ✔ |  |"


def test_template_must_name_every_area_once():
    with pytest.raises(ValueError, match="expected each of"):
        render_report(TEMPLATE.read_text().replace("{{area:codec}}", ""), RESULTS)


def test_quick_run_never_writes_to_docs():
    before = (DOCS / "benchmarks.md").read_text()
    with pytest.raises(SystemExit) as exit_info:
        main(["--quick", "--only", "metrics", "--out", str(DOCS)])
    assert exit_info.value.code == 2
    assert (DOCS / "benchmarks.md").read_text() == before


@pytest.mark.slow
def test_quick_run_of_one_area_writes_its_table(tmp_path):
    before = (DOCS / "benchmarks.md").read_text()
    subprocess.run(
        [sys.executable, "-m", "jobs.benchmark", "--quick", "--only", "metrics", "--out", str(tmp_path)],
        check=True,
        timeout=600,
    )
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    assert list(results) == ["metrics"] and results["metrics"]["quick"] is True
    assert results["metrics"]["command"] == "python -m jobs.benchmark --only metrics --quick"
    report = sections((tmp_path / "benchmarks.md").read_text())
    metrics = next(text for heading, text in report.items() if "metrics.py" in heading)
    assert metrics.count(HEADER_LINE) == 1 and "Quick run" in metrics
    rows = table_rows(metrics)
    assert len(rows) == len(results["metrics"]["rows"]) == 2
    assert all(len(cells) == len(COLUMNS) for cells in rows)
    assert rows[0][6].startswith("≥ 10×")  # the goal column is filled
    assert sum(HEADER_LINE in text for text in report.values()) == 1  # no other area was run into this folder
    assert (DOCS / "benchmarks.md").read_text() == before
