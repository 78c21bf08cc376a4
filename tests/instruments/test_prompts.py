"""Prompt files -> render requests, no Ray, no models: line numbers and reasons, CSV, ids, whole-file errors."""

import json

import pytest

from instrumentgen import storage
from instrumentgen.audio import encode_audio
from instrumentgen.data.synthetic import synth_note, timbre_for
from instrumentgen.instruments.prompts import MAX_SEED, PromptError, expand_variations, instrument_id, read_prompts

SMALL = {"keys": [60, 63], "velocities": [100]}


def write_lines(url, lines):
    storage.write_bytes(
        url, ("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n").encode()
    )
    return url


def test_prompt_lines_are_validated_with_line_numbers_and_reasons(tmp_path):
    reference = str(tmp_path / "ref.wav")
    storage.write_bytes(reference, encode_audio(synth_note(60, 100, timbre_for(1), 16_000, 0.5), 16_000))
    lines = [
        {"prompt": "warm analog brass", "seed": 3, "variations": 2, **SMALL},
        {"family": "bass", "source": 2},
        "",
        {"reference_audio": reference, "name": "my ref", "candidates": 2},
        "{not json",
        {"prompt": "   "},
        {"prompt": "x", "colour": "red"},
        {"prompt": "x", "keys": [20, 30]},
        {"prompt": "x", "velocities": [100, 90]},
        {"prompt": "x", "candidates": 9},
        {"prompt": "x", "variations": 0},
        {"reference_audio": str(tmp_path / "missing.wav")},
        {"name": "no cue"},
        {"family": "kazoo"},
    ]
    requests, failures = read_prompts(write_lines(str(tmp_path / "p.jsonl"), lines), max_candidates=8)
    assert [(r.line, r.name, r.seed) for r in requests] == [
        (1, "warm analog brass", 3),
        (2, "synthetic bass", 0),
        (4, "my ref", 0),
    ]
    assert requests[0].slots() == [(60, 100), (61, 100), (62, 100), (63, 100)]
    assert requests[1].family == "bass" and requests[1].source == "synthetic" and len(requests[1].slots()) == 440
    assert [(f.line, f.reason) for f in failures] == [
        (5, "bad_json"),
        (6, "empty_prompt"),
        (7, "unknown_field"),
        (8, "out_of_range"),
        (9, "out_of_range"),
        (10, "out_of_range"),
        (11, "out_of_range"),
        (12, "unreachable_reference"),
        (13, "missing_cue"),
        (14, "bad_value"),
    ]
    messages = {f.line: f.message for f in failures}
    assert "unknown field 'colour'; allowed: prompt, family" in messages[7]
    assert "keys=[20, 30] is out of range; allowed: [low, high] with MIDI 21" in messages[8]
    assert "candidates=9 is out of range; allowed: 1..8" in messages[10]
    assert "family='kazoo' is unknown; allowed: 0=bass" in messages[14]
    variations = expand_variations(requests[0])
    assert [(v.seed, v.variation) for v in variations] == [(3, 0), (4, 1)]


def test_csv_lines_read_like_jsonl(tmp_path):
    csv_url = str(tmp_path / "p.csv")
    storage.write_bytes(
        csv_url,
        b"prompt,family,seed,keys,velocities,candidates\n"
        b"warm analog brass,,3,60-63,100,\n"
        b",brass,,,50 127,2\n"
        b"dark pad,,x,,,\n",
    )
    requests, failures = read_prompts(csv_url)
    assert [(r.line, r.prompt, r.family, r.seed, r.keys, r.velocities, r.candidates) for r in requests] == [
        (2, "warm analog brass", None, 3, (60, 63), (100,), 1),
        (3, None, "brass", 0, (21, 108), (50, 127), 2),
    ]
    assert [(f.line, f.reason) for f in failures] == [(4, "bad_value")]


def test_instrument_ids_hash_the_normalised_cue_never_the_raw_text(tmp_path):
    lines = [
        {"prompt": "Warm  Analog brass", **SMALL},
        {"prompt": "warm analog brass", **SMALL},
        {"prompt": "warm analog brass", "seed": 1, **SMALL},
        {"prompt": "warm analog brass", "velocities": [50]},
    ]
    requests, _ = read_prompts(write_lines(str(tmp_path / "p.jsonl"), lines))
    ids = [instrument_id(r, "ckpt-a", {"cfg_coef": 3.0}) for r in requests]
    assert ids[0] == ids[1] and len(set(ids[1:])) == 3
    assert instrument_id(requests[0], "ckpt-b", {"cfg_coef": 3.0}) != ids[0]
    assert instrument_id(requests[0], "ckpt-a", {"cfg_coef": 2.0}) != ids[0]
    assert all(len(i) == 16 and "warm" not in i for i in ids)


def test_a_file_that_cannot_be_used_at_all_is_one_prompt_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(PromptError, match=f"prompts='{empty}' is empty; allowed: a file with one prompt per line"):
        read_prompts(str(empty))
    headless = tmp_path / "headless.csv"
    headless.write_text("warm analog brass,3\ndark pad,4\n")
    with pytest.raises(PromptError, match=r"first row of the CSV \('warm analog brass,3'\) is not a header; expected"):
        read_prompts(str(headless))
    odd = tmp_path / "odd.csv"
    odd.write_text("prompt,colour\nwarm analog brass,red\n")
    with pytest.raises(PromptError, match="CSV header column 'colour' is unknown; allowed: prompt, family"):
        read_prompts(str(odd))
    with pytest.raises(PromptError, match="does not exist"):
        read_prompts(str(tmp_path / "missing.csv"))


def test_seed_plus_variations_stays_a_valid_seed(tmp_path):
    lines = [
        {"prompt": "x", "seed": MAX_SEED - 1, "variations": 2},
        {"prompt": "x", "seed": MAX_SEED - 1, "variations": 3},
    ]
    requests, failures = read_prompts(write_lines(str(tmp_path / "p.jsonl"), lines))
    assert [r.seed + r.variations - 1 for r in requests] == [MAX_SEED]
    assert [(f.line, f.reason) for f in failures] == [(2, "out_of_range")]
    assert f"passes {MAX_SEED}; allowed: seed + variations - 1 <= {MAX_SEED}" in failures[0].message
