"""The library view: an index.parquet written with library.py's schema, filtered, sorted, paged."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from instrumentgen.instruments.library import INDEX_COLUMNS
from instrumentgen.instruments.library_view import ViewError, query, read_rows

ROWS = [
    {"id": "a1", "name": "Brass One", "prompt": "warm analog brass", "tc": 0.3, "mad_pitch": 0.2, "clap_score": 0.5},
    {"id": "b2", "name": "Bell", "prompt": "glassy BELL", "tc": 0.1, "mad_pitch": None, "clap_score": 0.9},
    {"id": "c3", "name": "brassy pad", "prompt": "soft pad", "tc": None, "mad_pitch": 0.05, "clap_score": 0.7},
    {"id": "d4", "name": "Organ", "prompt": "church organ", "tc": math.nan, "mad_pitch": 0.4, "clap_score": 0.1},
]


@pytest.fixture
def library(tmp_path):
    rows = [{key: row.get(key) for key in INDEX_COLUMNS} | {"notes": 440, "family": "brass"} for row in ROWS]
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema(INDEX_COLUMNS)), tmp_path / "index.parquet")
    return str(tmp_path)


def ids(answer):
    return [row["id"] for row in answer["entries"]]


def test_rows_are_read_with_the_listed_columns(library):
    rows = read_rows(library)
    assert [row["id"] for row in rows] == ["a1", "b2", "c3", "d4"]
    assert rows[0]["prompt"] == "warm analog brass" and rows[0]["notes"] == 440 and rows[0]["family"] == "brass"
    assert "checkpoint" not in rows[0] and rows[1]["mad_pitch"] is None


def test_a_library_without_an_index_is_empty(tmp_path):
    assert read_rows(str(tmp_path / "nothing yet")) == []
    assert query([]) == {"total": 0, "offset": 0, "limit": 50, "entries": []}


def test_text_matches_prompt_or_name_ignoring_case(library):
    rows = read_rows(library)
    assert ids(query(rows, text="BRASS")) == ["a1", "c3"]  # a1 by prompt and name, c3 by name
    assert ids(query(rows, text="bell")) == ["b2"]
    assert query(rows, text="violin")["total"] == 0


def test_sorted_by_a_score_with_missing_scores_last(library):
    rows = read_rows(library)
    assert ids(query(rows, sort="tc", order="desc")) == ["a1", "b2", "c3", "d4"]
    assert ids(query(rows, sort="tc", order="asc")) == ["b2", "a1", "c3", "d4"]  # None and NaN last
    assert ids(query(rows, sort="mad_pitch", order="asc")) == ["c3", "a1", "d4", "b2"]
    assert ids(query(rows, sort="clap_score")) == ["b2", "c3", "a1", "d4"]


def test_paged_with_the_total_of_all_matches(library):
    rows = read_rows(library)
    page = query(rows, sort="clap_score", limit=2, offset=1)
    assert page["total"] == 4 and page["offset"] == 1 and page["limit"] == 2 and ids(page) == ["c3", "a1"]
    assert ids(query(rows, limit=2, offset=4)) == []


@pytest.mark.parametrize(
    ("arguments", "field", "words"),
    [
        ({"sort": "name"}, "sort", "allowed: tc, mad_pitch, clap_score"),
        ({"order": "up"}, "order", "allowed: asc, desc"),
        ({"limit": 0}, "limit", "limit >= 1"),
        ({"offset": -1}, "offset", "offset >= 0"),
    ],
)
def test_bad_queries_name_the_parameter(library, arguments, field, words):
    with pytest.raises(ViewError) as error:
        query(read_rows(library), **arguments)
    assert error.value.field == field and words in str(error.value)
