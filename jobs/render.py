"""Ray job: a prompt list (JSONL or CSV) -> a library of instruments in object storage, resumable.

    ray job submit -- python -m jobs.render config=paper checkpoint=s3://b/runs/x/model.pt \\
        prompts=s3://b/prompts.jsonl out=s3://b/library [report=true] [render.actors=8 render.num_gpus=1]

The driver reads and validates the prompt list (bad lines -> failures with line numbers), expands
variations, computes each instrument's id and skips the ids whose manifest exists. The rest become a
Ray Data dataset, one row per instrument, mapped by a pool of `render.actors` `RenderActor`s (each
keeps the LM, codec and CLAP loaded, renders and writes its instrument itself and returns one small
JSON row). At the end: `failures.jsonl`, `summary.json`, `index.parquet` rebuilt from the manifests
and, with `report=true`, the paper's Table 2 for the list (`results.md`, `results.json`, a figure).
See docs/batch.md.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import numpy as np
import ray
from tqdm import tqdm

from instrumentgen import storage
from instrumentgen.config import Config, ConfigError
from instrumentgen.errors import UserError
from instrumentgen.faults import Fault
from instrumentgen.instruments import library
from instrumentgen.instruments.prompts import (
    RenderRequest,
    expand_variations,
    instrument_id,
    prompt_format,
    read_prompts,
)
from instrumentgen.instruments.render import Renderer, checkpoint_id, render_settings
from instrumentgen.metrics.aggregate import finite_mean
from jobs.entry import job_main, parse_job_args

REQUIRED_KEYS = {
    "checkpoint": "<exported checkpoint, path or URL>",
    "prompts": "<a .jsonl or .csv file>",
    "out": "<the library folder, path or URL>",
}


class RenderActor:
    """One render worker of the Ray Data actor pool: models loaded once, one instrument per batch."""

    def __init__(self, cfg: Config, checkpoint: str, out: str, fault: Fault | None = None):
        import torch

        if not cfg.render.num_gpus:  # CPU actors share the node's cores: no oversubscription
            torch.set_num_threads(max(1, int(cfg.render.num_cpus)))
        self.renderer, self.out, self.fault = Renderer(cfg, checkpoint), out, fault

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = []
        for index, request_json, instrument in zip(batch["index"], batch["request"], batch["id"]):
            request = RenderRequest.from_json(str(request_json))
            try:
                row = self.renderer.render(
                    request, str(instrument), storage.join(self.out, str(instrument)), self.fault, int(index)
                )
            except UserError as e:  # this instrument's own problem (unreadable reference, bad cue): report it
                row = {
                    "id": str(instrument),
                    "line": request.line,
                    "name": request.name,
                    "status": "failed",
                    "reason": type(e).__name__,
                    "message": str(e),
                }
            rows.append(json.dumps(row))
        return {"result": np.array(rows)}


# Private parser, following jobs/evaluate.py's parse_args: to be replaced by the shared helper for
# a job's own keys + config overrides that jobs/entry.py is getting.
def parse_args(argv: list[str]) -> tuple[Config, str, str, str, bool]:
    """`checkpoint=`, `prompts=`, `out=`, `report=` and config overrides -> (cfg, checkpoint, prompts, out, report)."""
    own, cfg = parse_job_args(argv, REQUIRED_KEYS, {"report": "true|false"})
    report = (own["report"] or "false").lower()
    if report not in ("true", "false"):
        raise ConfigError(f"report={own['report']!r} is not allowed; allowed: true, false")
    prompt_format(own["prompts"])
    return cfg, own["checkpoint"], own["prompts"], own["out"], report == "true"


def plan(cfg: Config, checkpoint: str, prompts: str) -> tuple[list[tuple[str, RenderRequest]], list[dict]]:
    """The prompt list -> ([(id, request)] one per instrument, first occurrence of each id; failures by line)."""
    requests, failures = read_prompts(prompts, cfg.generate.seed, cfg.render.max_variations, cfg.render.max_candidates)
    model_id, settings = checkpoint_id(checkpoint), render_settings(cfg)
    planned = {}
    for request in requests:
        for one in expand_variations(request):
            planned.setdefault(instrument_id(one, model_id, settings), one)
    return list(planned.items()), [f.to_dict() for f in failures]


def build_dataset(
    cfg: Config, checkpoint: str, out: str, todo: list[tuple[int, str, RenderRequest]], fault: Fault | None
) -> ray.data.Dataset:
    """One row per instrument to render -> one small JSON result row each, from the actor pool."""
    rows = [{"index": index, "id": instrument, "request": request.to_json()} for index, instrument, request in todo]
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    # batch_size=1: one instrument per call, so a slow instrument never holds others back and a
    # killed actor loses one instrument's work.
    return ds.map_batches(
        RenderActor,
        fn_constructor_args=(cfg, checkpoint, out, fault),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=min(cfg.render.actors, len(rows))),
        num_cpus=cfg.render.num_cpus,
        num_gpus=cfg.render.num_gpus,
    )


def summary(stats: dict) -> str:
    """The end-of-run lines a person reads."""
    failed = ", ".join(f"{reason} {n}" for reason, n in Counter(stats["failed_by_reason"]).most_common()) or "none"

    def score(key):
        return "n/a" if stats[key] is None else f"{stats[key]:.3f}"

    lines = [
        f"{stats['instruments']} instruments in the list: rendered {stats['rendered']}, skipped as already "
        f"complete {stats['skipped']}, failed {stats['failed']} ({failed})",
        f"mean TC {score('mean_tc')}, mean MAD_pitch {score('mean_mad_pitch')} over the list's "
        f"{stats['complete']} complete instruments; {stats['per_minute']:.1f} instruments/min this run",
    ]
    if stats["rendered"] == 0 and stats["skipped"] == stats["instruments"]:
        lines.insert(0, "nothing to render: every instrument of the list is already complete")
    return "\n".join(lines)


def run(cfg: Config, checkpoint: str, prompts: str, out: str, report: bool = False, fault: Fault | None = None) -> dict:
    """Render every instrument of `prompts` that `out` lacks; write failures, summary, index (and Table 2).

    Returns the summary (also `<out>/summary.json`). `fault`: a test's armed failure (`instrumentgen.faults`)."""
    start = time.perf_counter()
    planned, failures = plan(cfg, checkpoint, prompts)
    done = library.complete_ids(out, [i for i, _ in planned])
    todo = [(index, i, request) for index, (i, request) in enumerate(planned) if i not in done]
    print(
        f"{len(planned)} instruments from {prompts}: {len(done)} already complete, {len(todo)} to render; "
        f"{len(failures)} lines not usable",
        flush=True,
    )
    rendered, flagged = 0, 0
    if todo:
        results = build_dataset(cfg, checkpoint, out, todo, fault).iter_rows()
        bar = tqdm(results, total=len(todo), desc="instruments", unit="instrument")
        for row in bar:
            result = json.loads(row["result"])
            if result["status"] == "rendered":
                rendered += 1
                flagged += result["quality"] == "flagged"
            else:
                failures.append(
                    {
                        "line": result["line"],
                        "reason": result["reason"],
                        "message": result["message"],
                        "id": result["id"],
                    }
                )
            bar.set_postfix(per_min=f"{60 * bar.n / max(time.perf_counter() - start, 1e-9):.1f}")
    elapsed_s = time.perf_counter() - start
    index = library.write_index(out)
    ids = {i for i, _ in planned}
    listed = [row for row in index.to_pylist() if row["id"] in ids]
    stats = {
        "instruments": len(planned),
        "rendered": rendered,
        "skipped": len(done),
        "failed": len(failures),
        "flagged": flagged,
        "failed_by_reason": dict(Counter(f["reason"] for f in failures)),
        "complete": len(listed),
        "mean_tc": finite_mean([r["tc"] for r in listed]),
        "mean_mad_pitch": finite_mean([r["mad_pitch"] for r in listed]),
        "elapsed_s": round(elapsed_s, 2),
        "per_minute": 60 * rendered / max(elapsed_s, 1e-9),
        "library_instruments": index.num_rows,
    }
    library.write_failures(out, failures)
    storage.write_json(storage.join(out, "summary.json"), stats)
    if report:
        manifests = library.read_manifests(out, [i for i, _ in planned])
        model = checkpoint.rstrip("/").rsplit("/", 1)[-1]
        library.write_report(out, [manifests[i] for i, _ in planned if i in manifests], model)
    print(summary(stats), flush=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.render ...`: exit 0, or 2 with one line for a user error."""
    return job_main(argv, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
