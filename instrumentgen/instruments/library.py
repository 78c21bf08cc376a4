"""An instrument library in object storage: which instruments are complete, its index, the Table 2 report.

Layout under the library URL `out`:

    <out>/<id>/...                 one instrument (`slices.write_instrument`); complete with manifest.json
    <out>/index.parquet            one row per complete instrument (`INDEX_COLUMNS`), rebuilt from the
                                   manifests at the end of every run, written atomically
    <out>/summary.json, failures.jsonl, results.md, results.json, figures/   of the last run
"""

from __future__ import annotations

import concurrent.futures
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq

from instrumentgen import storage
from instrumentgen.metrics.aggregate import finite_mean, score_cell

INDEX = "index.parquet"
INDEX_COLUMNS = {
    "id": pa.string(),
    "name": pa.string(),
    "prompt": pa.string(),
    "family": pa.string(),
    "source": pa.string(),
    "reference_audio": pa.string(),
    "line": pa.int64(),
    "seed": pa.int64(),
    "requested_seed": pa.int64(),
    "candidates": pa.int64(),
    "notes": pa.int64(),
    "tc": pa.float64(),
    "tc_without_selection": pa.float64(),
    "mad_pitch": pa.float64(),
    "clap_score": pa.float64(),
    "quality": pa.string(),
    "model_id": pa.string(),
    "checkpoint": pa.string(),
}
IO_THREADS = 16  # object stores are latency-bound: one request per instrument, many at once


def _refresh(url: str) -> None:
    """Forget cached listings of `url`: another process (a render actor) may have written under it."""
    fs, path = storage.filesystem(url)
    fs.invalidate_cache(path)


def complete_ids(out: str, ids: list[str]) -> set[str]:
    """The ids among `ids` whose folder under `out` has a manifest."""
    _refresh(out)
    with concurrent.futures.ThreadPoolExecutor(IO_THREADS) as pool:
        found = pool.map(lambda i: storage.exists(storage.join(out, i, storage.MANIFEST)), ids)
    return {i for i, done in zip(ids, found) if done}


def read_manifests(out: str, ids: list[str] | None = None) -> dict[str, dict]:
    """{id: manifest} of the complete instruments under `out` (all of them, or those of `ids`)."""
    _refresh(out)
    if ids is None:
        fs, path = storage.filesystem(out)
        if not fs.exists(path):
            return {}
        ids = sorted(
            entry["name"].rstrip("/").rsplit("/", 1)[-1]
            for entry in fs.ls(path, detail=True)
            if entry["type"] == "directory"
        )

    def read(instrument_id: str) -> dict | None:
        url = storage.join(out, instrument_id, storage.MANIFEST)
        return storage.read_json(url) if storage.exists(url) else None

    with concurrent.futures.ThreadPoolExecutor(IO_THREADS) as pool:
        manifests = dict(zip(ids, pool.map(read, ids)))
    return {i: m for i, m in manifests.items() if m is not None}


def index_row(manifest: dict) -> dict:
    """One manifest -> its index row (the columns of `INDEX_COLUMNS`)."""
    row = {key: manifest.get(key) for key in INDEX_COLUMNS}
    row["notes"] = len(manifest.get("notes", []))
    return row


def write_index(out: str) -> pa.Table:
    """Rebuild `<out>/index.parquet` from the manifests (atomic); returns the table, one row per instrument by id."""
    rows = [index_row(m) for _, m in sorted(read_manifests(out).items())]
    table = pa.Table.from_pylist(rows, schema=pa.schema(INDEX_COLUMNS))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(out, INDEX), buffer.getvalue())
    return table


def read_index(out: str) -> pa.Table:
    """The library's index table."""
    return pq.read_table(io.BytesIO(storage.read_bytes(storage.join(out, INDEX))))


def _cell(value: float | None) -> str:
    return score_cell(value, missing="–")  # the paper's mark for a score not measured


def table2(manifests: list[dict], model: str) -> tuple[dict, str]:
    """Manifests of a curated prompt list -> (results JSON, Markdown in the layout of the paper's Table 2).

    Per prompt and on average: CLAP score (prompt text embedding vs the instrument's notes), MAD_pitch,
    TC; the MOS columns of the paper are listening tests, shown as – (not measured)."""
    keys = ("clap_score", "mad_pitch", "tc", "tc_without_selection")
    means = {k: finite_mean([m.get(k) for m in manifests]) for k in keys}
    prompts = [
        {"id": m["id"], "name": m["name"], "prompt": m.get("prompt"), "seed": m["seed"], **{k: m.get(k) for k in keys}}
        for m in manifests
    ]
    results = {
        "model": model,
        "instruments": len(manifests),
        **{f"mean_{k}": v for k, v in means.items()},
        "prompts": prompts,
    }
    lines = [
        f"# Table 2: {len(manifests)} curated prompts, {model}",
        "",
        "| Model | CLAP ↑ | MAD_pitch ↓ | TC ↓ | MOS_quality ↑ | MOS_text ↑ | MOS_TC ↑ |",
        "|---|---|---|---|---|---|---|",
        f"| {model} | {_cell(means['clap_score'])} | {_cell(means['mad_pitch'])} | {_cell(means['tc'])} | – | – | – |",
        "",
        f"TC without consistency selection (candidate 0 alone): {_cell(means['tc_without_selection'])}. "
        "MOS columns are listening tests: not measured here.",
        "",
        "## Per prompt",
        "",
        "| prompt | seed | CLAP ↑ | MAD_pitch ↓ | TC ↓ | TC without selection |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {p['prompt'] or p['name']} | {p['seed']} | {_cell(p['clap_score'])} | {_cell(p['mad_pitch'])} "
        f"| {_cell(p['tc'])} | {_cell(p['tc_without_selection'])} |"
        for p in prompts
    ]
    return results, "\n".join(lines) + "\n"


def write_report(out: str, manifests: list[dict], model: str) -> dict:
    """Write `results.md`, `results.json` and `figures/tc_per_prompt.png` under `out`; returns the results."""
    from instrumentgen.metrics.plots import tc_per_prompt_figure

    results, markdown = table2(manifests, model)
    names = [m.get("prompt") or m["name"] for m in manifests]
    storage.write_bytes(
        storage.join(out, "figures", "tc_per_prompt.png"),
        tc_per_prompt_figure(
            names,
            [m["tc"] for m in manifests],
            [m["tc_without_selection"] for m in manifests],
            f"{model}: TC per prompt",
        ),
    )
    storage.write_bytes(storage.join(out, "results.md"), markdown.encode())
    storage.write_json(storage.join(out, "results.json"), results)
    return results


def write_failures(out: str, failures: list[dict]) -> None:
    """`<out>/failures.jsonl`: one JSON object per line that was not rendered, in line order."""
    text = "".join(json.dumps(f, sort_keys=True) + "\n" for f in sorted(failures, key=lambda f: f["line"]))
    storage.write_bytes(storage.join(out, "failures.jsonl"), text.encode())
