"""Ray job: a prompt list (JSONL or CSV) -> a library of instruments in object storage, resumable.

    ray job submit -- python -m jobs.render config=paper checkpoint=s3://b/runs/x/model.pt \\
        prompts=s3://b/prompts.jsonl out=s3://b/library [report=true] [render.actors=8 render.num_gpus=1]

Before Ray starts: the prompt file is read and checked (missing, empty, a CSV without a known
header: one line, exit 2), the checkpoint must exist and `out=` must take a probe object (its
bucket must exist). Then the driver validates the lines (bad lines -> failures with line
numbers), expands variations, computes each instrument's id and finds the finished ones from the
library's index and the journals of killed runs (`library.plan_library`; the driver imports no
torch, and lists the instrument folders only after a big killed run). It records the ids it will render in a journal
(`pending.record_run`). The rest become a Ray Data dataset in blocks of up to `BLOCK_ROWS`
instruments, mapped by a pool of `render.actors` `RenderActor`s (each keeps the models loaded and
calls `render_isolated` per instrument: a complete folder is skipped, an incomplete one cleared,
transient storage errors retried, any other exception a failure row, so one instrument never ends
the run). At the end: `failures.jsonl`, `summary.json`, the index updated with this run's rows
only (then the journals are removed) and, with `report=true`, the paper's Table 2 for the list
from the index (`results.md`, `results.json`, a figure). Progress: a bar on a terminal, else one
line every `PROGRESS_EVERY_S`. See docs/batch.md.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from tqdm import tqdm

from instrumentgen import storage
from instrumentgen.config import Config, ConfigError
from instrumentgen.faults import Fault
from instrumentgen.instruments import library, pending
from instrumentgen.instruments.naming import checkpoint_id, render_settings
from instrumentgen.instruments.prompts import (
    RenderRequest,
    expand_variations,
    instrument_id,
    read_prompts,
)
from instrumentgen.metrics.aggregate import finite_mean
from jobs.entry import job_main, parse_job_args

BLOCK_ROWS = 32  # instruments per Ray Data block: not a block per instrument, yet enough blocks for every actor
PROGRESS_EVERY_S = 30.0  # without a terminal: one progress line this often
REQUIRED_KEYS = {
    "checkpoint": "<exported checkpoint, path or URL>",
    "prompts": "<a .jsonl or .csv file>",
    "out": "<the library folder, path or URL>",
}


class RenderActor:
    """One render worker of the Ray Data actor pool: models loaded once, one instrument per batch."""

    def __init__(self, cfg: Config, checkpoint: str, out: str, fault: Fault | None = None):
        import torch  # here, not at the top: the driver plans without the model stack (~500 MiB)

        from instrumentgen.instruments.render import Renderer, RetryPolicy

        if not cfg.render.num_gpus:  # CPU actors share the node's cores: no oversubscription
            torch.set_num_threads(max(1, int(cfg.render.num_cpus)))
        self.renderer, self.out, self.fault = Renderer(cfg, checkpoint), out, fault
        self.policy = RetryPolicy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from instrumentgen.instruments.render import render_isolated

        rows = []
        for index, request_json, instrument in zip(batch["index"], batch["request"], batch["id"]):
            request = RenderRequest.from_json(str(request_json))
            url = storage.join(self.out, str(instrument))
            row = render_isolated(self.renderer, request, str(instrument), url, self.policy, self.fault, int(index))
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
    check_inputs(cfg, own["checkpoint"], own["prompts"], own["out"])
    return cfg, own["checkpoint"], own["prompts"], own["out"], report == "true"


def check_inputs(cfg: Config, checkpoint: str, prompts: str, out: str) -> None:
    """Before any work: the prompt file readable and usable, the checkpoint there, `out=` writable."""
    read_prompts(prompts, cfg.generate.seed, cfg.render.max_variations, cfg.render.max_candidates)
    if not storage.exists(checkpoint):
        raise ConfigError(f"checkpoint={checkpoint!r} does not exist; allowed: an exported checkpoint, path or URL")
    storage.check_writable(out)


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
    """The instruments to render, in blocks of up to `BLOCK_ROWS` -> one small JSON result row each."""
    rows = [{"index": index, "id": instrument, "request": request.to_json()} for index, instrument, request in todo]
    actors = min(cfg.render.actors, len(rows))
    blocks = min(len(rows), max(2 * actors, math.ceil(len(rows) / BLOCK_ROWS)))
    ds = ray.data.from_items(rows, override_num_blocks=blocks)
    # batch_size=1: one instrument per call, so a killed actor loses one instrument's work (the rest of
    # its block is re-run, and finds those instruments complete).
    return ds.map_batches(
        RenderActor,
        fn_constructor_args=(cfg, checkpoint, out, fault),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=cfg.render.num_cpus,
        num_gpus=cfg.render.num_gpus,
    )


class Progress:
    """Instruments done so far: a bar on a terminal, else one line every `every_s` (logs stay short)."""

    def __init__(self, total: int, every_s: float = PROGRESS_EVERY_S, terminal: bool | None = None):
        self.total, self.every_s, self.done, self.failed = total, every_s, 0, 0
        self.start = self.last = time.perf_counter()
        terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = tqdm(total=total, desc="instruments", unit="instrument") if terminal else None

    def line(self) -> str:
        per_min = 60 * self.done / max(time.perf_counter() - self.start, 1e-9)
        return f"progress: {self.done}/{self.total} instruments done ({self.failed} failed), {per_min:.1f}/min"

    def update(self, failed: bool) -> None:
        self.done, self.failed = self.done + 1, self.failed + failed
        if self.bar is not None:
            self.bar.update(1)
        elif time.perf_counter() - self.last >= self.every_s or self.done == self.total:
            self.last = time.perf_counter()
            print(self.line(), flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    if stats["instruments"] and stats["rendered"] == 0 and stats["skipped"] == stats["instruments"]:
        lines.insert(0, "nothing to render: every instrument of the list is already complete")
    return "\n".join(lines)


def write_table2(out: str, index: pa.Table, ids: list[str], checkpoint: str) -> dict:
    """The paper's Table 2 for the list's complete instruments (`ids` with a row in `index`, in list order)."""
    model = checkpoint.rstrip("/").rsplit("/", 1)[-1]
    return library.write_report(out, library.report_rows(index, ids), model)


def run(cfg: Config, checkpoint: str, prompts: str, out: str, report: bool = False, fault: Fault | None = None) -> dict:
    """Render every instrument of `prompts` that `out` lacks; write failures, summary, index (and Table 2).

    Returns the summary (also `<out>/summary.json`). `fault`: a test's armed failure (`instrumentgen.faults`)."""
    start = time.perf_counter()
    planned, failures = plan(cfg, checkpoint, prompts)
    known = library.plan_library(out, [i for i, _ in planned])
    todo = [(index, i, request) for index, (i, request) in enumerate(planned) if i not in known.complete]
    print(
        f"{len(planned)} instruments from {prompts}: {len(known.complete)} already complete, {len(todo)} to render; "
        f"{len(failures)} lines not usable",
        flush=True,
    )
    rendered, flagged, rows, journals = 0, 0, list(known.recovered), list(known.journals)
    if todo:
        journals.append(pending.record_run(out, [i for _, i, _ in todo]))  # before the first instrument
        terminal = sys.stderr.isatty()
        ray.data.DataContext.get_current().enable_progress_bars = terminal
        progress = Progress(len(todo), terminal=terminal)
        for row in build_dataset(cfg, checkpoint, out, todo, fault).iter_rows():
            result = json.loads(row["result"])
            if result["status"] == "rendered":
                rendered += 1
                flagged += result["quality"] == "flagged"
                rows.append(result["index"])
            else:
                failures.append({k: result[k] for k in ("line", "reason", "message", "id")})
            progress.update(result["status"] != "rendered")
        progress.close()
    elapsed_s = time.perf_counter() - start
    index = library.update_index(out, rows)
    pending.settle(journals)  # the index holds every complete instrument they list
    ids = [i for i, _ in planned]
    listed = index.filter(pc.is_in(index.column("id"), value_set=pa.array(ids, pa.string())))
    stats = {
        "instruments": len(planned),
        "rendered": rendered,
        "skipped": len(known.complete),
        "failed": len(failures),
        "flagged": flagged,
        "failed_by_reason": dict(Counter(f["reason"] for f in failures)),
        "complete": listed.num_rows,
        "mean_tc": finite_mean(listed.column("tc").to_pylist()),
        "mean_mad_pitch": finite_mean(listed.column("mad_pitch").to_pylist()),
        "elapsed_s": round(elapsed_s, 2),
        "per_minute": 60 * rendered / max(elapsed_s, 1e-9),
        "library_instruments": index.num_rows,
    }
    library.write_failures(out, failures)
    storage.write_json(storage.join(out, "summary.json"), stats)
    if report:
        write_table2(out, index, ids, checkpoint)
    print(summary(stats), flush=True)
    return stats


def main(argv: list[str] | None = None) -> int:
    """`python -m jobs.render ...`: exit 0, or 2 with one line for a user error."""
    return job_main(argv, parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
