"""An instrument library in object storage: which instruments are complete, its index, the Table 2 report.

Layout under the library URL `out`:

    <out>/<id>/...                 one instrument (`slices.write_instrument`); complete with manifest.json
    <out>/index.parquet            one row per complete instrument (`INDEX_COLUMNS`), sorted by id;
                                   each run adds its own rows (`update_index`), no manifest is read
    <out>/pending/<run>.json       the ids of a run not yet in the index (`pending`)
    <out>/summary.json, failures.jsonl, results.md, results.json, figures/   of the last run

Nothing here grows with the library but the index itself (a few hundred bytes per instrument).
The index is the record of which instruments are complete: `plan_library` reads it and the
journals of runs that have not updated it (killed ones), and asks for a manifest only for a
journal's id the index lacks. It lists the library's folders only when a big killed run left
more such ids than a listing costs (`listing_pays`): a listing is a request per 1,000 folders on
an object store, and the loopback S3 (moto) scans every key of the bucket for each of them
(50-75 s for 100,000 folders; planning used to start with it). An instrument made by a run that left no journal (a
library written before journals) is found complete by the worker that would render it, which
returns its row instead (`render.prepare_folder`). Table 2 is computed from index rows.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import re
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from instrumentgen import storage
from instrumentgen.errors import MissingObjectError
from instrumentgen.instruments import pending
from instrumentgen.instruments.manifest import InstrumentManifest
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
TABLE2_COLUMNS = ["id", "name", "prompt", "seed", "clap_score", "mad_pitch", "tc", "tc_without_selection"]
IO_THREADS = 16  # object stores are latency-bound: one request per instrument, many at once
ID_PATTERN = re.compile(r"[0-9a-f]{16}")  # `prompts.instrument_id`
LIST_PAGE = 1000  # folders per listing request of an object store (S3's most)
FIGURE_MAX_PROMPTS = 200  # one bar per prompt: past this the figure is unreadable (and huge)


def _refresh(url: str) -> None:
    """Forget cached listings of `url`: another process (a render actor) may have written under it."""
    fs, path = storage.filesystem(url)
    fs.invalidate_cache(path)


def folder_ids(out: str) -> set[str]:
    """The instrument ids that have a folder under `out`: one paginated listing of its top level."""
    with storage.storage_errors(out, "list"):
        fs, path = storage.filesystem(out)
        fs.invalidate_cache(path)
        try:
            names = fs.ls(path, detail=False)
        except FileNotFoundError:
            return set()
    return {n for n in (name.rstrip("/").rsplit("/", 1)[-1] for name in names) if ID_PATTERN.fullmatch(n)}


class LibraryPlan(NamedTuple):
    """What the index and the pending journals say about a run's planned ids."""

    complete: set[str]  # planned ids with an index row, or finished by a run that left a journal
    recovered: list[dict]  # index rows of the journals' finished instruments that the index lacks
    journals: list[str]  # the journals read: `pending.settle` them once the index holds `recovered`


def listing_pays(unknown: int, folders: int) -> bool:
    """Whether one listing of about `folders` folders (a request per `LIST_PAGE`, one after another)
    costs less than a HEAD for each of `unknown` ids (`IO_THREADS` at once): only after a big killed run."""
    return unknown / IO_THREADS > folders / LIST_PAGE + 1


def plan_library(out: str, ids: list[str]) -> LibraryPlan:
    """Which of `ids` are complete under `out`, from the index and the journals of runs not yet in it.

    An id is complete when the index has its row. Each id of a journal that the index lacks (a run
    killed before its index update) is asked for its manifest: complete, its row is recovered (any
    id of the journal, planned now or not), so a killed run's instruments are neither lost from the
    index nor rendered again; not, the worker that renders it clears its folder first."""
    indexed = set(read_index(out).column("id").to_pylist())
    journals = pending.pending_runs(out)
    unknown = sorted(pending.pending_ids(journals) - indexed)
    if listing_pays(len(unknown), len(indexed) + len(unknown)):
        unknown = sorted(folder_ids(out) & set(unknown))
    recovered = [index_row(m) for m in read_manifests(out, unknown).values()]
    complete = (indexed | {r["id"] for r in recovered}) & set(ids)
    return LibraryPlan(complete, recovered, journals)


def complete_ids(out: str, ids: list[str]) -> set[str]:
    """The ids among `ids` whose folder under `out` has a manifest (one HEAD each: for a few ids)."""
    _refresh(out)
    with concurrent.futures.ThreadPoolExecutor(IO_THREADS) as pool:
        found = pool.map(lambda i: storage.exists(storage.join(out, i, storage.MANIFEST)), ids)
    return {i for i, done in zip(ids, found) if done}


def read_manifests(out: str, ids: list[str] | None = None) -> dict[str, InstrumentManifest]:
    """{id: manifest} of the complete instruments under `out` (all of them, or those of `ids`)."""
    _refresh(out)
    if ids is None:
        ids = sorted(folder_ids(out))

    def read(instrument_id: str) -> InstrumentManifest | None:
        url = storage.join(out, instrument_id)
        return InstrumentManifest.read(url) if storage.exists(storage.join(url, storage.MANIFEST)) else None

    with concurrent.futures.ThreadPoolExecutor(IO_THREADS) as pool:
        manifests = dict(zip(ids, pool.map(read, ids)))
    return {i: m for i, m in manifests.items() if m is not None}


def index_row(manifest: InstrumentManifest) -> dict:
    """One manifest -> its index row (the columns of `INDEX_COLUMNS`)."""
    row = {key: manifest.about.get(key) for key in INDEX_COLUMNS}
    row["notes"] = len(manifest.notes)
    return row


def index_table(rows: list[dict]) -> pa.Table:
    """Index rows -> a table of `INDEX_COLUMNS`."""
    return pa.Table.from_pylist(rows, schema=pa.schema(INDEX_COLUMNS))


def write_index(out: str, table: pa.Table) -> None:
    """Write `table` as `<out>/index.parquet` (one object, atomic)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(storage.join(out, INDEX), buffer.getvalue())


def update_index(out: str, rows: list[dict]) -> pa.Table:
    """Add `rows` (this run's instruments) to `<out>/index.parquet`, a row per id (a newer row replaces
    an older one), sorted by id; returns the whole index. One read and one write: no manifest is read."""
    current = read_index(out)
    if rows:
        added = index_table(rows)
        keep = pc.invert(pc.is_in(current.column("id"), value_set=added.column("id")))
        merged = pa.concat_tables([current.filter(keep), added])
        current = merged.take(pc.sort_indices(merged, sort_keys=[("id", "ascending")]))
    write_index(out, current)
    return current


def rebuild_index(out: str) -> pa.Table:
    """`<out>/index.parquet` rebuilt from every manifest (reads the whole library: a repair, not a run's step)."""
    table = index_table([index_row(m) for _, m in sorted(read_manifests(out).items())])
    write_index(out, table)
    return table


def read_index(out: str) -> pa.Table:
    """The library's index table (empty when the library has none yet)."""
    try:
        data = storage.read_bytes(storage.join(out, INDEX))
    except MissingObjectError:
        return index_table([])
    return pq.read_table(io.BytesIO(data))


def _cell(value: float | None) -> str:
    return score_cell(value, missing="–")  # the paper's mark for a score not measured


def _text_cell(text: str) -> str:
    """Free text as one Markdown table cell: a `|` would end the cell, a newline the row."""
    return " ".join(text.split()).replace("|", "\\|")


def table2(manifests: list[dict], model: str) -> tuple[dict, str]:
    """Index rows (`index_row`) of a curated prompt list -> (results JSON, Markdown in the layout of
    the paper's Table 2).

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
        f"| {_text_cell(p['prompt'] or p['name'])} | {p['seed']} | {_cell(p['clap_score'])} | {_cell(p['mad_pitch'])} "
        f"| {_cell(p['tc'])} | {_cell(p['tc_without_selection'])} |"
        for p in prompts
    ]
    return results, "\n".join(lines) + "\n"


def report_rows(index: pa.Table, ids: list[str]) -> list[dict]:
    """The index rows of `ids` that the index has, in the order of `ids`, with the columns `table2` reads
    (100,000 rows of all the columns as dicts would cost the driver some 100 MiB more)."""
    rows = pc.drop_null(pc.index_in(pa.array(ids, pa.string()), value_set=index.column("id")))
    return index.select(TABLE2_COLUMNS).take(rows).to_pylist()


def write_report(out: str, rows: list[dict], model: str) -> dict:
    """Write `results.md`, `results.json` and (up to `FIGURE_MAX_PROMPTS` prompts)
    `figures/tc_per_prompt.png` under `out` from index rows; returns the results."""
    from instrumentgen.metrics.plots import tc_per_prompt_figure

    results, markdown = table2(rows, model)
    if len(rows) <= FIGURE_MAX_PROMPTS:
        storage.write_bytes(
            storage.join(out, "figures", "tc_per_prompt.png"),
            tc_per_prompt_figure(
                [m.get("prompt") or m["name"] for m in rows],
                [m["tc"] for m in rows],
                [m["tc_without_selection"] for m in rows],
                f"{model}: TC per prompt",
            ),
        )
    else:
        markdown += f"\nNo TC-per-prompt figure: {len(rows)} prompts, over the {FIGURE_MAX_PROMPTS} one figure shows.\n"
    storage.write_bytes(storage.join(out, "results.md"), markdown.encode())
    # Compact: an indented JSON of 100,000 prompts is encoded in pure Python, ~135 MiB of pieces at once.
    storage.write_bytes(storage.join(out, "results.json"), json.dumps(results, sort_keys=True).encode())
    return results


def write_failures(out: str, failures: list[dict]) -> None:
    """`<out>/failures.jsonl`: one JSON object per line that was not rendered, in line order."""
    text = "".join(json.dumps(f, sort_keys=True) + "\n" for f in sorted(failures, key=lambda f: f["line"]))
    storage.write_bytes(storage.join(out, "failures.jsonl"), text.encode())
