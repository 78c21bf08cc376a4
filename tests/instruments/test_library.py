"""The library index, planning and Table 2, no Ray, no models: synthetic folders, manifests, killed runs."""

import pytest

from instrumentgen import storage
from instrumentgen.instruments import library, pending
from instrumentgen.instruments.manifest import InstrumentManifest, NoteEntry


def manifest(instrument: str, tc: float, prompt: str = "warm analog brass") -> InstrumentManifest:
    about = {
        "id": instrument,
        "name": prompt,
        "prompt": prompt,
        "seed": 3,
        "line": 1,
        "tc": tc,
        "tc_without_selection": tc + 1,
        "mad_pitch": 0.5,
        "clap_score": 0.25,
        "quality": "passed",
    }
    return InstrumentManifest([NoteEntry(60, 100, "notes/060_v100.wav", 1.0)], 44100, 44100, {}, about)


def ids(n: int) -> list[str]:
    return [f"{i:016x}" for i in range(n)]


def killed_run_library(out: str) -> tuple[list[str], str]:
    """A library after a killed run: a, b indexed; a journal for c, d, g, h, of which c (planned) and h
    (of another list) finished, d left half its notes, g never started; f complete with no journal."""
    a, b, c, d, e, f, g, h = ids(8)
    for i in (a, b, c, f, h):
        manifest(i, 1.0).write(storage.join(out, i))
    storage.write_bytes(storage.join(out, d, "notes", "060_v100.wav"), b"half")
    storage.write_json(storage.join(out, "summary.json"), {})  # not an instrument
    library.update_index(out, [library.index_row(manifest(i, 1.0)) for i in (a, b)])
    journal = pending.record_run(out, [c, d, g, h])
    return [a, b, c, d, e, f, g, h], journal


def test_planning_reads_the_index_and_only_the_manifests_of_killed_runs(tmp_path, monkeypatch):
    out = str(tmp_path / "lib")
    (a, b, c, d, e, f, g, h), journal = killed_run_library(out)
    read = []
    original = library.read_manifests
    monkeypatch.setattr(library, "read_manifests", lambda out, ids=None: read.extend(ids) or original(out, ids))
    monkeypatch.setattr(library, "folder_ids", lambda out: pytest.fail("planning listed the library's folders"))
    known = library.plan_library(out, [a, b, c, d, e, f])
    assert known.complete == {a, b, c}  # f: the worker finds it complete and returns its row
    assert [r["id"] for r in known.recovered] == [c, h]  # h is not planned, yet goes into the index
    assert known.journals == [journal]
    assert sorted(read) == [c, d, g, h]  # the journal's ids the index lacks, nothing else
    assert library.plan_library(str(tmp_path / "none"), [a]) == (set(), [], [])


def test_a_big_killed_run_is_checked_with_one_listing(tmp_path, monkeypatch):
    out = str(tmp_path / "lib")
    (a, b, c, d, e, f, g, h), _ = killed_run_library(out)
    assert not library.listing_pays(1_000, 100_000) and library.listing_pays(10_000, 100_000)
    assert not library.listing_pays(10, 20)  # a small library: a few HEADs at once
    by_heads = library.plan_library(out, [a, b, c, d, e, f])
    read = []
    original = library.read_manifests
    monkeypatch.setattr(library, "read_manifests", lambda out, ids=None: read.extend(ids) or original(out, ids))
    monkeypatch.setattr(library, "listing_pays", lambda unknown, folders: True)
    assert library.plan_library(out, [a, b, c, d, e, f]) == by_heads
    assert sorted(read) == [c, d, h]  # g has no folder: no request for it


def test_journals_are_settled_once_read(tmp_path):
    out = str(tmp_path / "lib")
    assert pending.pending_runs(out) == [] and pending.pending_ids([]) == set()
    first, second = pending.record_run(out, ids(2)), pending.record_run(out, ids(3)[1:])
    assert sorted(pending.pending_runs(out)) == sorted([first, second])
    assert pending.pending_ids([first, second]) == set(ids(3))
    pending.settle([first])
    assert pending.pending_runs(out) == [second]
    assert pending.pending_ids([first, second]) == set(ids(3)[1:])  # a journal removed meanwhile lists none


def test_the_index_takes_a_runs_rows_newest_first_sorted_by_id(tmp_path):
    out = str(tmp_path / "lib")
    a, b, c = ids(3)
    assert library.read_index(out).num_rows == 0
    library.update_index(out, [library.index_row(manifest(i, 1.0)) for i in (c, a)])
    table = library.update_index(out, [library.index_row(manifest(b, 2.0)), library.index_row(manifest(a, 3.0))])
    assert table.column("id").to_pylist() == [a, b, c]
    assert table.column("tc").to_pylist() == [3.0, 2.0, 1.0]
    assert table.column("notes").to_pylist() == [1, 1, 1]
    assert library.read_index(out).to_pylist() == table.to_pylist()
    assert library.update_index(out, []).to_pylist() == table.to_pylist()


def test_table2_from_index_rows_keeps_each_prompt_in_its_cell(tmp_path):
    rows = [library.index_row(manifest(i, t, p)) for i, t, p in zip(ids(2), (1.0, 3.0), ("a | b", "two\nlines"))]
    results, markdown = library.table2(rows, "model.pt")
    assert results["mean_tc"] == 2.0 and results["mean_tc_without_selection"] == 3.0
    assert "| model.pt | 0.250 | 0.500 | 2.000 | – | – | – |" in markdown
    assert "| a \\| b | 3 | 0.250 | 0.500 | 1.000 | 2.000 |" in markdown
    assert "| two lines | 3 |" in markdown
    a, b = ids(2)
    index = library.update_index(str(tmp_path / "lib"), rows)
    assert [r["id"] for r in library.report_rows(index, [b, "f" * 16, a])] == [b, a]  # list order, known ids only
    assert library.report_rows(index, [b])[0] == {k: rows[1][k] for k in library.TABLE2_COLUMNS}
    out = str(tmp_path / "report")
    library.write_report(out, rows, "model.pt")
    assert storage.read_bytes(storage.join(out, "figures", "tc_per_prompt.png"))[:4] == b"\x89PNG"
    many = [library.index_row(manifest(i, 1.0)) for i in ids(library.FIGURE_MAX_PROMPTS + 1)]
    big = str(tmp_path / "big")
    assert library.write_report(big, many, "m")["instruments"] == library.FIGURE_MAX_PROMPTS + 1
    assert not storage.exists(storage.join(big, "figures"))
    assert "No TC-per-prompt figure: 201 prompts" in storage.read_bytes(storage.join(big, "results.md")).decode()
