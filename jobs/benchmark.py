"""Every performance claim of the project, each measured as a ratio against a baseline in one run.

    python -m jobs.benchmark                 # all areas, full size
    python -m jobs.benchmark --quick         # smaller sizes (minutes on a 2-core CPU)
    python -m jobs.benchmark --only metrics generation --json bench.json --figures docs/figures

Each area lives in `jobs/benchmarks/<area>.py` and exposes `run(quick: bool) -> list[dict]`
with rows {benchmark, baseline, ours, baseline_s, ours_s, ratio, note}. The table printed
here is what `docs/benchmarks.md` records, with this command.
"""
from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys

import torch

AREAS = ("codec", "generation", "metrics", "preprocess", "serve", "training")
COLUMNS = ("benchmark", "baseline", "ours", "baseline_s", "ours_s", "ratio", "note")


def markdown_table(rows: list[dict]) -> str:
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=AREAS, default=list(AREAS), help="areas to run")
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--figures", help="also draw each area's figures (PNG) into this folder")
    args = parser.parse_args(argv)
    print(f"# machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, python {sys.version.split()[0]}", flush=True)
    rows = []
    for area in args.only:
        module = importlib.import_module(f"jobs.benchmarks.{area}")
        area_rows = module.run(quick=args.quick)
        print(f"\n## {area}\n\n{markdown_table(area_rows)}", flush=True)
        if args.figures and hasattr(module, "plot"):
            module.plot(area_rows, args.figures)
        rows += [{"area": area, **row} for row in area_rows]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
