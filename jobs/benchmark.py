"""Every performance claim of the project, measured as a ratio against a baseline in one run, and the report.

    python -m jobs.benchmark                     # every area, full size: docs/benchmarks.{json,md} + figures
    python -m jobs.benchmark --only metrics      # one area: only its results, table and figures change
    python -m jobs.benchmark --quick             # a minute's version (CI): into a temp folder, never docs/
    python -m jobs.benchmark --render            # no run: docs/benchmarks.md again from the template + JSON

Each area is `jobs/benchmarks/<area>.py` with `run(quick: bool) -> list[dict]`, rows {benchmark,
baseline, ours, baseline_s, ours_s, ratio, goal, note} (goal: the ratio to reach, a text, or None),
and optionally `plot(rows, folder)`. Each area's result (rows, command, machine) is kept in
`<out>/benchmarks.json`; `<out>/benchmarks.md` is `docs/benchmarks.template.md` (the hand-written
explanations) with each `{{area:<name>}}` line replaced by that area's command, machine and table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import tempfile
from pathlib import Path

import torch

# Fixed, so that a missing area module fails loudly instead of vanishing from the report.
AREAS = (
    "generation",
    "breakdown",
    "preprocess",
    "codec",
    "metrics",
    "training",
    "quantizer",
    "serve",
    "render",
    "render_scale",
)
COLUMNS = ("benchmark", "baseline", "ours", "baseline_s", "ours_s", "ratio", "goal", "note")
HEADERS = ("benchmark", "baseline", "ours", "baseline s", "ours s", "ratio", "goal", "note")
DOCS = Path(__file__).resolve().parents[1] / "docs"
TEMPLATE = DOCS / "benchmarks.template.md"
RESULTS, REPORT, FIGURES = "benchmarks.json", "benchmarks.md", "figures"
PLACEHOLDER = re.compile(r"^\{\{area:(\w+)\}\}$", re.M)


def this_machine() -> dict:
    """What the numbers depend on: cores, torch threads, the GPU if any, versions."""
    return {
        "cores": os.cpu_count(),
        "cpu": platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
    }


def describe_machine(machine: dict) -> str:
    """One line for the report: cores, torch threads, GPU, versions."""
    return (
        f"{machine['cores']} cores ({machine['cpu']}), {machine['torch_threads']} torch threads, "
        f"{machine['gpu'] or 'no GPU'}; torch {machine['torch']}, Python {machine['python']}"
    )


def check_rows(area: str, rows: list[dict]) -> list[dict]:
    """`rows` as they are, once each has every column (the goal included, None when there is none)."""
    for row in rows:
        missing = [column for column in COLUMNS if column not in row]
        if missing:
            raise ValueError(f"jobs/benchmarks/{area}.py: row {row.get('benchmark')!r} lacks {missing}")
    return rows


def goal_cell(goal: float | str | None, ratio: float) -> str:
    """A number is a ratio to reach, checked here (✔/✘); a text is shown as is."""
    if goal is None:
        return "—"
    if isinstance(goal, str):
        return goal
    return f"≥ {goal:g}× {'✔' if ratio >= goal else '✘'}"


def _cell(value) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")


def markdown_table(rows: list[dict]) -> str:
    """The area's rows as a markdown table with HEADERS."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        cells = {**row, "ratio": f"**{row['ratio']:.3g}×**", "goal": goal_cell(row["goal"], row["ratio"])}
        lines.append("| " + " | ".join(_cell(cells.get(column, "")) for column in COLUMNS) + " |")
    return "\n".join(lines)


def area_block(area: str, result: dict | None) -> str:
    """What replaces `{{area:<area>}}`: the command, the machine and the table (or how to measure it)."""
    if result is None:
        return f"Not measured yet: `python -m jobs.benchmark --only {area}` fills this table."
    quick = " Quick run: smaller sizes, not comparable with the full run." if result["quick"] else ""
    return (
        f"```\n{result['command']}\n```\n\nMachine: {describe_machine(result['machine'])}.{quick}\n\n"
        f"{markdown_table(result['rows'])}"
    )


def render_report(template: str, results: dict[str, dict]) -> str:
    """The template with every area's block in place; each area appears exactly once in the template."""
    named = PLACEHOLDER.findall(template)
    if sorted(named) != sorted(AREAS):
        raise ValueError(f"{TEMPLATE.name} names areas {named}; expected each of {list(AREAS)} once")
    return PLACEHOLDER.sub(lambda found: area_block(found[1], results.get(found[1])), template)


def run_area(area: str, quick: bool, figures: Path) -> dict:
    """Run one area; its result as stored in the JSON, its figures drawn into `figures`."""
    module = importlib.import_module(f"jobs.benchmarks.{area}")
    rows = check_rows(area, module.run(quick=quick))
    if hasattr(module, "plot"):
        module.plot(rows, str(figures))
    command = f"python -m jobs.benchmark --only {area}" + (" --quick" if quick else "")
    return {"command": command, "machine": this_machine(), "quick": quick, "rows": rows}


def write_report(out: Path, results: dict[str, dict]) -> Path:
    """`<out>/benchmarks.json` and `<out>/benchmarks.md` from `results`; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS).write_text(
        json.dumps({area: results[area] for area in AREAS if area in results}, indent=1, ensure_ascii=False) + "\n"
    )
    report = out / REPORT
    report.write_text(render_report(TEMPLATE.read_text(), results))
    return report


def read_results(out: Path) -> dict[str, dict]:
    """The results kept in `<out>/benchmarks.json` ({} when there are none yet)."""
    path = out / RESULTS
    return json.loads(path.read_text()) if path.exists() else {}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    """Run the chosen areas (or none, --render) and write the report; returns every area's result."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=AREAS, default=list(AREAS), help="areas to run")
    parser.add_argument("--quick", action="store_true", help="smaller sizes; asserts nothing about time")
    parser.add_argument(
        "--out",
        type=Path,
        help="folder of benchmarks.{json,md} and figures/ "
        "(default: docs/ for full runs, a new temp folder for --quick)",
    )
    parser.add_argument("--render", action="store_true", help="run nothing; write the report from the JSON")
    args = parser.parse_args(argv)
    out = args.out or (Path(tempfile.mkdtemp(prefix="benchmarks-")) if args.quick else DOCS)
    if args.quick and out.resolve() == DOCS:
        parser.error(
            "--quick results never go to docs/ (they would replace the recorded full runs); give --out <another folder>"
        )
    results = read_results(out)
    if not args.render:
        print(f"# machine: {describe_machine(this_machine())}", flush=True)
        for area in args.only:
            results[area] = run_area(area, args.quick, out / FIGURES)
            print(f"\n## {area}\n\n{markdown_table(results[area]['rows'])}", flush=True)
            write_report(out, results)  # after each area: a later failure keeps the areas done
    print(f"\nwrote {write_report(out, results)}", flush=True)
    return results


if __name__ == "__main__":
    main()
